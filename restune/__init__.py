"""The `restune` command: composed here from every package's commands (see `restune.cli`)."""

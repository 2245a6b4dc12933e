"""Clients: the `restune` command line and the Python HTTP client."""

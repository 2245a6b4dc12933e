"""`python -m restune …` is the `restune` command."""
import sys

from restune.cli import main

sys.exit(main())

"""`python -m tinycnn ...` runs the `tinycnn` command (see tinycnn/cli.py)."""
import sys

from tinycnn.cli import main

sys.exit(main())

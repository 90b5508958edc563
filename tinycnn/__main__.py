"""`python -m tinycnn ...` runs the `tinycnn` command (see tinycnn/cli.py)."""
import sys

from tinycnn.cli import main

if __name__ == "__main__":      # not when a worker process of `tinycnn cv --jobs 2` imports it
    sys.exit(main())

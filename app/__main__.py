"""`python -m app ...` is the same as the `imgclf` command."""

import sys

from app.cli import main

if __name__ == "__main__":  # worker processes (data.workers) import this module again under another name
    sys.exit(main())

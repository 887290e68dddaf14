"""`python -m scalesearch`: the same command as the `scalesearch` console script (cli.main)."""

import sys

from scalesearch.cli import main

if __name__ == "__main__":
    sys.exit(main())

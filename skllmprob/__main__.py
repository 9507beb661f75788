"""``python -m skllmprob``: the command line (see :mod:`skllmprob.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

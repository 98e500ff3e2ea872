"""``python -m lightning_fed`` runs the ``lightning-fed`` command line and exits with its status."""

import sys

from lightning_fed.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m lightning_fed`` runs the ``lightning-fed`` command line."""

from lightning_fed.cli import main

if __name__ == "__main__":
    main()

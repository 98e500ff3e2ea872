"""Test-run settings shared by tests/ and the doctests in lightning_fed/."""

import os
import tempfile

# simulated workers' sealing keys (lightning_fed.workers.sealing) go to a fresh folder, not the user's home; the
# variable is inherited by the processes distributed tests start
os.environ.setdefault("LIGHTNING_FED_KEY_DIR", tempfile.mkdtemp(prefix="lightning-fed-keys-"))

"""A worker's own state, sealed with a key only the worker holds, so that it can travel in the server's checkpoint.

What a worker keeps between rounds (its optimizer's momentum and moments, its learning-rate schedule, SCAFFOLD's
control variate, its local model in the middle of a round) is the worker's: momentum buffers are running sums of
gradients of its data, and gave back private samples exactly when they were saved in the clear. The server's
checkpoint therefore carries each worker's state **sealed**: serialized, then encrypted and authenticated
(ChaCha20-Poly1305) under a 32-byte key that belongs to the worker, with the worker's id and the federation's
fingerprint as associated data (a blob opens only for the worker, and the federation, it was sealed for).

Where the key lives: a worker on its own machine keeps it there (the deployment layer). A simulated worker keeps it
in a key file, ``<key dir>/<worker>.key`` (mode 0600, made on first use), under ``$LIGHTNING_FED_KEY_DIR`` or
``~/.lightning_fed/worker_keys``: the same worker id on the same machine finds its key again, which is what makes a
resume exact; a checkpoint copied elsewhere without the key files opens nothing.

Example:
    >>> import tempfile, torch
    >>> keys = KeyFiles(tempfile.mkdtemp())
    >>> sealed = seal({"momentum": torch.ones(2)}, keys.key("alice"), context="alice|fed-1")
    >>> sealed.dtype, b"momentum" in sealed.numpy().tobytes()
    (torch.uint8, False)
    >>> unseal(sealed, keys.key("alice"), context="alice|fed-1")
    {'momentum': tensor([1., 1.])}
    >>> unseal(sealed, keys.key("bob"), context="bob|fed-1")
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.SealedStateError: this worker state was not sealed for this worker and federation ...
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lightning_fed.exceptions import SealedStateError

_NONCE = 12
_KEY = 32
KEY_DIR_ENV = "LIGHTNING_FED_KEY_DIR"


def default_key_dir() -> Path:
    """``$LIGHTNING_FED_KEY_DIR``, else ``~/.lightning_fed/worker_keys``."""
    value = os.environ.get(KEY_DIR_ENV)
    return Path(value) if value else Path.home() / ".lightning_fed" / "worker_keys"


class KeyFiles:
    """Simulated workers' sealing keys, one file per worker id in ``directory`` (default :func:`default_key_dir`).

    Example:
        >>> import tempfile
        >>> keys = KeyFiles(tempfile.mkdtemp())
        >>> keys.key("alice") == keys.key("alice"), keys.key("alice") == keys.key("bob"), len(keys.key("bob"))
        (True, False, 32)
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_key_dir()

    def path(self, worker_id: Hashable) -> Path:
        """The key file of ``worker_id`` (named by a digest of the id: any id is a safe file name)."""
        digest = hashlib.sha256(f"{type(worker_id).__name__}:{worker_id}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.key"

    def key(self, worker_id: Hashable) -> bytes:
        """``worker_id``'s key, made (32 random bytes, file mode 0600) the first time it is asked for."""
        path = self.path(worker_id)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = os.urandom(_KEY)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: use theirs
                return self.key(worker_id)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
        if len(key) != _KEY:
            raise SealedStateError(
                f"the sealing key file of worker {worker_id!r} ({path}) holds {len(key)} bytes, not {_KEY}: it is "
                "damaged. Restore it from a backup (without it, the worker state in checkpoints cannot be opened)."
            )
        return key


def seal(state: Any, key: bytes, context: str) -> torch.Tensor:
    """``state`` (tensors, numbers, dicts, lists) serialized and encrypted under ``key``, bound to ``context``: a
    ``uint8`` tensor (a checkpoint loads it with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    nonce = os.urandom(_NONCE)
    blob = nonce + ChaCha20Poly1305(key).encrypt(nonce, buffer.getvalue(), context.encode())
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def unseal(sealed: torch.Tensor, key: bytes, context: str) -> Any:
    """Undo :func:`seal`; :class:`~lightning_fed.exceptions.SealedStateError` if ``key`` or ``context`` differ, or
    the blob was changed."""
    blob = sealed.numpy().tobytes()
    try:
        plain = ChaCha20Poly1305(key).decrypt(blob[:_NONCE], blob[_NONCE:], context.encode())
    except InvalidTag:
        raise SealedStateError(
            "this worker state was not sealed for this worker and federation (another worker id, another "
            "federation's settings, another key file, or a changed checkpoint): it cannot be opened."
        ) from None
    return torch.load(io.BytesIO(plain), map_location="cpu", weights_only=True)  # placed by the caller

"""Pseudo-random masks: the ChaCha20 keystream of a 32-byte seed read as uniform integers mod ``2**k``.

``prg_ring(seed, numel, bits)`` draws ``numel`` elements of ``Z_(2^bits)``: the keystream (ChaCha20 from
``cryptography``, zero nonce: every seed is used for one vector only) is cut into little-endian words of ``bits`` bits,
each uniform on ``[0, 2**bits)`` (no rejection needed, the modulus is a power of two). For 64 bits the words are
kept as int64 (two's complement, the same ring); for 32 bits they are in ``[0, 2**32)``. The same seed gives the same
vector on every platform.

:class:`SecretSource` hands out the protocol's secret randomness: the operating system's (``os.urandom``) by default,
or a ChaCha20 keystream derived from an integer seed and a context, for reproducible simulations.

Example:
    >>> a = prg_ring(b"k" * 32, 4, bits=32)
    >>> a.dtype, bool(((a >= 0) & (a < 2**32)).all()), bool((a == prg_ring(b"k" * 32, 4, bits=32)).all())
    (torch.int64, True, True)
    >>> SecretSource(seed=1, context=b"x").token(4) == SecretSource(seed=1, context=b"x").token(4)
    True
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from torch import Tensor

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte block counter (0) + 12-byte nonce (0)


def keystream(seed: bytes, nbytes: int) -> bytes:
    """``nbytes`` of the ChaCha20 keystream under the 32-byte key ``seed``."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    return encryptor.update(bytes(nbytes))


_zeros = bytearray()  # the plaintext the keystream is read from: all zeros, grown as needed, never written
_SLACK = 64  # update_into wants its output a cipher block larger than its input


def _zero_view(nbytes: int) -> memoryview:
    global _zeros
    if len(_zeros) < nbytes:
        _zeros = bytearray(nbytes)
    return memoryview(_zeros)[:nbytes]


def prg_ring(seed: bytes, numel: int, bits: int) -> Tensor:
    """``numel`` uniform elements of ``Z_(2^bits)`` (bits 32 or 64) as an int64 tensor, expanded from ``seed``.

    The keystream is written straight into the result's memory (no intermediate copies): this runs once per pair of
    workers per round on model-sized vectors.
    """
    if bits not in (32, 64):
        raise ValueError(f"bits must be 32 or 64, got {bits!r}")
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
    width = bits // 8
    words = np.empty(numel + _SLACK // width, dtype="<i8" if bits == 64 else "<u4")
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    encryptor.update_into(_zero_view(numel * width), words.view(np.uint8))
    if bits == 64:
        return torch.from_numpy(words[:numel].astype(np.int64, copy=False))
    return torch.from_numpy(words[:numel].astype(np.int64))


def derive_key(material: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 of ``material`` for the purpose and context named by ``info`` (no salt)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(material)


class SecretSource:
    """Secret randomness for one party: OS randomness (``seed=None``), or a seeded, reproducible stream.

    Args:
        seed: ``None`` for ``os.urandom``/``secrets``; an int to derive everything from ``(seed, context)``.
        context: distinguishes parties and rounds sharing a seed (e.g. ``b"round=3|client=2"``).
    """

    def __init__(self, seed: int | None = None, context: bytes = b"") -> None:
        self._stream = None
        if seed is not None:
            key = derive_key(int(seed).to_bytes(16, "little"), b"lightning_fed/secagg/source|" + context)
            self._stream = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()

    @property
    def seeded(self) -> bool:
        return self._stream is not None

    def token(self, nbytes: int) -> bytes:
        """``nbytes`` secret bytes."""
        if self._stream is None:
            return os.urandom(nbytes)
        return self._stream.update(bytes(nbytes))

    def below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)`` (by rejection in the seeded case)."""
        if self._stream is None:
            return secrets.randbelow(bound)
        nbytes = (bound.bit_length() + 7) // 8
        excess = 8 * nbytes - bound.bit_length()
        while True:
            value = int.from_bytes(self.token(nbytes), "little") >> excess
            if value < bound:
                return value

    def generator(self) -> torch.Generator:
        """A ``torch.Generator`` seeded from this source (for stochastic rounding)."""
        return torch.Generator().manual_seed(int.from_bytes(self.token(8), "little") >> 1)

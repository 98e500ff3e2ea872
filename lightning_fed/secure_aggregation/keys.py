"""Key agreement (X25519) and what is derived from it (HKDF-SHA256): pairwise mask seeds and share encryption keys.

Each participant makes two X25519 key pairs per round, as in Bonawitz et al. 2017: ``c`` encrypts the Shamir shares it
sends the others through the server (ChaCha20-Poly1305, so the server relays ciphertexts it cannot read), ``s``
agrees the pairwise mask seed ``s_uv = HKDF(X25519(s_u, S_v))`` with every other participant; both sides of a pair
derive the same seed. Private keys are 32 bytes, so they can be Shamir-shared and rebuilt after a dropout.

Example:
    >>> u, v = KeyPair.generate(), KeyPair.generate()
    >>> pairwise_seed(u.private_bytes, v.public_bytes, b"round=0") == pairwise_seed(
    ...     v.private_bytes, u.public_bytes, b"round=0")
    True
    >>> box = seal(u.private_bytes, v.public_bytes, b"hello", b"u->v")
    >>> open_sealed(v.private_bytes, u.public_bytes, box, b"u->v")
    b'hello'
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lightning_fed.secure_aggregation.config import SecureAggregationError
from lightning_fed.secure_aggregation.prg import derive_key

KEY_BYTES = 32
_NONCE = bytes(12)  # each key encrypts one message only (see _box_key)


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair as raw bytes (32 each). ``repr`` hides the private key."""

    private_bytes: bytes
    public_bytes: bytes

    @classmethod
    def generate(cls, randomness: bytes | None = None) -> KeyPair:
        """A fresh key pair; from the 32 bytes ``randomness`` when given (seeded simulations)."""
        key = X25519PrivateKey.generate() if randomness is None else X25519PrivateKey.from_private_bytes(randomness)
        return cls(key.private_bytes_raw(), key.public_key().public_bytes_raw())

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public_bytes.hex()[:16]}...)"


def agree(private_bytes: bytes, peer_public_bytes: bytes) -> bytes:
    """The X25519 shared secret of our private key and a peer's public key (the same from both sides)."""
    private = X25519PrivateKey.from_private_bytes(private_bytes)
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public_bytes))


def pairwise_seed(private_bytes: bytes, peer_public_bytes: bytes, context: bytes) -> bytes:
    """The 32-byte PRG seed of a pair's mask for the round named by ``context``."""
    return derive_key(agree(private_bytes, peer_public_bytes), b"lightning_fed/secagg/pairwise-mask|" + context)


def _box_key(private_bytes: bytes, peer_public_bytes: bytes, associated: bytes) -> bytes:
    # one key per message: ``associated`` names sender, recipient and round, so u->v and v->u never share a key
    return derive_key(agree(private_bytes, peer_public_bytes), b"lightning_fed/secagg/share-encryption|" + associated)


def seal(private_bytes: bytes, peer_public_bytes: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` for the peer (``associated`` is authenticated, not encrypted; it must
    be unique per message, e.g. sender, recipient and round)."""
    return ChaCha20Poly1305(_box_key(private_bytes, peer_public_bytes, associated)).encrypt(
        _NONCE, plaintext, associated
    )


def open_sealed(private_bytes: bytes, peer_public_bytes: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Decrypt what the peer :func:`seal` ed for us; raises :class:`SecureAggregationError` if it was tampered with."""
    try:
        return ChaCha20Poly1305(_box_key(private_bytes, peer_public_bytes, associated)).decrypt(
            _NONCE, ciphertext, associated
        )
    except InvalidTag:
        raise SecureAggregationError(
            "a Shamir share failed authentication: it was altered or misrouted on its way through the server."
        ) from None

"""Which certificate files a party uses, read with clear errors, and the rules for plaintext.

A party (a site, or the federation server) needs three PEM files: the federation's CA certificate (``ca.pem``), its
own certificate and its own key. Give a folder made by :mod:`.certificates` (``certs=DIR``: ``DIR/ca.pem``,
``DIR/<party>.pem``, ``DIR/<party>.key``) or the three paths; explicit paths win over the folder. Plaintext is only
for tests on this machine: ``insecure=True`` is refused for any address that is not a loopback address.

Example:
    >>> split_address("127.0.0.1:50051"), is_loopback("localhost"), is_loopback("10.0.0.7")
    (('127.0.0.1', 50051), True, False)
    >>> split_address("alice")
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: address 'alice' is not valid: pass HOST:PORT with a port from 0 ...
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from lightning_fed.exceptions import FederatedConfigError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Credentials:
    """The PEM bytes of the federation's CA certificate, this party's certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes


def split_address(address: str, flag: str | None = None) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:PORT`` for IPv6); an error names ``flag`` (``"--listen "``) if
    given."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        what = f"address {address!r}" if flag is None else f"`{flag}{address}`"
        raise FederatedConfigError(
            f"{what} is not valid: pass HOST:PORT with a port from 0 to 65535 (0 picks a free one), e.g. "
            "127.0.0.1:50051."
        )
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_insecure(address: str, who: str) -> None:
    """Refuse plaintext on anything but a loopback address."""
    host, _ = split_address(address)
    if not is_loopback(host):
        raise FederatedConfigError(
            f"{who}: plaintext (insecure) is allowed on loopback addresses only (127.0.0.1, localhost, ::1), got "
            f"{address!r}: use certificates (python -m lightning_fed.transport.certificates makes a test federation's)."
        )


def _read(path: Path, what: str, who: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FederatedConfigError(f"{who}: cannot read {what} {str(path)!r} ({err.strerror or err}).") from None
    if b"-----BEGIN" not in data:
        raise FederatedConfigError(f"{who}: {what} {str(path)!r} is not a PEM file.")
    return data


def load_credentials(party: str, who: str, certs: PathLike | None = None, *, ca: PathLike | None = None,
                     cert: PathLike | None = None, key: PathLike | None = None) -> Credentials | None:  # fmt: skip
    """The credentials of ``party`` from a folder and/or explicit paths; ``None`` when none is given.

    Raises :class:`~lightning_fed.exceptions.FederatedConfigError` naming the missing or unreadable file.
    """
    if certs is None and ca is None and cert is None and key is None:
        return None
    folder = Path(certs) if certs is not None else None
    paths = {
        "the CA certificate": Path(ca) if ca is not None else (folder / "ca.pem" if folder else None),
        "the certificate": Path(cert) if cert is not None else (folder / f"{party}.pem" if folder else None),
        "the private key": Path(key) if key is not None else (folder / f"{party}.key" if folder else None),
    }
    missing = [what for what, path in paths.items() if path is None]
    if missing:
        raise FederatedConfigError(
            f"{who}: {', '.join(missing)} not given: pass a certificate folder (certs=DIR / --certs DIR, holding "
            f"ca.pem, {party}.pem and {party}.key) or all three files (ca=, cert=, key= / --ca, --cert, --key)."
        )
    data = [_read(path, what, who) for what, path in paths.items() if path is not None]
    _check_pair(data[1], data[2], paths["the certificate"], paths["the private key"], who, party)
    return Credentials(*data)


def _check_pair(cert: bytes, key: bytes, cert_path: Path | None, key_path: Path | None, who: str, party: str) -> None:
    """Refuse a certificate or key that does not parse, or a key that is not the certificate's (gRPC would only say
    it cannot bind)."""
    fix = (
        f"pass {party}'s own certificate and its key, as python -m lightning_fed.transport.certificates made them "
        f"(certs=DIR / --certs DIR holding {party}.pem and {party}.key, or cert=/key= / --cert/--key)"
    )
    try:
        public = x509.load_pem_x509_certificate(cert).public_key()
    except ValueError as err:
        raise FederatedConfigError(
            f"{who}: the certificate {str(cert_path)!r} cannot be read ({err}): {fix}."
        ) from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise FederatedConfigError(
            f"{who}: the private key {str(key_path)!r} is not a usable private key ({err}; an encrypted key is not "
            f"supported): {fix}."
        ) from None
    raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*raw) != public.public_bytes(*raw):
        raise FederatedConfigError(
            f"{who}: the private key {str(key_path)!r} does not belong to the certificate {str(cert_path)!r} (another "
            f"party's key?): {fix}."
        )

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
    lightning_fed.exceptions.FederatedConfigError: address 'alice' is not valid: pass HOST:PORT, e.g. 127.0.0.1:50051.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from lightning_fed.exceptions import FederatedConfigError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Credentials:
    """The PEM bytes of the federation's CA certificate, this party's certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise FederatedConfigError(f"address {address!r} is not valid: pass HOST:PORT, e.g. 127.0.0.1:50051.")
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
    return Credentials(*data)

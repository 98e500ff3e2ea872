"""A test federation's certificates: one CA, the federation server's certificate and one certificate per site.

Every key is an ECDSA P-256 key made with the ``cryptography`` package; every certificate is signed by the federation's
CA and valid for client and server authentication. A site's certificate names the site twice: its common name (CN) is
the site id, and its subject alternative names hold the site id (which the server checks when it connects, so a site
cannot answer in another site's name), ``localhost``, ``127.0.0.1`` and the ``hosts`` given. The server's certificate
has the CN ``server`` (the one peer a site serves by default).

The folder :func:`make_federation` writes::

    ca.pem  ca.key            the federation's CA (keep ca.key offline; it is not needed to run anything)
    server.pem  server.key    the federation server (the Trainer's side)
    <site>.pem  <site>.key    one pair per site; a site needs ca.pem, <site>.pem and <site>.key only

The command line does the same: ``python -m lightning_fed.transport.certificates --out certs --sites alice bob``.

Example:
    >>> import tempfile
    >>> paths = make_federation(tempfile.mkdtemp(), ["alice", "bob"])
    >>> sorted(paths)
    ['alice', 'bob', 'ca', 'server']
    >>> common_name(paths["alice"].cert.read_bytes())
    'alice'
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lightning_fed.exceptions import FederatedConfigError

SERVER_NAME = "server"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)
_BOTH_SIDES = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


@dataclass(frozen=True)
class CertPaths:
    """Where one party's certificate and key are (PEM files)."""

    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lightning_fed test federation")])  # fmt: skip


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def make_ca(common: str = "lightning_fed test CA", days: int = 365) -> tuple[bytes, bytes]:
    """A new self-signed CA: ``(certificate PEM, private key PEM)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, common: str, hosts: Sequence[str] = (),
          days: int = 365) -> tuple[bytes, bytes]:  # fmt: skip
    """A certificate for ``common`` signed by the CA, with ``common``, the loopback names and ``hosts`` as subject
    alternative names: ``(certificate PEM, private key PEM)``.

    Example:
        >>> ca_cert, ca_key = make_ca()
        >>> cert, key = issue(ca_cert, ca_key, "alice", hosts=["school-a.example.org"])
        >>> common_name(cert), alt_names(cert)
        ('alice', ['alice', 'localhost', '127.0.0.1', '::1', 'school-a.example.org'])
    """
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_alt_names([common, *_LOOPBACK, *hosts])), critical=False)
        .add_extension(_BOTH_SIDES, critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def common_name(cert_pem: bytes) -> str:
    """The common name (CN) of a PEM certificate."""
    found = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else ""


def alt_names(cert_pem: bytes) -> list[str]:
    """The subject alternative names of a PEM certificate, as strings."""
    ext = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name.value) for name in ext.value]


def _check_id(site: str) -> None:
    if not site or not all(c.isalnum() or c in "-_." for c in site) or site in (SERVER_NAME, "ca"):
        raise FederatedConfigError(
            f"site id {site!r} is not valid for a certificate: use letters, digits, '-', '_' or '.', and not "
            f"{SERVER_NAME!r} or 'ca' (those names are taken), e.g. 'alice' or 'school-a'."
        )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_federation(out: str | os.PathLike[str], sites: Sequence[str], hosts: Sequence[str] = (),
                    days: int = 365) -> dict[str, CertPaths]:  # fmt: skip
    """Write a new CA, the server's certificate and one certificate per site into ``out`` (see the module
    docstring); returns ``{"ca": ..., "server": ..., site: ...}``. Keys are written with mode 0600.

    Args:
        out: the folder (made if missing). Files already there are overwritten.
        sites: the site ids (each becomes a certificate's CN and subject alternative name).
        hosts: more host names or IP addresses to put in every certificate (the machines' real names).
        days: how long the certificates are valid.
    """
    if isinstance(sites, str) or not sites:
        raise FederatedConfigError(f"`sites={sites!r}` is not valid: pass a list of site ids, e.g. ['alice', 'bob'].")
    if len(set(sites)) != len(sites):
        raise FederatedConfigError(f"`sites={list(sites)!r}` names a site twice: every site needs its own id.")
    for site in sites:
        _check_id(site)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(days=days)
    paths = {"ca": CertPaths(folder / "ca.pem", folder / "ca.key")}
    _write(paths["ca"].cert, ca_cert)
    _write(paths["ca"].key, ca_key, private=True)
    for party in (SERVER_NAME, *sites):
        cert, key = issue(ca_cert, ca_key, party, hosts, days)
        paths[party] = CertPaths(folder / f"{party}.pem", folder / f"{party}.key")
        _write(paths[party].cert, cert)
        _write(paths[party].key, key, private=True)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_fed.transport.certificates --out DIR --sites alice bob [--hosts NAME ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_fed.transport.certificates",
        description="Make a test federation's CA, the server's certificate and one certificate per site.",
    )
    parser.add_argument("--out", required=True, help="the folder to write the PEM files into")
    parser.add_argument("--sites", nargs="+", required=True, help="the site ids, e.g. alice bob")
    parser.add_argument("--hosts", nargs="*", default=[], help="host names or IPs to add to every certificate")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)
    try:
        paths = make_federation(args.out, args.sites, args.hosts, args.days)
    except FederatedConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for party, where in paths.items():
        print(f"{party}: {where.cert} {where.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

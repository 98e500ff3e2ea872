"""A test federation's certificates: signed by its CA, naming each party, keys kept private."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.transport.certificates import alt_names, common_name, main, make_federation


def test_the_command_makes_a_ca_a_server_and_one_certificate_per_site(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--sites", "alice", "bob", "--hosts", "school-a.example.org"]) == 0
    printed = capsys.readouterr().out
    assert {line.split(":")[0] for line in printed.splitlines()} == {"ca", "server", "alice", "bob"}
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for party in ("server", "alice", "bob"):
        pem = (tmp_path / f"{party}.pem").read_bytes()
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(ca)  # raises if not signed by this CA
        assert common_name(pem) == party
        assert alt_names(pem)[0] == party and {"127.0.0.1", "localhost", "school-a.example.org"} <= set(alt_names(pem))
        assert (tmp_path / f"{party}.key").stat().st_mode & 0o777 == 0o600
    other = make_federation(tmp_path / "other", ["alice"])
    with pytest.raises(InvalidSignature):  # another federation's certificate is not signed by this CA
        x509.load_pem_x509_certificate(other["alice"].cert.read_bytes()).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("sites", "match"),
    [
        (["server"], "site id 'server' is not valid"),
        (["a b"], "site id 'a b' is not valid"),
        (["alice", "alice"], "names a site twice"),
        ([], r"`sites=\[\]` is not valid"),
        ("alice", "`sites='alice'` is not valid: pass a list"),
    ],
)
def test_bad_site_ids_are_refused(tmp_path, sites, match):
    with pytest.raises(FederatedConfigError, match=match):
        make_federation(tmp_path, sites)


def test_the_command_reports_a_bad_site_id(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--sites", "ca"]) == 2
    assert "site id 'ca' is not valid" in capsys.readouterr().err

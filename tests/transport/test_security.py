"""Who may talk to a site (mutual TLS, one CA, the server's name only), message limits, and sites that fail."""

from __future__ import annotations

import signal
import time

import pytest
import torch

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.transport import RemoteWorker, SiteRefusedError, SiteUnavailableError, WireError


def _wait_for(site, text: str, seconds: float = 5.0) -> str:
    deadline = time.monotonic() + seconds
    while text not in site.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return site.log_text()


def test_a_server_with_a_certificate_from_another_ca_is_refused(sites, federation, other_federation):
    intruder = RemoteWorker("alice", sites["alice"].address, ca=federation / "ca.pem",
                            cert=other_federation / "server.pem", key=other_federation / "server.key", timeout=10)  # fmt: skip
    with pytest.raises(
        SiteUnavailableError, match=r"worker 'alice' at 127\.0\.0\.1:\d+ is unavailable .*TLS handshake"
    ):
        intruder.search("mnist-train")
    intruder.close()
    assert "Handshake failed" in _wait_for(sites["alice"], "Handshake failed")  # the site's one line (gRPC's)


def test_a_server_without_certificates_is_refused_by_a_tls_site(sites):
    address = sites["alice"].address
    plain = RemoteWorker("alice", address, insecure=True, timeout=10)
    with pytest.raises(SiteUnavailableError, match=r"unavailable .*plaintext .*a site that runs with TLS refuses it"):
        plain.search("mnist-train")
    plain.close()


def test_a_site_with_a_certificate_from_another_ca_is_refused(sites, federation, other_federation):
    trusting_other = RemoteWorker("alice", sites["alice"].address, ca=other_federation / "ca.pem",
                                  cert=federation / "server.pem", key=federation / "server.key", timeout=10)  # fmt: skip
    with pytest.raises(SiteUnavailableError, match=r"worker 'alice' .* TLS handshake failed"):
        trusting_other.search("mnist-train")
    trusting_other.close()


def test_a_site_answering_for_another_site_is_refused(sites, federation):
    wrong = RemoteWorker("bob", sites["alice"].address, certs=federation, timeout=10)  # alice's cert does not name bob
    with pytest.raises(SiteUnavailableError, match=r"worker 'bob' at .* TLS handshake failed"):
        wrong.search("mnist-train")
    wrong.close()
    impostor = RemoteWorker("dave", sites["carol"].address, insecure=True, timeout=10)  # plaintext: the hello says
    with pytest.raises(SiteRefusedError, match=r"the site at 127\.0\.0\.1:\d+ is 'carol', not 'dave'"):
        impostor.search("mnist-train")
    impostor.close()


def test_another_sites_valid_certificate_is_not_the_server(sites, federation):
    peer = RemoteWorker("alice", sites["alice"].address, certs=federation, name="bob", timeout=10)
    with pytest.raises(SiteRefusedError, match=r"refuses peer bob .* serves only \['server'\]"):
        peer.search("mnist-train")
    peer.close()
    assert "refuses peer bob" in _wait_for(sites["alice"], "refuses peer bob")


def test_configuration_errors_of_remote_workers(tmp_path):
    with pytest.raises(FederatedConfigError, match=r"RemoteWorker\('alice', '127.0.0.1:1'\) has no certificates"):
        RemoteWorker("alice", "127.0.0.1:1")
    with pytest.raises(FederatedConfigError, match=r"plaintext .* loopback addresses only .* got '10.1.2.3:50051'"):
        RemoteWorker("alice", "10.1.2.3:50051", insecure=True)
    with pytest.raises(FederatedConfigError, match=r"cannot read the CA certificate .*ca.pem"):
        RemoteWorker("alice", "127.0.0.1:1", certs=tmp_path)
    with pytest.raises(FederatedConfigError, match=r"`timeout=0` is not valid"):
        RemoteWorker("alice", "127.0.0.1:1", insecure=True, timeout=0)
    with pytest.raises(FederatedConfigError, match=r"address 'alice' is not valid: pass HOST:PORT"):
        RemoteWorker("alice", "alice", insecure=True)


def test_an_oversized_message_is_refused_by_the_sender_and_by_the_site(sites, federation):
    big = torch.zeros(2**19)  # 2 MiB of float32
    small_limit = RemoteWorker("alice", sites["alice"].address, certs=federation, max_message_mb=1, timeout=20)
    with pytest.raises(WireError, match=r"an ObjectMessage .* is \d+ bytes \(2\.0 MiB\), over the message limit of "
                                        r"1048576 bytes \(1\.0 MiB\)"):  # fmt: skip
        sy.send(big, small_limit)
    small_limit.close()
    bob = RemoteWorker("bob", sites["bob"].address, certs=federation, max_message_mb=64, timeout=20)
    with pytest.raises(WireError, match=r"a request is \d+ bytes \(2\.0 MiB\), over the message limit of 1048576"):
        sy.send(big, bob)  # bob's own limit is 1 MiB (--max-message-mb 1)
    ptr = sy.send(torch.arange(2**17, dtype=torch.float32), bob)  # 0.5 MiB fits, in one chunk or more
    assert torch.equal(ptr[::2].get(), torch.arange(0, 2**17, 2, dtype=torch.float32))
    bob.close()


def test_a_hung_site_times_out_and_a_killed_site_is_unavailable(sites):
    carol = sites["carol"]
    remote = RemoteWorker("carol", carol.address, insecure=True, timeout=1.5)
    ptr = sy.send(torch.ones(3), remote)
    carol.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(SiteUnavailableError, match=r"worker 'carol' at 127\.0\.0\.1:\d+ did not answer a "
                                                       r"CommandMessage \(torch.Tensor.sum\) within the timeout of 1\.5 s"):  # fmt: skip
            ptr.sum()
        assert time.monotonic() - start < 5
    finally:
        carol.proc.send_signal(signal.SIGCONT)
    assert ptr.sum().get().item() == 3.0  # it answers again once it runs
    carol.proc.kill()
    carol.proc.wait(timeout=10)
    start = time.monotonic()
    with pytest.raises(SiteUnavailableError, match=r"worker 'carol' at 127\.0\.0\.1:\d+ is unavailable .*not running"):
        ptr.sum()
    assert time.monotonic() - start < 5
    remote.close()

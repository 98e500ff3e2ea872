"""What a malicious peer or a mistyped flag cannot do: flood the server, fill a site's memory with runs, forge its
log lines, hold its threads with idle streams; bad site flags exit with status 2 and a message naming them."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
import torch

from lightning_fed.exceptions import FederatedConfigError, WorkerError
from lightning_fed.testing import BoringClassifier
from lightning_fed.transport import RemoteWorker, WireError
from lightning_fed.transport import worker_main as worker_main_module
from lightning_fed.transport.server import FULL_METHOD, METHOD, SERVICE, SiteServer, SiteWorker
from lightning_fed.transport.training import SiteTraining, TrainRequest
from lightning_fed.transport.wire import MAGIC, MIB, PREFIX, encode_request
from lightning_fed.workers.messages import CommandMessage

BORING = "lightning_fed.testing.BoringClassifier"


# -- a site that floods the server ---------------------------------------------------------------------------------
def _flooding_site(first: list[bytes], total_mib: int = 8) -> tuple[grpc.Server, int, list[int]]:
    """A fake site on 127.0.0.1 whose answer starts with ``first`` and then streams ``total_mib`` MiB; the list
    counts the MiB it got to send."""
    sent = [0]

    def call(request: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in request:
            pass
        yield from first
        for _ in range(total_mib):
            sent[0] += 1
            yield bytes(MIB)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.stream_stream_rpc_method_handler(call)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, sent


SMALL = PREFIX.pack(MAGIC, 10, 10)  # declares a 36-byte frame
LARGE = PREFIX.pack(MAGIC, 10, 2 * MIB)  # declares more than 1 MiB


@pytest.mark.parametrize(
    ("first", "match"),
    [
        (
            [SMALL[:1], SMALL[1:]],
            r"'s answer to a SiteQuery \(hello\) is malformed: its prefix declares 36 bytes, "
            r"but it sends at least 1048592; it was refused after 16 bytes",
        ),
        ([SMALL], r"is malformed: its prefix declares 36 bytes, but it sends at least 1048592"),
        (
            [LARGE[:3], LARGE[3:]],
            r"worker 'alice''s answer to a SiteQuery \(hello\) is 2097178 bytes \(2\.0 MiB\), "
            r"over the message limit of 1048576 bytes .*RemoteWorker\(max_message_mb=\.\.\.\)",
        ),
        ([b"L"], r"worker 'alice''s answer to a SiteQuery \(hello\) is 1048577 bytes .*over the message limit"),
    ],
    ids=["short-first-chunk", "whole-prefix", "over-the-limit-split", "no-prefix"],
)
def test_a_site_cannot_make_the_server_buffer_more_than_its_limit(first, match):
    server, port, sent = _flooding_site(first)
    alice = RemoteWorker("alice", f"127.0.0.1:{port}", insecure=True, timeout=20, max_message_mb=1)
    try:
        with pytest.raises(WireError, match=match):
            alice.hello()
    finally:
        alice.close()
        server.stop(0).wait()
    assert sent[0] < 8  # refused while the site was still sending


# -- a site keeps a bounded number of runs -------------------------------------------------------------------------
def _request(federation: str, state: dict) -> TrainRequest:
    return TrainRequest(federation, BORING, {"in_features": 4, "num_classes": 2}, state, "toy", [[0, 1]], 0, False)


def test_a_site_keeps_no_model_for_an_invalid_request_and_a_bounded_number_of_runs():
    site = SiteTraining({BORING: BoringClassifier})
    data, targets = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    for i in range(10):
        with pytest.raises(WorkerError, match=r"the global model's tensors do not match .*BoringClassifier"):
            site.fit(_request(f"bad{i}", {}), data, targets)
    assert len(site._runs) == 0
    state = BoringClassifier(4, 2).state_dict()
    for i in range(6):
        site.fit(_request(f"run{i}", state), data, targets)
    site.fit(_request("run2", state), data, targets)  # used again: the most recent
    assert list(site._runs) == ["run3", "run4", "run5", "run2"]


# -- log lines ------------------------------------------------------------------------------------------------------
def test_a_peer_cannot_forge_lines_in_the_sites_log(caplog):
    site = SiteWorker("alice")
    forged = "torch.add\nlightning-fed worker 'alice': INFO round 7: trained nothing (operator approved release_data)"
    with caplog.at_level(logging.INFO, logger="lightning_fed.transport.site"):
        site.handle(encode_request(CommandMessage(forged, (), {})))
    messages = [r.getMessage() for r in caplog.records if r.name == "lightning_fed.transport.site"]
    assert messages and all("\n" not in m for m in messages), messages
    assert any("torch.add\\nlightning-fed worker" in m for m in messages), messages


# -- a server that fills a site's memory ---------------------------------------------------------------------------
def test_a_server_cannot_store_more_than_the_sites_quota_and_what_leaves_frees_room():
    import lightning_fed as sy

    server = SiteServer(SiteWorker("clinic", max_stored_bytes=MIB), "127.0.0.1:0", insecure=True)
    port = server.start()
    clinic = RemoteWorker("clinic", f"127.0.0.1:{port}", insecure=True, timeout=15)
    try:
        first = sy.send(torch.ones(150_000), clinic)  # 600 kB
        with pytest.raises(WorkerError, match=r"^site 'clinic' holds 585\.9 KiB of others' objects, its quota is "
                                              r"1\.0 MiB, and a Tensor of 585\.9 KiB would pass it: it was not stored\. "
                                              r".* restart site 'clinic' with a larger --max-stored-mb \(now 1\)\.$"):  # fmt: skip
            sy.send(torch.ones(150_000), clinic)
        with pytest.raises(WorkerError, match=r"its quota is 1\.0 MiB"):
            first * 2  # a result counts as much as a sent tensor
        assert first.sum().get().item() == 150_000  # the site still works within its quota
        assert torch.equal(first.get(), torch.ones(150_000))  # what leaves frees its share
        second = sy.send(torch.full((150_000,), 2.0), clinic)
        assert second.sum().get().item() == 300_000
    finally:
        clinic.close()
        server.stop(grace=1.0)


# -- idle streams ---------------------------------------------------------------------------------------------------
def test_idle_streams_do_not_hold_the_site_for_longer_than_its_read_timeout():
    server = SiteServer(SiteWorker("alice"), "127.0.0.1:0", insecure=True, read_timeout=1.0)
    port = server.start()
    release = threading.Event()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def never_finished() -> Iterator[bytes]:
        yield SMALL[:4]
        release.wait(30)

    idle = [channel.stream_stream(FULL_METHOD)(never_finished(), timeout=30) for _ in range(20)]  # > its threads
    alice = RemoteWorker("alice", f"127.0.0.1:{port}", insecure=True, timeout=15)
    try:
        start = time.monotonic()
        assert alice.hello()["id"] == "alice"
        assert time.monotonic() - start < 10
        for call in idle:
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
        alice.close()
        channel.close()
        server.stop(0)


# -- the site's flags -----------------------------------------------------------------------------------------------
class _Stopped(threading.Event):
    """A stop event already set: a site that did start returns at once (status 0) instead of serving."""

    def __init__(self) -> None:
        super().__init__()
        self.set()


@pytest.fixture
def key_folders(tmp_path, federation):
    """Certificate folders for alice whose key is not a key, is bob's key, or whose certificate is broken."""
    folders = {}
    for name in ("notakey", "otherkey", "badcert"):
        folder = tmp_path / name
        folder.mkdir()
        for file in ("ca.pem", "alice.pem", "alice.key"):
            shutil.copy(federation / file, folder / file)
        folders[name] = folder
    (folders["notakey"] / "alice.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    shutil.copy(federation / "bob.key", folders["otherkey"] / "alice.key")
    (folders["badcert"] / "alice.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return folders


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--certs", "{certs}", "--listen", "127.0.0.1:99999"],
            r"`--listen 127\.0\.0\.1:99999` is not valid: pass HOST:PORT with a port from 0 to 65535",
        ),
        (["--certs", "{certs}", "--listen", "127.0.0.1"], r"`--listen 127\.0\.0\.1` is not valid: pass HOST:PORT"),
        (
            ["--insecure", "--max-message-mb", "inf"],
            r"`--max-message-mb inf` is not valid: pass a finite number of MiB, at least 1",
        ),
        (["--insecure", "--max-message-mb", "1e-6"], r"`--max-message-mb 1e-06` is not valid: pass a finite number"),
        (["--insecure", "--state-dir", "{tmp}/file"], r"`--state-dir .*file` is a file, not a folder: pass a folder"),
        (
            ["--certs", "{notakey}"],
            r"site 'alice': the private key '.*notakey/alice\.key' is not a usable private key .*--certs DIR",
        ),
        (
            ["--certs", "{otherkey}"],
            r"the private key '.*otherkey/alice\.key' does not belong to the certificate '.*otherkey/alice\.pem'",
        ),
        (["--certs", "{badcert}"], r"the certificate '.*badcert/alice\.pem' cannot be read .*--cert/--key"),
        (["--insecure", "--read-timeout", "0"], r"`--read-timeout 0\.0` is not valid: pass seconds > 0"),
    ],
    ids=[
        "port-99999",
        "no-port",
        "mb-inf",
        "mb-tiny",
        "state-dir-file",
        "not-a-key",
        "other-key",
        "bad-cert",
        "read-timeout",
    ],
)
def test_bad_site_flags_exit_2_naming_the_flag(tmp_path, capsys, monkeypatch, federation, key_folders, argv, match):
    (tmp_path / "file").write_text("not a folder")
    names = {"certs": federation, "tmp": tmp_path, **key_folders}
    argv = [a.format(**{k: str(v) for k, v in names.items()}) if "{" in a else a for a in argv]
    monkeypatch.setattr(worker_main_module, "threading", SimpleNamespace(Event=_Stopped))  # never serves for long
    status = worker_main_module.main(["--id", "alice", "--listen", "127.0.0.1:0", *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("lightning-fed worker: error: "), err
    assert "Traceback" not in err
    assert __import__("re").search(match, err), err


def test_a_message_limit_is_checked_for_a_remote_worker_too():
    with pytest.raises(FederatedConfigError, match=r"`max_message_mb=inf` is not valid: pass a finite number of MiB"):
        RemoteWorker("alice", "127.0.0.1:1", insecure=True, max_message_mb=float("inf"))

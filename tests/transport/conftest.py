"""Site worker processes on 127.0.0.1 for the deployment tests, started once per session and always stopped.

Each site is ``python -m lightning_fed.transport.worker_main`` on port 0; the fixture reads the port from the line the
program prints. The sites read tiny MNIST folders the fixture writes; the test process never reads them again (its
oracles come from :func:`make_mnist_arrays` with the same seeds).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_fed.transport.certificates import make_federation
from lightning_fed.transport.site_data import MNIST_MEAN, MNIST_STD
from tests.helpers.mnist_files import make_mnist_arrays, write_mnist_raw

STARTUP_S = 120.0  # importing torch and Lightning in three processes on two shared cores
LISTENING = re.compile(r"listening on (\S+):(\d+) ")
SEEDS = {"alice": 11, "bob": 22, "carol": 33}
NUM_TRAIN = 20


@dataclass
class Site:
    id: str
    proc: subprocess.Popen
    address: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def launch(site_id: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lightning_fed.transport.worker_main", "--id", site_id, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("wb"), env=env,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip


def wait_listening(site_id: str, proc: subprocess.Popen, log: Path, deadline: float) -> str:
    """The address the site prints once it listens; fails (with the site's log) if it exits or takes too long."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = proc.stdout.readline().decode(errors="replace")
                found = LISTENING.search(line)
                if found:
                    return f"{found.group(1)}:{found.group(2)}"
                if not line and proc.poll() is not None:
                    break
        raise AssertionError(f"site {site_id!r} did not start (status {proc.poll()}):\n{log.read_text()[-3000:]}")
    finally:
        selector.close()


def stop(proc: subprocess.Popen) -> int:
    """Stop a site with SIGTERM (SIGKILL if it does not exit in 10 s); returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class RestartableSite:
    """A plaintext site on a fixed loopback port that a test kills and restarts at the same address."""

    def __init__(self, tmp_path: Path, num_train: int, seed: int, extra: tuple[str, ...] = (), timeout: float = 60,
                 site_id: str = "dave", accept: str = "lightning_fed.models.MNISTClassifier") -> None:  # fmt: skip
        from lightning_fed.transport import RemoteWorker

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        folder = tmp_path / site_id
        write_mnist_raw(folder, num_train=num_train, num_test=4, seed=seed, gz=False)
        self.id = site_id
        self.args = ["--listen", f"127.0.0.1:{port}", "--data", f"mnist-train={folder}", "--insecure",
                     "--accept-model", accept, *extra]  # fmt: skip
        self.log = tmp_path / f"{site_id}.log"
        self.procs = [self._start()]
        self.worker = RemoteWorker(site_id, f"127.0.0.1:{port}", insecure=True, timeout=timeout)

    def _start(self) -> subprocess.Popen:
        proc = launch(self.id, self.args, self.log)
        wait_listening(self.id, proc, self.log, time.monotonic() + STARTUP_S)
        return proc

    def kill(self) -> None:
        self.procs[-1].kill()
        self.procs[-1].wait(timeout=10)

    def restart(self) -> None:
        """Start it again and wait until the server's channel reaches it (its backoff is about 2 s)."""
        from lightning_fed.exceptions import LightningFedError

        self.procs.append(self._start())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.worker.hello()
                return
            except LightningFedError:
                time.sleep(0.3)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


@contextmanager
def mnist_sites(root: Path, sizes: dict[str, int], seeds: dict[str, int], args: list[str]) -> Iterator[dict[str, Site]]:
    """One site process per id in ``sizes``, each serving its own tiny MNIST training split (``sizes[id]`` images
    drawn with ``seeds[id]``) as ``mnist-train`` with ``args``; started together, stopped at the end."""
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for site_id, size in sizes.items():
            folder = root / site_id
            write_mnist_raw(folder, num_train=size, num_test=4, seed=seeds[site_id], gz=False)
            log = root / f"{site_id}.log"
            procs[site_id] = (launch(site_id, ["--listen", "127.0.0.1:0", "--data", f"mnist-train={folder}", *args],
                                     log), log)  # fmt: skip
        deadline = time.monotonic() + STARTUP_S
        yield {s: Site(s, p, wait_listening(s, p, log, deadline), log) for s, (p, log) in procs.items()}
    finally:
        for proc, _ in procs.values():
            stop(proc)


def site_tensors(size: int, seed: int) -> TensorDataset:
    """What a site started by :func:`mnist_sites` serves, normalised as the site normalises it: the simulation's
    oracle, built from the generator's seed (not from the site's files)."""
    images, labels = make_mnist_arrays(size, seed=seed)  # what write_mnist_raw wrote
    x = torch.from_numpy(images).to(torch.float32).div_(255).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels).to(torch.int64))


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test federation's certificates: ca.pem, server.pem/key, alice.pem/key, bob.pem/key."""
    folder = tmp_path_factory.mktemp("certs")
    make_federation(folder, ["alice", "bob"])
    return folder


@pytest.fixture(scope="session")
def other_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA's certificates, with the same names."""
    folder = tmp_path_factory.mktemp("other-certs")
    make_federation(folder, ["alice", "bob"])
    return folder


@pytest.fixture(scope="session")
def sites(tmp_path_factory: pytest.TempPathFactory, federation: Path) -> Iterator[dict[str, Site]]:
    """alice (mutual TLS, strict), bob (mutual TLS, strict, 1 MiB message limit) and carol (plaintext on loopback),
    each serving its own tiny MNIST training split as ``mnist-train``; started together, stopped at the end."""
    root = tmp_path_factory.mktemp("sites")
    extra = {
        "alice": ["--certs", str(federation)],
        "bob": ["--certs", str(federation), "--max-message-mb", "1"],
        "carol": ["--insecure"],
    }
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for site_id, seed in SEEDS.items():
            data = root / site_id
            write_mnist_raw(data, num_train=NUM_TRAIN, num_test=4, seed=seed, gz=False)
            log = root / f"{site_id}.log"
            args = ["--listen", "127.0.0.1:0", "--data", f"mnist-train={data}", *extra[site_id]]
            procs[site_id] = (launch(site_id, args, log), log)
        deadline = time.monotonic() + STARTUP_S
        started = {
            site_id: Site(site_id, proc, wait_listening(site_id, proc, log, deadline), log)
            for site_id, (proc, log) in procs.items()
        }
        yield started
    finally:
        statuses = {site_id: stop(proc) for site_id, (proc, _) in procs.items()}
    # SIGTERM stops a site cleanly (status 0); carol may have been killed by a test (SIGKILL: -9)
    assert statuses["alice"] == 0 and statuses["bob"] == 0 and statuses["carol"] in (0, -signal.SIGKILL), statuses

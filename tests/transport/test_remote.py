"""RemoteWorker against site worker processes: the pointer API over mutual TLS equals a VirtualWorker's, under the
site's policy."""

from __future__ import annotations

import time

import pytest
import torch

import lightning_fed as sy
from lightning_fed.exceptions import PermissionDeniedError, PointerError, WorkerError
from lightning_fed.pointers.api import tag
from lightning_fed.transport import RemoteWorker
from lightning_fed.transport.errors import WireError
from lightning_fed.transport.site_data import MNIST_MEAN, MNIST_STD
from lightning_fed.transport.wire import MIB
from lightning_fed.workers.messages import CommandMessage, GetMessage, ObjectMessage, ObjectRef
from tests.helpers.mnist_files import make_mnist_arrays
from tests.transport.conftest import NUM_TRAIN, SEEDS


@pytest.fixture
def alice(sites, federation):
    worker = RemoteWorker("alice", sites["alice"].address, certs=federation, timeout=20)
    yield worker
    worker.close()


@pytest.fixture
def bob(sites, federation):
    worker = RemoteWorker("bob", sites["bob"].address, certs=federation, timeout=20)  # bob's own limit: 1 MiB
    yield worker
    worker.close()


def _ops(worker):
    """The same pointer operations on any worker; returns what came back with .get()."""
    g = torch.Generator().manual_seed(0)
    x = sy.send(torch.randn(3, 4, generator=g), worker)
    w = sy.send(torch.randn(4, 2, generator=g).requires_grad_(), worker)
    out = {}
    y = torch.relu(x @ w)
    loss = (y * y).sum()
    loss.backward()
    out["grad"] = w.grad.get()
    out["loss"] = loss.get()
    x.add_(1.5)  # in place: the same pointer
    out["max"] = tuple(t.get() for t in torch.max(x, dim=1))  # a torch.return_types structseq of pointers
    out["index"] = x[1:, ::2].to(torch.float64).get()
    out["shape"] = (x.shape, x.dtype, torch.Tensor.size(x, 0))
    out["copy"] = x.copy().to_here()
    out["x"] = x.get()
    return out


def test_round_trip_equals_virtual_worker(alice):
    remote, virtual = _ops(alice), _ops(sy.VirtualWorker(id="oracle"))
    assert remote.keys() == virtual.keys()
    for key in ("grad", "loss", "index", "copy", "x"):
        assert remote[key].dtype == virtual[key].dtype, key
        assert torch.equal(remote[key], virtual[key]), key
    assert all(torch.equal(a, b) for a, b in zip(remote["max"], virtual["max"], strict=True))
    assert remote["shape"] == virtual["shape"]
    assert remote["grad"].abs().sum() > 0  # a real gradient came back, not zeros


def test_tensor_metadata_and_grad_cross_the_wire(alice):
    x = tag(torch.tensor([1.0, 2.0], requires_grad=True), "#mine")
    x.grad = torch.tensor([0.5, 0.25])
    ptr = sy.send(x, alice)
    found = alice.search("#mine")
    assert [tuple(p.shape) for p in found] == [(2,)] and found[0].tags == {"#mine"}
    back = ptr.get()
    assert back.requires_grad and torch.equal(back.detach(), x.detach()) and torch.equal(back.grad, x.grad)
    with pytest.raises(WorkerError, match=r"holds no object .*left through .get"):
        found[0].get()  # the pointer search returned names the object that has just left


def test_search_finds_the_sites_data_by_name_and_tag(alice):
    data, target = alice.search("mnist-train")
    assert data.shape == (NUM_TRAIN, 1, 28, 28) and target.shape == (NUM_TRAIN,)
    assert data.tags >= {"mnist-train", "#data"} and "#target" in target.tags
    assert [p.id_at_location for p in alice.search("mnist-train", "#target")] == [target.id_at_location]
    assert alice.search("no-such-dataset") == []
    assert alice.datasets == {"mnist-train": (data.id_at_location, target.id_at_location)}


def test_the_sites_data_stays_and_scalars_leave_audited(alice, sites):
    data, target = alice.search("mnist-train", "#data")[0], alice.search("mnist-train", "#target")[0]
    with pytest.raises(PermissionDeniedError, match=r"worker 'alice' refuses to release object \d+ \(data, shape"):
        data.get()
    with pytest.raises(PermissionDeniedError, match=r"refuses to release"):
        (data * 1).to_here()  # computed from the data: private too
    images, labels = make_mnist_arrays(NUM_TRAIN, seed=SEEDS["alice"])  # the oracle, from the generator's seed
    expected = ((torch.from_numpy(images).float() / 255 - MNIST_MEAN) / MNIST_STD).mean()
    assert torch.allclose(data.mean().get(), expected, atol=1e-5)  # a scalar: released under release_scalars
    assert target.sum().get().item() == int(labels.sum())
    log = alice.audit_log
    refused = [(r.worker_id, r.command, r.kind) for r in log.refused]
    assert ("alice", "get", "data") in refused and ("alice", "to_here", "data") in refused
    assert [r.rule for r in log if r.kind == "scalar"][-2:] == ["release_scalars", "release_scalars"]
    assert alice.policy.release_data is False  # the site reports its strict policy
    data, target = alice.search("mnist-train")  # a refused get leaves the data at the site
    assert data.shape == (NUM_TRAIN, 1, 28, 28)
    deadline = time.monotonic() + 5  # and the site wrote one line saying so
    while "refused a GetMessage" not in sites["alice"].log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "refuses to release object" in sites["alice"].log_text()


def test_the_sites_data_cannot_be_replaced_or_deleted(alice):
    data = alice.search("mnist-train", "#data")[0]
    data.delete()  # ignored by the site: its datasets are its own
    alice.flush()
    assert alice.search("mnist-train", "#data")[0].shape == (NUM_TRAIN, 1, 28, 28)
    with pytest.raises(WorkerError, match=r"one of the site's datasets, which cannot be replaced"):
        alice._recv(ObjectMessage(data.id_at_location, torch.zeros(1)))


def test_dropped_pointers_are_freed_with_the_next_request(alice):
    kept = sy.send(torch.ones(2), alice)
    dropped = sy.send(torch.zeros(2), alice)
    obj_id = dropped.id_at_location
    del dropped
    assert alice._deletes == [obj_id]  # no round trip yet
    assert kept.get().tolist() == [1.0, 1.0]  # this request carried the delete
    assert alice._deletes == []
    with pytest.raises(WorkerError, match=f"holds no object {obj_id}: it was deleted"):
        alice._recv(GetMessage(obj_id))


def test_what_a_remote_worker_refuses_to_do(alice):
    with pytest.raises(
        WorkerError,
        match=r"cannot run plan 'session': no code crosses the wire: a remote site trains whole FedAvg rounds",
    ):
        alice.session()
    with pytest.raises(WorkerError, match=r"cannot install plan 'step': no code crosses the wire"):
        alice.install_plan("step", lambda: None)
    with pytest.raises(WorkerError, match=r"cannot show its objects"):
        alice.objects
    with pytest.raises(WorkerError, match=r"its policy is the site's own"):
        alice.set_policy("open")
    bob = sy.VirtualWorker(id="bob-local")
    ptr = sy.send(torch.ones(1), alice)
    with pytest.raises(WorkerError, match=r"MoveMessage .* sites do not connect to one another"):
        ptr.move(bob)
    with pytest.raises(WorkerError, match=r"cannot carry a PointerTensor .* a pointer names an object in this process"):
        sy.send(torch.ones(1), bob).send(alice)
    with pytest.raises(PointerError, match=r"mixes a pointer to worker 'alice' with a pointer to worker 'bob-local'"):
        ptr + sy.send(torch.ones(1), bob)
    with pytest.raises(WorkerError, match=r"refuses to run torch.Tensor.item"):
        alice._recv(CommandMessage("torch.Tensor.item", (ObjectRef(1),)))


class _SeedNet(torch.nn.Module):
    """The seed tutorial's CNN, narrowed to keep the test quick."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 5)
        self.fc = torch.nn.Linear(4 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return torch.log_softmax(self.fc(x.view(x.shape[0], -1)), dim=1)


def _oracle_shard(site: str):
    """What ``site`` serves as ``mnist-train``, made here (from the generator's seed) and sent to a VirtualWorker."""
    images, labels = make_mnist_arrays(NUM_TRAIN, seed=SEEDS[site])
    oracle = sy.VirtualWorker(id=f"{site}-oracle")
    data = sy.send(((torch.from_numpy(images).float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1), oracle)
    return data, sy.send(torch.from_numpy(labels).long(), oracle)


def _seed_loop(*shards, steps: int = 3, optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.5)):
    """The seed tutorial's training loop on pointers: the model goes to the data (the ``(data, target)`` shards in
    turn), trains a step and comes back."""
    torch.manual_seed(0)
    model = _SeedNet()
    optimizer = optimizer(model.parameters())  # momentum, Adam: the state follows the model
    losses = []
    for step in range(steps):
        data, target = shards[step % len(shards)]
        sy.send(model, data.location)
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()  # in place on the site's leaf parameters, under the no_grad() it runs in here
        sy.get(model)
        losses.append(loss.get())
    return model, torch.stack(losses)


def _assert_same_training(remote, local):
    (remote_model, remote_losses), (local_model, local_losses) = remote, local
    torch.testing.assert_close(remote_losses, local_losses, rtol=1e-5, atol=1e-6)
    for (name, got), expected in zip(remote_model.state_dict().items(), local_model.state_dict().values()):
        assert type(got) is torch.Tensor, name  # home again, not a pointer
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(remote_model.fc.weight, _SeedNet().fc.weight)  # it trained


def test_the_seed_training_loop_runs_at_a_site_as_on_a_virtual_worker(alice):
    remote = _seed_loop(alice.search("mnist-train"))
    _assert_same_training(remote, _seed_loop(_oracle_shard("alice")))
    assert remote[1][-1] < remote[1][0]


@pytest.mark.parametrize(
    "optimizer",
    [lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), lambda params: torch.optim.Adam(params, lr=0.01)],
    ids=["momentum", "adam"],
)
def test_optimizer_state_follows_the_model_from_site_to_site(alice, bob, optimizer):
    # the state born at alice follows the model to bob and back: sites do not connect, so it passes through here
    remote = _seed_loop(alice.search("mnist-train"), bob.search("mnist-train"), steps=4, optimizer=optimizer)
    _assert_same_training(remote, _seed_loop(_oracle_shard("alice"), _oracle_shard("bob"), steps=4,
                                             optimizer=optimizer))  # fmt: skip


def test_no_grad_reaches_the_site(alice):
    w = sy.send(torch.ones(2, requires_grad=True), alice)
    with torch.no_grad():
        w.mul_(3.0)  # in place on a leaf that requires grad: only allowed without autograd
        assert not (w * 2).requires_grad
    assert (w * 2).requires_grad
    assert w.get().tolist() == [3.0, 3.0]


def test_a_get_that_cannot_be_answered_leaves_the_object_at_the_site(alice, bob, federation, sites):
    big = sy.send(torch.ones(1), bob).expand(300_000).clone()  # 1.2 MB, made at bob (whose limit is 1 MiB)
    with pytest.raises(WireError, match=r"the answer to a GetMessage \(object \d+\) is \d+ bytes .* over the message "
                                        r"limit of 1048576 bytes"):  # fmt: skip
        big.get()
    assert big.is_live and big.sum().get().item() == 300_000  # still at bob
    sparse = sy.send(torch.eye(3), bob).to_sparse()
    with pytest.raises(WireError, match=r"cannot carry a Tensor .*layout torch.sparse_coo"):
        sparse.get()
    assert torch.equal(sparse.to_dense().get(), torch.eye(3))
    small = RemoteWorker("alice", sites["alice"].address, certs=federation, timeout=20, max_message_mb=1)
    try:
        at_alice = sy.send(torch.ones(1), small).expand(300_000).clone()  # within alice's 64 MiB, over this side's
        with pytest.raises(WireError, match=r"over the message limit of 1048576 bytes"):
            at_alice.get()
        small.max_message_bytes = 2 * MIB
        assert at_alice.get().sum().item() == 300_000  # it waited at alice
        gets = [r for r in small.audit_log if r.obj_id == at_alice.id_at_location]
        assert [r.command for r in gets] == ["get"]  # one release, a get: the failed answer left nothing
    finally:
        small.close()


def test_the_sites_datasets_are_read_only(alice):
    data, target = alice.search("mnist-train")
    before = (data.sum().get(), target.sum().get())
    refused = r"worker 'alice' refuses to run torch.Tensor.{}: it would write to object \d+ of the site's dataset " \
              r"'mnist-train'{}, and the site's datasets are read-only from outside"  # fmt: skip
    with pytest.raises(PermissionDeniedError, match=refused.format("zero_", "")):
        data.zero_()
    with pytest.raises(PermissionDeniedError, match=refused.format("fill_", "")):
        target.fill_(7)
    with pytest.raises(PermissionDeniedError, match=refused.format("resize_", "")):
        data.resize_(0)
    with pytest.raises(PermissionDeniedError, match=refused.format("requires_grad_", "")):
        data.requires_grad_()
    view = r", a view of it \(it shares its memory\)"
    with pytest.raises(PermissionDeniedError, match=refused.format("zero_", view)):
        data[0:1].zero_()
    with pytest.raises(PermissionDeniedError, match=refused.format("add_", view)):
        data.view(-1).add_(1)
    assert data.clone().zero_().sum().get().item() == 0  # a copy at the site is the client's to change
    data, target = alice.search("mnist-train")
    assert data.shape == (NUM_TRAIN, 1, 28, 28) and not data.requires_grad
    assert torch.equal(data.sum().get(), before[0]) and torch.equal(target.sum().get(), before[1])
    assert alice.hello()["lengths"] == {"mnist-train": NUM_TRAIN}


def test_settings_that_do_not_reach_the_site_are_refused_not_ignored(alice):
    x = sy.send(torch.ones(2, 2), alice)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with autocast, pytest.raises(WorkerError, match=r"torch.autocast\('cpu', dtype=torch.bfloat16\) is in effect"):
        x @ x  # at the site it would run in float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(WorkerError, match=r"set_default_dtype\(torch.float64\) .* does not reach the site"):
            x / 2
    finally:
        torch.set_default_dtype(previous)
    with torch.autograd.set_detect_anomaly(True), pytest.raises(WorkerError, match=r"set_detect_anomaly\(True\)"):
        x.sqrt()
    assert (x @ x).get().tolist() == [[2.0, 2.0], [2.0, 2.0]]  # outside them, as before

"""Tests of ``PointerTensor``: sending, dispatch at the worker, the pointer's own API, errors, and memory.

No hook here: everything goes through ``lightning_fed.send``/``get`` and the pointer's methods.
"""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

import lightning_fed as sy
from lightning_fed.exceptions import NotAWorkerError, PointerError, WorkerError
from lightning_fed.pointers import PointerTensor, send_tensor, worker_id_of
from lightning_fed.workers import VirtualWorker

POINTER_REPR = re.compile(r"^\(Wrapper\)>\[PointerTensor \| me:(\d+) -> alice:(\d+)\]$")


def remote(ptr: PointerTensor) -> torch.Tensor:
    """The worker's real tensor behind ``ptr`` (test-side peek, not part of the API)."""
    return ptr.location.objects[ptr.id_at_location]


# -- send / get ------------------------------------------------------------------------------------------------------
def test_send_returns_a_pointer_to_the_workers_object(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([0, 1, 2]), alice)
    assert type(ptr) is PointerTensor
    assert isinstance(ptr, torch.Tensor)
    assert ptr.location is alice
    assert ptr.owner is sy.me
    assert list(alice.objects) == [ptr.id_at_location]
    assert ptr.id != ptr.id_at_location
    assert ptr.is_live
    assert torch.equal(remote(ptr), torch.tensor([0, 1, 2]))


def test_repr_str_and_format_name_both_ends(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1.0]), alice)
    match = POINTER_REPR.match(repr(ptr))
    assert match is not None, repr(ptr)
    assert int(match.group(1)) == ptr.id
    assert int(match.group(2)) == ptr.id_at_location
    assert str(ptr) == repr(ptr)
    assert f"{ptr}" == repr(ptr)
    assert "1." not in repr(ptr)  # never the values


def test_get_brings_the_tensor_back_and_frees_it(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([0, 1, 2, 1, 2]), alice)
    back = ptr.get()
    assert type(back) is torch.Tensor
    assert torch.equal(back, torch.tensor([0, 1, 2, 1, 2]))
    assert alice.objects == {}
    assert not ptr.is_live


def test_sy_get_works_like_ptr_get(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([4.0]), alice)
    assert torch.equal(sy.get(ptr), torch.tensor([4.0]))
    local = torch.tensor([1.0])
    assert sy.get(local) is local
    assert alice.objects == {}


def test_send_gives_the_worker_its_own_copy(alice: VirtualWorker) -> None:
    local = torch.tensor([1.0, 2.0, 3.0])
    ptr = sy.send(local, alice)
    local.add_(100)
    local[0] = -1
    assert torch.equal(remote(ptr), torch.tensor([1.0, 2.0, 3.0]))
    ptr.mul_(2)
    assert torch.equal(local, torch.tensor([-1.0, 102.0, 103.0]))
    assert torch.equal(ptr.get(), torch.tensor([2.0, 4.0, 6.0]))


def test_requires_grad_survives_send_and_get(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    assert ptr.requires_grad
    assert remote(ptr).requires_grad
    assert remote(ptr).is_leaf
    back = ptr.get()
    assert back.requires_grad
    assert back.is_leaf
    plain = sy.send(torch.tensor([1.0]), alice)
    assert not plain.requires_grad
    assert not plain.get().requires_grad


def test_send_carries_an_existing_grad(alice: VirtualWorker) -> None:
    local = torch.tensor([1.0, 2.0], requires_grad=True)
    local.grad = torch.tensor([0.5, 0.25])
    ptr = sy.send(local, alice)
    assert torch.equal(remote(ptr).grad, torch.tensor([0.5, 0.25]))
    local.grad.zero_()
    assert torch.equal(remote(ptr).grad, torch.tensor([0.5, 0.25]))  # its own copy of the grad too


def test_send_to_me_returns_the_tensor(alice: VirtualWorker) -> None:
    local = torch.tensor([1.0])
    assert sy.send(local, sy.me) is local


def test_send_tensor_directly(alice: VirtualWorker) -> None:
    ptr = send_tensor(torch.tensor([5]), alice)
    assert ptr.location is alice
    assert torch.equal(ptr.get(), torch.tensor([5]))


# -- dispatch: everything runs at the worker -------------------------------------------------------------------------
def test_metadata_are_plain_values(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.zeros(2, 3, dtype=torch.float64), alice)
    assert ptr.shape == torch.Size([2, 3])
    assert ptr.size() == torch.Size([2, 3])
    assert ptr.dtype is torch.float64
    assert len(ptr) == 2
    assert ptr.dim() == 2
    assert ptr.numel() == 6
    assert ptr.device == torch.device("cpu")
    assert ptr.requires_grad is False
    assert ptr.grad is None
    assert type(ptr.shape) is torch.Size
    assert type(len(ptr)) is int


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (lambda p, q: p + q, [5.0, 8.0]),
        (lambda p, q: p - q, [-3.0, -4.0]),
        (lambda p, q: p * q, [4.0, 12.0]),
        (lambda p, q: q / p, [4.0, 3.0]),
        (lambda p, q: p @ q, 16.0),
        (lambda p, q: p**2, [1.0, 4.0]),
        (lambda p, q: 1 - p, [0.0, -1.0]),
        (lambda p, q: 2 * p, [2.0, 4.0]),
        (lambda p, q: 3 + p, [4.0, 5.0]),
        (lambda p, q: 4 / p, [4.0, 2.0]),
        (lambda p, q: 2**p, [2.0, 4.0]),
        (lambda p, q: -p, [-1.0, -2.0]),
        (lambda p, q: abs(-q), [4.0, 6.0]),
        (lambda p, q: (p < q).float(), [1.0, 1.0]),
        (lambda p, q: torch.add(p, q, alpha=2), [9.0, 14.0]),
        (lambda p, q: torch.matmul(p, q), 16.0),
        (lambda p, q: torch.stack([p, q]).sum(0), [5.0, 8.0]),
        (lambda p, q: torch.where(p > 1, p, q), [4.0, 2.0]),
        (lambda p, q: F.relu(p - 2), [0.0, 0.0]),
        (lambda p, q: F.mse_loss(p, q), 12.5),
        (lambda p, q: p.sum(), 3.0),
        (lambda p, q: q.mean(), 5.0),
        (lambda p, q: p.clone().add_(q), [5.0, 8.0]),
        (lambda p, q: p.view(2, 1).squeeze(1), [1.0, 2.0]),
        (lambda p, q: p.unsqueeze(1).T[0], [1.0, 2.0]),
    ],
)
def test_operations_run_at_the_worker(alice: VirtualWorker, op: object, expected: object) -> None:
    p = sy.send(torch.tensor([1.0, 2.0]), alice)
    q = sy.send(torch.tensor([4.0, 6.0]), alice)
    result = op(p, q)
    assert type(result) is PointerTensor
    assert result.location is alice
    assert result.id_at_location in alice.objects
    assert torch.equal(result.get(), torch.tensor(expected))


def test_nll_loss_on_log_softmax_matches_local(alice: VirtualWorker) -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [1.5, 0.2, 0.3]])
    target = torch.tensor([1, 0])
    expected = F.nll_loss(F.log_softmax(logits, dim=1), target)
    out = F.nll_loss(F.log_softmax(sy.send(logits, alice), dim=1), sy.send(target, alice))
    assert out.shape == torch.Size([])
    assert torch.equal(out.get(), expected)


def test_max_with_dim_gives_a_namedtuple_of_pointers(alice: VirtualWorker) -> None:
    # Regression: torch.return_types.max came back holding the worker's real tensors.
    p = sy.send(torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]), alice)
    result = torch.max(p, dim=1)
    assert type(result) is torch.return_types.max
    assert type(result.values) is PointerTensor
    assert type(result.indices) is PointerTensor
    values, indices = result
    assert values.location is alice
    assert torch.equal(values.get(), torch.tensor([5.0, 7.0]))
    assert torch.equal(indices.get(), torch.tensor([1, 0]))
    top = p.topk(2, dim=1)
    assert type(top) is torch.return_types.topk
    assert torch.equal(top.values.get(), torch.tensor([[5.0, 2.0], [7.0, 3.0]]))


def test_tuple_results_are_tuples_of_pointers(alice: VirtualWorker) -> None:
    p = sy.send(torch.arange(6.0), alice)
    parts = torch.chunk(p, 3)
    assert type(parts) is tuple
    assert all(type(part) is PointerTensor for part in parts)
    assert torch.equal(parts[1].get(), torch.tensor([2.0, 3.0]))


def test_in_place_ops_return_the_same_pointer(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0]), alice)
    obj_id = p.id_at_location
    assert p.add_(1) is p
    assert p.mul_(sy.send(torch.tensor([2.0, 3.0]), alice)) is p
    p += 1
    assert type(p) is PointerTensor
    assert p.id_at_location == obj_id
    assert len(alice.objects) == 1
    assert torch.equal(p.get(), torch.tensor([5.0, 10.0]))


def test_indexing_and_setitem(alice: VirtualWorker) -> None:
    p = sy.send(torch.arange(6.0).reshape(2, 3), alice)
    row = p[1]
    assert type(row) is PointerTensor
    assert torch.equal(row.get(), torch.tensor([3.0, 4.0, 5.0]))
    assert torch.equal(p[:, 1].get(), torch.tensor([1.0, 4.0]))
    mask = p > 2
    assert torch.equal(p[mask].get(), torch.tensor([3.0, 4.0, 5.0]))
    p[0, 0] = 10.0
    p[1] = sy.send(torch.tensor([7.0, 8.0, 9.0]), alice)
    assert torch.equal(p.get(), torch.tensor([[10.0, 1.0, 2.0], [7.0, 8.0, 9.0]]))


def test_to_and_dtype_conversions_run_at_the_worker(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1, 2]), alice)
    f = p.float()
    assert type(f) is PointerTensor
    assert f.dtype is torch.float32
    assert remote(f).dtype is torch.float32
    assert remote(p).dtype is torch.int64  # the original is untouched
    assert len(alice.objects) == 2
    d = p.to(torch.float64)
    assert d.dtype is torch.float64 and remote(d).dtype is torch.float64
    c = f.to("cpu")
    assert type(c) is PointerTensor
    assert c.location is alice
    assert c.device == torch.device("cpu")
    assert torch.equal(c.get(), torch.tensor([1.0, 2.0]))


def test_backward_at_the_worker_and_grad_as_a_pointer(alice: VirtualWorker) -> None:
    x = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    loss = (x * x).sum()
    assert loss.requires_grad
    assert loss.backward() is None
    grad = x.grad
    assert type(grad) is PointerTensor
    assert grad.location is alice
    assert torch.equal(grad.get(), torch.tensor([2.0, 4.0]))
    back = x.get()
    assert torch.equal(back.grad, torch.tensor([2.0, 4.0]))


def test_grad_can_be_set_and_cleared_through_the_pointer(alice: VirtualWorker) -> None:
    x = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    x.grad = sy.send(torch.tensor([3.0, 3.0]), alice)
    assert torch.equal(remote(x).grad, torch.tensor([3.0, 3.0]))
    x.grad = None
    assert remote(x).grad is None


def test_seed_l1_loss_backward(alice: VirtualWorker) -> None:
    train = sy.send(torch.tensor([2.4, 6.2], requires_grad=True), alice)
    label = sy.send(torch.tensor([2, 6.0]), alice)
    loss = (train - label).abs().sum()
    loss.backward()
    train = train.get()
    assert train.requires_grad
    assert torch.equal(train.grad, torch.tensor([1.0, 1.0]))


def test_iteration_yields_pointers(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([[1, 2], [3, 4], [5, 6]]), alice)
    rows = list(p)
    assert len(rows) == 3
    assert all(type(r) is PointerTensor and r.location is alice for r in rows)
    assert torch.equal(rows[2].get(), torch.tensor([5, 6]))


# -- the pointer's own API -------------------------------------------------------------------------------------------
def test_to_here_leaves_the_object_at_the_worker(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    here = p.to_here()
    assert type(here) is torch.Tensor
    assert here.requires_grad
    assert torch.equal(here, torch.tensor([1.0, 2.0]))
    assert p.is_live
    assert list(alice.objects) == [p.id_at_location]
    with torch.no_grad():
        here.add_(1)
    assert torch.equal(remote(p), torch.tensor([1.0, 2.0]))


def test_copy_makes_an_independent_remote_copy(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0], requires_grad=True), alice)
    c = p.copy()
    assert type(c) is PointerTensor
    assert c.location is alice
    assert c.id_at_location != p.id_at_location
    assert c.requires_grad
    assert remote(c).is_leaf
    assert len(alice.objects) == 2
    with torch.no_grad():
        c.add_(10)
    assert torch.equal(remote(p), torch.tensor([1.0, 2.0]))
    assert torch.equal(c.get(), torch.tensor([11.0, 12.0]))


def test_deepcopy_gives_a_new_remote_copy(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0]), alice)
    c = copy.deepcopy(p)
    assert type(c) is PointerTensor
    assert c is not p
    assert c.id_at_location != p.id_at_location
    assert set(alice.objects) == {p.id_at_location, c.id_at_location}
    c.add_(1)
    assert torch.equal(p.get(), torch.tensor([1.0, 2.0]))
    assert torch.equal(c.get(), torch.tensor([2.0, 3.0]))


def test_move_hands_the_object_directly_and_the_pointer_follows(alice: VirtualWorker, bob: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0]), alice)
    old_id = p.id_at_location
    moved = p.move(bob)
    assert moved is p
    assert p.location is bob
    assert alice.objects == {}
    assert list(bob.objects) == [p.id_at_location]
    assert p.id_at_location != old_id
    assert torch.equal((p + 1).get(), torch.tensor([2.0, 3.0]))
    assert torch.equal(p.get(), torch.tensor([1.0, 2.0]))
    assert bob.objects == {}


def test_move_does_not_pass_through_me(
    alice: VirtualWorker, bob: VirtualWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = sy.send(torch.tensor([1.0]), alice)

    def no_get(*args: object) -> None:
        raise AssertionError("move() fetched the tensor through me")

    monkeypatch.setattr(PointerTensor, "get", no_get)
    p.move(bob)
    assert p.location is bob


def test_move_to_the_same_worker_or_to_me(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    obj_id = p.id_at_location
    assert p.move(alice) is p
    assert p.id_at_location == obj_id
    back = p.move(sy.me)
    assert type(back) is torch.Tensor
    assert torch.equal(back, torch.tensor([1.0]))
    assert alice.objects == {}


def test_sending_a_pointer_makes_a_chain_and_moving_moves_the_data(alice: VirtualWorker, bob: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    chain = sy.send(p, bob)  # PySyft: a pointer to a pointer; the data did not move
    assert chain is not p and chain.location is bob
    assert len(alice.objects) == 1 and type(next(iter(bob.objects.values()))) is PointerTensor
    assert chain.send(bob) is chain  # already there
    assert chain.move(alice) is chain and chain.location is alice  # move hands bob's pointer to alice
    assert bob.objects == {} and len(alice.objects) == 2


def test_delete_frees_at_once(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    p.delete()
    assert alice.objects == {}
    assert not p.is_live


def test_worker_id_of() -> None:
    w = VirtualWorker(id="w")
    p = sy.send(torch.tensor([1]), w)
    assert worker_id_of(p) == "w"
    assert worker_id_of((torch.tensor(1), [p])) == "w"
    assert worker_id_of({"x": torch.tensor(1), "y": p}) == "w"
    assert worker_id_of((torch.tensor(1), 2)) is None
    assert worker_id_of(torch.tensor(1)) is None


# -- errors ----------------------------------------------------------------------------------------------------------
def test_mixing_pointers_of_two_workers_names_both(alice: VirtualWorker, bob: VirtualWorker) -> None:
    a = sy.send(torch.ones(2), alice)
    b = sy.send(torch.ones(2), bob)
    with pytest.raises(PointerError, match=r"mixes a pointer to worker 'alice' with a pointer to worker 'bob'.*move"):
        a + b
    with pytest.raises(PointerError, match=r"torch.stack mixes a pointer to worker 'bob' with .* worker 'alice'"):
        torch.stack([b, a])
    assert len(alice.objects) == 1 and len(bob.objects) == 1


def test_mixing_a_pointer_and_a_local_tensor(alice: VirtualWorker) -> None:
    p = sy.send(torch.ones(2, 3), alice)
    fix = r"send the local tensor to the worker first, e.g. `t.send\(worker\)`"
    with pytest.raises(
        PointerError, match=rf"mixes a pointer to worker 'alice' with a local tensor of shape \(2, 3\).*{fix}"
    ):
        p + torch.ones(2, 3)
    with pytest.raises(PointerError, match=r"mixes a pointer to worker 'alice' with a local tensor of shape \(2, 3\)"):
        torch.ones(2, 3) * p
    with pytest.raises(PointerError, match=r"__setitem__ mixes a pointer to worker 'alice' with a local tensor"):
        p[0] = torch.zeros(3)
    assert list(alice.objects) == [p.id_at_location]
    assert torch.equal(remote(p), torch.ones(2, 3))


def test_get_twice(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    p.get()
    with pytest.raises(PointerError, match=r"pointer to alice:\d+ was already fetched with .get\(\).*Keep the value"):
        p.get()
    with pytest.raises(PointerError, match="already fetched"):
        p + 1
    with pytest.raises(PointerError, match="already fetched"):
        p.to_here()


def test_using_a_deleted_pointer(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    p.delete()
    with pytest.raises(PointerError, match=r"pointer to alice:\d+ was already deleted.*send the tensor again"):
        p + 1
    with pytest.raises(PointerError, match="already deleted"):
        p.get()
    with pytest.raises(PointerError, match="already deleted"):
        p.delete()
    with pytest.raises(PointerError, match="already deleted"):
        p.move(VirtualWorker(id="bob"))


@pytest.mark.parametrize("target", ["alice", 3, None, torch.device("cpu")])
def test_sending_to_something_that_is_not_a_worker(target: object) -> None:
    x = torch.tensor([1.0])
    with pytest.raises(NotAWorkerError, match=rf"send\(\) needs a worker, got {re.escape(repr(target))}"):
        sy.send(x, target)
    with pytest.raises(TypeError, match=r"create one with lightning_fed\.VirtualWorker"):
        sy.send(x, target)


def test_not_a_worker_names_the_string_in_the_fix() -> None:
    with pytest.raises(
        NotAWorkerError, match=r"got 'alice' \(str\): create one with lightning_fed.VirtualWorker\(hook, id='alice'\)"
    ):
        sy.send(torch.tensor([1.0]), "alice")


def test_move_to_something_that_is_not_a_worker(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    with pytest.raises(NotAWorkerError, match=r"move\(\) needs a worker, got 'bob'"):
        p.move("bob")
    assert p.location is alice and p.is_live


def test_send_and_get_of_unsupported_objects() -> None:
    w = VirtualWorker(id="w")
    with pytest.raises(TypeError, match=r"send\(\) takes a tensor, a pointer or an nn.Module, got list"):
        sy.send([torch.tensor(1)], w)
    with pytest.raises(TypeError, match=r"get\(\) takes a pointer or an nn.Module, got int"):
        sy.get(3)
    assert w.objects == {}


def test_op_failing_at_the_worker_leaves_the_store_unchanged(alice: VirtualWorker) -> None:
    a = sy.send(torch.ones(2, 3), alice)
    b = sy.send(torch.full((2, 3), 2.0), alice)
    wrong_shape = sy.send(torch.ones(3, 2), alice)
    before = {k: v.clone() for k, v in alice.objects.items()}
    with pytest.raises(WorkerError, match=r"worker 'alice' failed to run torch.matmul: RuntimeError: .*2x3 and 2x3"):
        torch.matmul(a, b)
    with pytest.raises(WorkerError, match=r"worker 'alice' failed to run torch.Tensor.add_: RuntimeError"):
        a.add_(wrong_shape)
    assert set(alice.objects) == set(before)
    for key, value in before.items():
        assert torch.equal(alice.objects[key], value)
    assert torch.equal((a + b).get(), torch.full((2, 3), 3.0))  # the pointers still work


@pytest.mark.parametrize(
    ("call", "command", "reason"),
    [
        (lambda p: p.item(), "torch.Tensor.item", "it would return the worker's data as a plain value"),
        (lambda p: bool(p), "torch.Tensor.__bool__", "it would return the worker's data as a plain value"),
        (lambda p: p.tolist(), "torch.Tensor.tolist", "it would return the worker's data as a plain value"),
        (lambda p: p.numpy(), "torch.Tensor.numpy", "it would return the worker's data as a plain value"),
        (lambda p: float(p), "torch.Tensor.__float__", "it would return the worker's data as a plain value"),
        (lambda p: 1.0 in p, "torch.Tensor.__contains__", "it would return the worker's data as a plain value"),
        (lambda p: p.register_hook(lambda g: g), "torch.Tensor.register_hook", "it takes a Python callable"),
    ],
)
def test_refused_commands_say_why(alice: VirtualWorker, call: object, command: str, reason: str) -> None:
    p = sy.send(torch.tensor([1.5], requires_grad=True), alice)
    with pytest.raises(
        PointerError, match=rf"{re.escape(command)} on a pointer to worker 'alice' is refused: {reason}"
    ):
        call(p)
    assert list(alice.objects) == [p.id_at_location]


def test_refusal_of_item_names_the_fix(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor(1.5), alice)
    with pytest.raises(PointerError, match=r"call \.get\(\) on the pointer first"):
        p.item()
    assert p.get().item() == 1.5


def test_pickling_a_pointer_is_refused(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    with pytest.raises(PointerError, match=r"a pointer to worker 'alice' cannot be pickled.*Call .get\(\) first"):
        pickle.dumps(p)
    with pytest.raises(PointerError, match="cannot be pickled"):
        torch.save(p, io.BytesIO())
    assert p.is_live


@pytest.mark.parametrize("args", [(), (torch.tensor([1.0]),), ([1, 2],)])
def test_constructing_a_pointer_directly_is_refused(args: tuple) -> None:
    with pytest.raises(PointerError, match=r"PointerTensor is not built directly: use `tensor.send\(worker\)`"):
        PointerTensor(*args)


def test_new_factories_run_at_the_worker(alice: VirtualWorker) -> None:
    p = sy.send(torch.zeros(2, dtype=torch.float64), alice)
    ones = p.new_ones(3)
    assert type(ones) is PointerTensor
    assert torch.equal(ones.get(), torch.ones(3, dtype=torch.float64))


# -- memory ----------------------------------------------------------------------------------------------------------
def test_dropping_the_last_pointer_frees_the_remote_object(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0]), alice)
    q = sy.send(torch.tensor([2.0]), alice)
    alias = p
    assert len(alice.objects) == 2
    del p
    assert len(alice.objects) == 2  # `alias` still points to it
    del alias
    assert list(alice.objects) == [q.id_at_location]


def test_intermediate_results_do_not_accumulate(alice: VirtualWorker) -> None:
    a, b, c = (sy.send(torch.ones(3), alice) for _ in range(3))
    d = (a + b) * c
    assert set(alice.objects) == {a.id_at_location, b.id_at_location, c.id_at_location, d.id_at_location}
    e = ((a + b) * c - a).sum() / 2
    assert len(alice.objects) == 5
    del d, e
    assert len(alice.objects) == 3


def test_get_removes_the_object(alice: VirtualWorker) -> None:
    a = sy.send(torch.ones(3), alice)
    b = a + 1
    assert len(alice.objects) == 2
    b.get()
    assert list(alice.objects) == [a.id_at_location]
    del b
    assert list(alice.objects) == [a.id_at_location]


def test_send_op_get_loop_keeps_the_store_empty(alice: VirtualWorker) -> None:
    for i in range(200):
        x = sy.send(torch.full((4,), float(i), requires_grad=True), alice)
        y = (x * 2 + 1).sum()
        y.backward()
        g = x.grad
        assert len(alice.objects) == 3  # x, y, g: the intermediates are gone
        assert torch.equal(g.get(), torch.full((4,), 2.0))
        assert y.get().item() == 8.0 * i + 4.0
        del x, y, g
        assert len(alice.objects) == 0, i


def test_pointer_outliving_its_worker_does_not_raise() -> None:
    w = VirtualWorker(id="w")
    p = sy.send(torch.tensor([1.0]), w)
    w.clear_objects()
    del p  # __del__ sends a delete for an id the worker no longer has: ignored


# -- GPU -------------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_at_the_worker(alice: VirtualWorker) -> None:
    p = sy.send(torch.tensor([1.0, 2.0]), alice)
    for g in (p.cuda(), p.to("cuda")):
        assert type(g) is PointerTensor
        assert g.location is alice
        assert g.device.type == "cuda"
        assert remote(g).device.type == "cuda"
    assert remote(p).device.type == "cpu"
    g = p.cuda()
    out = (g * 2).cpu()
    assert out.device.type == "cpu"
    assert torch.equal(out.get(), torch.tensor([2.0, 4.0]))
    assert g.get().device.type == "cuda"


# -- metadata answered by the pointer ----------------------------------------------------------------------------------
def _messages_to(worker: VirtualWorker) -> list[object]:
    """Every message ``worker`` receives from now on (shadowing ``_recv`` on the instance)."""
    seen: list[object] = []
    original = worker._recv

    def recording(message: object) -> object:
        seen.append(message)
        return original(message)

    worker._recv = recording
    return seen


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (lambda ptr: ptr, torch.strided),
        (lambda ptr: ptr.to_sparse(), torch.sparse_coo),  # made at the worker: the layout comes in its descriptor
        (lambda ptr: ptr.to_sparse(layout=torch.sparse_csr), torch.sparse_csr),
        (lambda ptr: ptr.to_sparse().to_dense(), torch.strided),
    ],
)
def test_layout_reads_are_answered_without_a_message(alice: VirtualWorker, make, layout) -> None:
    ptr = make(sy.send(torch.eye(3), alice))
    seen = _messages_to(alice)
    assert (ptr.layout, ptr.is_sparse, ptr.is_sparse_csr) == (layout, layout is torch.sparse_coo,
                                                              layout is torch.sparse_csr)  # fmt: skip
    assert seen == []
    assert remote(ptr).layout is layout  # what the worker holds


def test_a_sent_sparse_tensor_and_a_chain_keep_their_layout(alice: VirtualWorker, bob: VirtualWorker) -> None:
    ptr = sy.send(torch.eye(2).to_sparse(), bob)
    chained = ptr.send(alice)
    with pytest.raises(PointerError, match="was sent to worker 'alice'"):  # only the chain speaks for it now
        ptr.is_sparse
    assert chained.is_sparse and chained.layout is torch.sparse_coo
    assert torch.equal(chained.get().get().to_dense(), torch.eye(2))


def test_a_fetched_pointer_answers_no_layout(alice: VirtualWorker) -> None:
    ptr = sy.send(torch.eye(2), alice)
    ptr.get()
    with pytest.raises(PointerError, match=r"already fetched with \.get\(\)"):
        ptr.is_sparse
    with pytest.raises(PointerError, match=r"already fetched with \.get\(\)"):
        ptr.layout


def test_calls_torch_makes_without_asking_pointers_say_what_to_do(alice: VirtualWorker) -> None:
    target, source = sy.send(torch.zeros(3), alice), sy.send(torch.ones(3), alice)
    with pytest.raises(PointerError, match=r"aten.set_.* cannot run on a pointer: torch called it without offering"):
        target.set_(source)
    with pytest.raises(PointerError, match=r"sparse_coo_tensor.* cannot run on a pointer: .*\.get\(\) the tensors"):
        torch.sparse_coo_tensor(sy.send(torch.tensor([[0, 1]]), alice), source[:2], (3,))
    assert target.get().tolist() == [0.0, 0.0, 0.0]  # nothing ran

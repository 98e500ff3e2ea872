"""Labels follow memory (privacy/labels.py), and the allowlisted commands fuzzed against the policy (privacy/shapes.py)."""

from __future__ import annotations

import gc
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lightning_fed.exceptions import PermissionDeniedError
from lightning_fed.privacy.labels import MODEL, PRIVATE, StorageLabels, label_names
from lightning_fed.privacy.shapes import integer_arguments, plain_value_reason, shape_reason, short_name
from lightning_fed.workers import VirtualWorker, me
from lightning_fed.workers.commands import allowlist, resolve_command
from lightning_fed.workers.messages import CommandMessage, GetMessage, ObjectMessage, ObjectRef


# -- StorageLabels ------------------------------------------------------------------------------------------------------
def test_every_view_of_a_storage_shares_its_labels() -> None:
    labels = StorageLabels()
    x = torch.zeros(4, 3)
    labels.add(1, x[1:3, 0], PRIVATE)
    for alias in (x, x.view(12), x.detach(), x.data, x.t(), x.as_strided((2,), (1,)), x.expand(2, 4, 3), x[0]):
        assert labels.of(None, alias) == PRIVATE
    labels.add(2, x.T, MODEL)
    assert labels.of(None, x) == PRIVATE | MODEL and label_names(labels.of(None, x)) == "private+model"
    assert labels.of(None, torch.zeros(4, 3)) == 0 and label_names(0) == "public"


def test_labels_die_with_their_memory_and_never_pass_to_a_reused_id() -> None:
    labels = StorageLabels()
    x = torch.zeros(3)
    labels.add(1, x, PRIVATE)
    alias = x[1:]
    del x
    gc.collect()
    assert len(labels) == 1 and labels.of(None, alias) == PRIVATE  # the view keeps the memory alive
    del alias
    gc.collect()
    assert len(labels) == 0
    for _ in range(50):  # fresh storages (possibly at reused addresses and ids) are unlabelled
        assert labels.of(None, torch.zeros(3)) == 0


def test_objects_without_memory_are_labelled_by_id() -> None:
    labels = StorageLabels()
    shard = torch.utils.data.TensorDataset(torch.zeros(2))
    labels.add(7, shard, PRIVATE)
    assert labels.of(7, shard) == PRIVATE and labels.of(8, shard) == 0
    labels.forget_id(7)
    assert labels.of(7, shard) == 0


def test_short_names_and_rules() -> None:
    assert short_name("torch.Tensor.grad.__get__") == "grad" and short_name("torch.Tensor.add#2") == "add"
    always = lambda t: True  # noqa: E731
    never = lambda t: False  # noqa: E731
    x, mask = torch.ones(2), torch.tensor([True, False])
    assert shape_reason("torch.Tensor.__getitem__", (x, mask), {}, always) is not None
    assert shape_reason("torch.Tensor.__getitem__", (x, mask), {}, never) is None  # a public mask: a public shape
    assert shape_reason("torch.Tensor.__getitem__", (x, torch.tensor([0, 1])), {}, always) is None  # fixed shape
    assert shape_reason("torch.where", (mask,), {}, always) is not None
    assert shape_reason("torch.where", (mask, x, x), {}, always) is None
    assert plain_value_reason("torch.Tensor.dim", 1) is None
    assert plain_value_reason("torch.Tensor.foo", 1.5) == (
        "it returns a plain float computed from them, not a tensor that stays there"
    )


# -- fuzz: every allowlisted command that runs on one tensor --------------------------------------------------------
INPUTS = {
    "float": (torch.zeros(2, 3), torch.tensor([[3.0, 1.0, 4.0], [0.5, 2.0, 6.0]])),
    "int": (torch.zeros(2, 3, dtype=torch.long), torch.tensor([[3, 1, 4], [5, 2, 6]])),
    "bool": (torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)),
    "int1d": (torch.zeros(6, dtype=torch.long), torch.tensor([3, 1, 4, 1, 5, 9])),
}
SKIP = ("__set__", "__setstate__", "set_", "resize_", "share_memory_")


def _signature(result: Any) -> Any:
    """What a caller learns besides tensor values: shapes, and plain values."""
    if isinstance(result, torch.Tensor):
        return ("tensor", tuple(result.shape))
    if isinstance(result, (tuple, list)):
        return tuple(_signature(item) for item in result)
    return ("value", repr(result)[:60])


def _fuzzed_commands() -> Iterator[tuple[str, Any]]:
    """Every allowlisted command but the setters and the like (``SKIP``), with its function; torch's warnings are
    silenced while the caller runs them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(allowlist()):
            if not any(part in name for part in SKIP):
                yield name, resolve_command(name)


def _value_dependent(call: Any) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
    """Commands whose shape (first list) or plain value (second) differ between two inputs of one shape."""
    shapes, values = [], []
    for name, func in _fuzzed_commands():
        for kind, (a, b) in INPUTS.items():
            try:
                first, second = _signature(call(func, a.clone())), _signature(call(func, b.clone()))
            except Exception:  # does not run on these arguments: not this fuzz's concern
                continue
            if first != second:
                (values if "'value'" in str(first) else shapes).append((name, kind, call))
                break
    return shapes, values


def _private_worker() -> VirtualWorker:
    return VirtualWorker(id="fuzzed")


def _put_private(worker: VirtualWorker, obj_id: int, tensor: torch.Tensor) -> ObjectRef:
    me._send(ObjectMessage(obj_id, tensor, PRIVATE), worker)
    return ObjectRef(obj_id)


def test_fuzz_one_tensor_commands_whose_result_shape_or_value_depends_on_values_are_refused() -> None:
    shapes, values = _value_dependent(lambda func, t: func(t))
    found = {name for name, _, _ in shapes}
    assert {
        "torch.Tensor.nonzero",
        "torch.functional.unique",
        "torch.where",
        "torch.Tensor.unique_consecutive",
    } <= found
    worker = _private_worker()
    for name, kind, _ in shapes + values:
        ref = _put_private(worker, 1, INPUTS[kind][1].clone())
        with pytest.raises(PermissionDeniedError, match=rf"refuses to run {name} on private inputs"):
            me._send(CommandMessage(name, (ref,)), worker)
    assert len(worker.audit_log.refused) == len(shapes) + len(values) and len(worker.audit_log) == 0


def test_fuzz_commands_taking_a_private_number_as_a_size_or_dim_are_refused() -> None:
    base = torch.arange(24.0).reshape(2, 3, 4)
    sized, _ = _value_dependent(lambda func, t: func(base.clone(), t.flatten()[0]))
    assert {"torch.Tensor.sum", "torch.Tensor.unsqueeze", "torch.Tensor.new_zeros", "torch.topk"} <= {
        n for n, *_ in sized
    }
    worker = _private_worker()
    me._send(ObjectMessage(2, base.clone()), worker)  # the owner's tensor: public
    for name, kind, _ in sized:
        ref = _put_private(worker, 1, INPUTS[kind][1].flatten()[0].clone())
        with pytest.raises(PermissionDeniedError, match=rf"refuses to run {name} on private inputs"):
            me._send(CommandMessage(name, (ObjectRef(2), ref)), worker)


def test_a_command_on_public_inputs_is_not_checked() -> None:
    worker = _private_worker()
    me._send(ObjectMessage(1, torch.tensor([0.0, 2.0, 0.0])), worker)
    desc = me._send(CommandMessage("torch.Tensor.nonzero", (ObjectRef(1),)), worker)
    assert desc.shape == (1, 1) and worker.audit_log.refused == []


# -- fuzz: a private number anywhere a command takes an integer ----------------------------------------------------
SIZE_SLOTS = {  # where a command may take a size, a dim or a count: within a tuple, or after another argument
    "the second argument": lambda base, n: (base, n),
    "a one-tuple": lambda base, n: (base, (n,)),
    "a tuple's second item": lambda base, n: (base, (1, n)),
    "the third argument": lambda base, n: (base, 1, n),
    "the third argument, in a tuple": lambda base, n: (base, 1, (n,)),
}


BASES = {"3-d": torch.arange(24.0).reshape(2, 3, 4), "one element": torch.ones(1), "4 channels": torch.ones(1, 4, 2, 2)}


def _shape_dependent_slots() -> list[tuple[str, str, str]]:
    """(command, base, slot) whose result shape differs between a number 1 and 2 in that slot."""
    found = []
    for name, func in _fuzzed_commands():
        for (base_name, base), (slot, make) in itertools.product(BASES.items(), SIZE_SLOTS.items()):
            try:
                first = _signature(func(*make(base.clone(), torch.tensor(1))))
                second = _signature(func(*make(base.clone(), torch.tensor(2))))
            except Exception:  # does not run with these arguments
                continue
            if first != second:
                found.append((name, base_name, slot))
    return found


def test_fuzz_a_private_number_in_any_size_slot_is_refused() -> None:
    found = _shape_dependent_slots()
    names = {name for name, *_ in found}
    assert {"torch.broadcast_to", "torch.Tensor.sum_to_size", "torch.Tensor.expand", "torch.pixel_shuffle"} <= names
    worker = _private_worker()
    for index, base in enumerate(BASES.values(), start=2):
        me._send(ObjectMessage(index, base.clone()), worker)  # the owner's tensors: public
    for name, base_name, slot in found:
        ref = _put_private(worker, 1, torch.tensor(1))
        args = SIZE_SLOTS[slot](ObjectRef(2 + list(BASES).index(base_name)), ref)
        with pytest.raises(PermissionDeniedError, match=rf"refuses to run {name} on private inputs"):
            me._send(CommandMessage(name, args), worker)


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("torch.broadcast_to", ("public", ("private",)), {}),
        ("torch.Tensor.broadcast_to", ("public", ("private",)), {}),
        ("torch.pixel_shuffle", ("public4d", "private"), {}),
        ("torch.conv1d", ("public3d", "weight", None, "private"), {}),
        ("torch.conv1d", ("public3d", "weight"), {"stride": "private"}),
        ("torch.conv1d", ("public3d", "weight"), {"padding": ("private",)}),
        ("torch.conv1d", ("public3d", "weight"), {"dilation": "private"}),
        ("torch.nn.functional.interpolate", ("public3d",), {"scale_factor": "private_float"}),
        ("torch.nn.functional.max_pool1d", ("public3d", "private"), {}),
        ("torch.nn.functional.fractional_max_pool2d", ("public4d", 2), {"output_ratio": "private_float"}),
    ],
)
def test_a_private_number_as_a_size_stride_or_scale_is_refused(name: str, args: tuple, kwargs: dict) -> None:
    values = {
        "public": torch.ones(3),
        "public3d": torch.ones(1, 1, 12),
        "public4d": torch.ones(1, 4, 2, 2),
        "weight": torch.ones(1, 1, 3),
        "private": torch.tensor(2),
        "private_float": torch.tensor(0.5),
    }
    worker = _private_worker()
    refs: dict[str, ObjectRef] = {}
    for index, (key, value) in enumerate(values.items(), start=1):
        if key.startswith("private"):
            refs[key] = _put_private(worker, index, value)
        else:
            me._send(ObjectMessage(index, value), worker)
            refs[key] = ObjectRef(index)

    def swap(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(swap(item) for item in value)
        return refs[value] if isinstance(value, str) else value

    message = CommandMessage(name, swap(args), {key: swap(value) for key, value in kwargs.items()})
    with pytest.raises(PermissionDeniedError, match=rf"refuses to run {name} on private inputs: a private number"):
        me._send(message, worker)
    assert worker.audit_log.refused[-1].kind == "shape"


def test_every_allowlisted_command_has_its_integer_arguments_found() -> None:
    found = {name: integer_arguments(name) for name in sorted(allowlist())}  # (Tensor.pow: a wrapper, no signature)
    assert found["torch.Tensor.pow"][0] == frozenset() and found["torch.broadcast_to"][0] == frozenset({1})


def test_private_tensors_where_a_command_takes_tensors_still_run() -> None:
    worker = _private_worker()
    x = _put_private(worker, 1, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    y = _put_private(worker, 2, torch.tensor([1, 0]))
    me._send(ObjectMessage(3, torch.ones(2, 2, dtype=torch.float64)), worker)
    checks = [
        CommandMessage("torch.Tensor.to", (ObjectRef(3), x)),  # dtype and device of a private tensor: metadata
        CommandMessage("torch.add", (x, ObjectRef(3))),
        CommandMessage("torch.nn.functional.cross_entropy", (x, y)),
        CommandMessage("torch.index_select", (x, 0, y)),
        CommandMessage("torch.nn.functional.embedding", (y, x)),
        CommandMessage("torch.Tensor.view", (x, 4)),  # a public size
    ]
    for message in checks:
        me._send(message, worker)
    assert worker.audit_log.refused == []


# -- tensors without a storage (sparse, MKL-DNN) --------------------------------------------------------------------
def test_tensors_without_storage_carry_labels_as_objects_while_they_live() -> None:
    labels = StorageLabels()
    sparse = torch.ones(2, 2).to_sparse()
    labels.add_tensor(sparse, PRIVATE)
    assert labels.of_tensor(sparse) == PRIVATE and labels.of(None, sparse) == PRIVATE
    assert labels.of_tensor(torch.ones(2, 2).to_sparse()) == 0  # another tensor: its own labels
    del sparse
    gc.collect()
    assert len(labels) == 0


@pytest.mark.parametrize(
    "steps",
    [
        [("torch.Tensor.to_mkldnn", ())],
        [("torch.Tensor.to_mkldnn", ()), ("torch.Tensor.to_dense", ())],
        [("torch.Tensor.sparse_mask", ("mask",))],
        [("torch.Tensor.sparse_mask", ("mask",)), ("torch.Tensor.to_dense", ())],
    ],
    ids=["to_mkldnn", "to_mkldnn-to_dense", "sparse_mask", "sparse_mask-to_dense"],
)
def test_what_is_computed_from_data_through_a_tensor_without_storage_stays(steps: list) -> None:
    worker = _private_worker()
    data = torch.tensor([[0.25, -1.5], [3.0, 0.5]])
    current = _put_private(worker, 1, data.clone())
    me._send(ObjectMessage(2, torch.ones(2, 2).to_sparse()), worker)  # the owner's mask: public
    for name, extra in steps:
        args = (current, *(ObjectRef(2) for _ in extra))
        current = ObjectRef(me._send(CommandMessage(name, args), worker).obj_id)
    with pytest.raises(PermissionDeniedError, match=r"refuses to release object \d+ \(data, shape \(2, 2\)\)"):
        me._send(GetMessage(current.obj_id), worker)
    assert [r.kind for r in worker.audit_log.refused] == ["data"] and len(worker.audit_log) == 0


def test_private_values_written_into_a_public_sparse_tensor_label_it() -> None:
    worker = _private_worker()
    me._send(ObjectMessage(1, torch.zeros(2, 2).to_sparse()), worker)  # public
    private = _put_private(worker, 2, torch.tensor([[1.0, 0.0], [0.0, 2.0]]).to_sparse())
    me._send(CommandMessage("torch.Tensor.add_", (ObjectRef(1), private)), worker)
    with pytest.raises(PermissionDeniedError, match="refuses to release"):
        me._send(GetMessage(1), worker)

"""The wire format: every message kind round-trips, anything else is refused by name, nothing is unpickled."""

from __future__ import annotations

import io
import json
import math
import pathlib

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fed.exceptions import (
    CheckpointMismatchError,
    FederatedConfigError,
    PermissionDeniedError,
    PointerError,
    WorkerError,
)
from lightning_fed.transport.errors import WireError
from lightning_fed.transport.values import ValueDecoder, ValueEncoder
from lightning_fed.transport.wire import (
    MAGIC,
    PREFIX,
    SiteQuery,
    chunks,
    decode_answer,
    decode_request,
    encode_answer,
    encode_error,
    encode_request,
    frame,
)
from lightning_fed.workers.messages import (
    CommandMessage,
    DatasetMessage,
    DeleteMessage,
    GetMessage,
    MoveMessage,
    ObjectMessage,
    ObjectRef,
    PlanMessage,
    SearchMessage,
    SearchResult,
    TensorDescriptor,
)


def _same(a, b) -> bool:
    """Equal values, tensors compared by value, dtype, requires_grad and kind; NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        return (type(a) is type(b) and a.dtype == b.dtype and a.requires_grad == b.requires_grad
                and torch.equal(a.detach(), b.detach()))  # fmt: skip
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


ARGS = (ObjectRef(5), 1, -2.5, float("nan"), float("inf"), 1 + 2j, "s", None, True, Ellipsis, slice(1, None, -1),
        torch.float16, torch.Size([2, 3]), torch.device("cpu"), torch.strided, torch.channels_last, b"\x00\xff",
        [1, (2, [3])], {"a": 1, 2: "b", (1, 2): None}, torch.arange(3))  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        CommandMessage("torch.Tensor.add_", ARGS, {"alpha": 2, "out": ObjectRef(9)}, grad_enabled=False),
        GetMessage(12, keep=True),
        GetMessage(13),
        DeleteMessage(14),
        SearchMessage(("mnist-train", "#data")),
        DatasetMessage(15, (1, 2)),
        SiteQuery("hello"),
        SiteQuery("audit"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_messages_round_trip(message):
    back, deletes = decode_request(encode_request(message, deletes=(3, 4)))
    assert type(back) is type(message) and deletes == (3, 4)
    for name in message.__slots__:
        assert _same(getattr(message, name), getattr(back, name)), name


def test_a_command_carries_the_senders_autograd_mode():
    message = CommandMessage("torch.Tensor.add_", (ObjectRef(1), 1.0))  # in process: the thread's mode
    with torch.no_grad():
        assert decode_request(encode_request(message))[0].grad_enabled is False  # optimizer.step() at the site
    assert decode_request(encode_request(message))[0].grad_enabled is True


def test_an_object_message_keeps_what_travels_with_a_tensor():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    x.grad, x.tags, x.description = torch.tensor([0.1, 0.2]), {"#a", "#b"}, "two numbers"
    back, _ = decode_request(encode_request(ObjectMessage(7, x, labels=1)))
    assert (back.obj_id, back.labels) == (7, 1)
    assert _same(back.obj, x) and torch.equal(back.obj.grad, x.grad)
    assert back.obj.tags == {"#a", "#b"} and back.obj.description == "two numbers"
    param = nn.Parameter(torch.ones(2, 2))
    back, _ = decode_request(encode_request(ObjectMessage(8, param)))
    assert type(back.obj) is nn.Parameter and back.obj.requires_grad


def test_answers_round_trip():
    desc = TensorDescriptor(3, torch.Size([2]), torch.int64, torch.device("cpu"), False)
    result = torch.max(torch.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1)
    answer = (desc, SearchResult(desc, frozenset({"#x"}), None), ObjectRef(4), result, None, [torch.zeros(1)])
    back = decode_answer(encode_answer(answer))
    assert back[:3] == answer[:3] and back[4] is None
    assert type(back[3]) is type(result) and torch.equal(back[3].indices, result.indices)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (lambda: 0, "function"),
        (object(), "object"),
        (TensorDataset(torch.zeros(2)), "TensorDataset"),
        (torch.Generator(), "Generator"),
        ({1, 2}, "set"),
        (torch.zeros(2).to_sparse(), "layout torch.sparse_coo"),
        (nn.Linear(1, 1), "Linear"),
    ],
)
def test_anything_else_is_refused_by_name(value, name):
    with pytest.raises(WireError, match=rf"a CommandMessage \(torch.add\) cannot carry a .*{name}"):
        encode_request(CommandMessage("torch.add", (ObjectRef(1), value)))


def test_moves_and_plans_do_not_cross_the_wire():
    with pytest.raises(WireError, match=r"MoveMessage \(object 1\) cannot be sent to a site: sites do not connect"):
        encode_request(MoveMessage(1, object(), 2))
    with pytest.raises(
        WireError, match=r"PlanMessage \(step\) .* no code crosses the wire; a site trains whole FedAvg rounds instead"
    ):
        encode_request(PlanMessage("step", ()))
    with pytest.raises(WireError, match=r"only tensors are sent to a site .*federate\(\) over remote workers"):
        encode_request(ObjectMessage(1, TensorDataset(torch.zeros(2))))


class _Evil:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _raw_frame(header: dict, block: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, len(head), len(block)) + head + block


def test_nothing_is_unpickled_from_the_network(tmp_path):
    witness = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save([_Evil(witness)], buffer)
    data = _raw_frame({"kind": "get", "id": 1, "keep": False, "deletes": []}, buffer.getvalue())
    with pytest.raises(WireError, match="its tensor block cannot be read safely"):
        decode_request(data)
    assert not witness.exists()
    buffer = io.BytesIO()
    torch.save({"not": "a list"}, buffer)
    with pytest.raises(WireError, match="its tensor block is not a list of tensors"):
        decode_answer(_raw_frame({"answer": None}, buffer.getvalue()))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"PK\x03\x04" + bytes(20), r"starts with b'PK\\x03\\x04', not b'LFW1'"),
        (b"LFW1", "shorter than its 16-byte prefix"),
        (_raw_frame({"kind": "get", "id": 1})[:-3], "declares .* bytes but holds"),
        (PREFIX.pack(MAGIC, 3, 0) + b"{x}", "its header is not JSON"),
        (_raw_frame({"kind": "exec", "deletes": []}), "unknown message kind"),
        (_raw_frame({"kind": "get", "id": "1", "keep": False, "deletes": []}), "id must be int"),
        (
            _raw_frame(
                {
                    "kind": "command",
                    "command": "torch.add",
                    "args": {"tuple": [{"tensor": 0}]},
                    "kwargs": {"dict": []},
                    "deletes": [],
                }
            ),
            "tensor index 0 is out of range",
        ),
        (
            _raw_frame(
                {
                    "kind": "command",
                    "command": "torch.add",
                    "args": {"tuple": [{"dtype": "os.system"}]},
                    "kwargs": {"dict": []},
                    "deletes": [],
                }
            ),
            "'os.system' is not a torch dtype",
        ),
        (_raw_frame({"kind": "search", "query": ["a", 1], "deletes": []}), "a search query is a list of strings"),
        (
            _raw_frame(
                {
                    "kind": "command",
                    "command": "torch.neg",
                    "args": {"tuple": []},
                    "kwargs": {"dict": []},
                    "deletes": [],
                }
            ),
            "grad must be bool",
        ),
    ],
)
def test_malformed_requests_are_refused(data, match):
    with pytest.raises(WireError, match=match):
        decode_request(data)


def test_the_size_limit_is_checked_on_both_ends():
    message = ObjectMessage(1, torch.zeros(1000))
    with pytest.raises(WireError, match=r"is \d+ bytes .*over the message limit of 1000 bytes"):
        encode_request(message, max_bytes=1000)
    data = encode_request(message)
    with pytest.raises(WireError, match=r"a request is \d+ bytes .*over the message limit of 2000 bytes"):
        decode_request(data, max_bytes=2000)
    assert b"".join(chunks(data, 1000)) == data and len(list(chunks(data, 1000))) == -(-len(data) // 1000)
    assert list(chunks(b"")) == [b""]


def test_a_view_sends_its_own_values_only():
    big = torch.arange(100_000.0)
    small = len(encode_answer(big[10:12]))
    assert small < 2_000 < len(encode_answer(big))  # not the 400 kB storage the view lives in
    assert torch.equal(decode_answer(encode_answer(big[10:20:3])), big[10:20:3])


@pytest.mark.parametrize("part", [slice(None), slice(1, 3)])
def test_a_channels_last_tensor_keeps_its_memory_format_across_the_wire(part):
    batch = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)[part]  # the whole, and a view
    back = decode_answer(encode_answer(batch))
    assert torch.equal(back, batch) and back.is_contiguous(memory_format=torch.channels_last)
    assert back.stride() == batch.stride() and back.untyped_storage().nbytes() == batch.numel() * 4
    volume = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    assert decode_answer(encode_answer(volume)).is_contiguous(memory_format=torch.channels_last_3d)
    odd = batch[:, :2]  # a view that is dense in no format: sent as its values, densely
    assert torch.equal(decode_answer(encode_answer(odd)), odd)


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (PermissionDeniedError("no"), PermissionDeniedError, "no"),
        (PointerError("gone"), PointerError, "gone"),
        (CheckpointMismatchError("other"), FederatedConfigError, "other"),
        (WorkerError("failed"), WorkerError, "failed"),
        (ValueError("bad"), WorkerError, "ValueError: bad"),
    ],
)
def test_errors_come_back_as_their_types(error, kind, message):
    with pytest.raises(kind, match=message) as caught:
        decode_answer(encode_error(error))
    assert type(caught.value) is kind


def test_a_malformed_error_is_a_worker_error():
    data = frame({"error": {"type": ["list"], "message": "m"}}, [], 1000, "x")
    with pytest.raises(WorkerError, match=r"^m$"):
        decode_answer(data)


def test_values_nest_within_a_bound():
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(WireError, match="nests values more than 64 levels deep"):
        ValueEncoder("a test").value(deep)
    with pytest.raises(WireError, match="malformed: values nest more than 64 levels"):
        ValueDecoder([], "a test").value(json.loads("[" * 100 + "]" * 100))


def test_a_descriptor_carries_the_layout_and_an_older_peers_means_dense():
    desc = TensorDescriptor(3, torch.Size([2, 2]), torch.float32, torch.device("cpu"), False, torch.sparse_coo)
    assert decode_answer(encode_answer(desc)) == desc
    body = ValueEncoder("a test").value(desc)["desc"]
    assert body["layout"] == "sparse_coo"
    del body["layout"]  # what a peer from before layouts were sent writes
    assert ValueDecoder([], "a test").value({"desc": body}).layout is torch.strided
    for bad in ("sparse_cube", ["strided"]):
        with pytest.raises(WireError, match=r"a test is malformed: .* is not a torch layout"):
            ValueDecoder([], "a test").value({"desc": {**body, "layout": bad}})

"""Worker messages as bytes: a typed JSON header and a tensor block, never a pickle of an arbitrary object.

A frame is ``b"LFW1"``, the header's length (4 bytes) and the tensor block's length (8 bytes, big-endian), then the
header (UTF-8 JSON: the message's kind, ids, command name and argument tree, see :mod:`.values`) and the tensor
block (``torch.save`` of a list of plain tensors, read back with ``torch.load(weights_only=True)``; empty when the
message holds no tensor). A frame larger than the limit (64 MiB by default) is refused by whoever would send or
receive it, with an error naming both sizes; the transport carries frames in 1 MiB chunks (:func:`chunks`).

Requests are the worker messages of :mod:`lightning_fed.workers.messages` that a remote worker answers (object,
get, delete, command, search, dataset), :class:`SiteQuery`, a round's
:class:`~lightning_fed.transport.training.TrainRequest` and the secure-aggregation requests of
:mod:`lightning_fed.transport.secagg` (public keys, encrypted shares, unmasking shares: bytes). A request also
carries the ids of the objects whose pointers were dropped since the last request (deletes are batched: dropping a
pointer costs no round trip), and the largest answer its sender accepts (``answer_limit``: the site refuses a larger
answer itself, before a ``.get()`` lets go of the object).
``MoveMessage`` (sites do not connect to one another) and ``PlanMessage`` (no code crosses the wire) are refused.
An answer is a value, or an error that is raised again on the receiving side as the same exception type.

Example:
    >>> import torch
    >>> from lightning_fed.workers.messages import CommandMessage, ObjectRef
    >>> data = encode_request(CommandMessage("torch.add", (ObjectRef(1), torch.ones(2))), deletes=(7,))
    >>> data[:4], len(data) < 2000
    (b'LFW1', True)
    >>> message, deletes = decode_request(data)
    >>> message.command, message.args, message.grad_enabled, deletes  # the sender's autograd mode travels
    ('torch.add', (ObjectRef(obj_id=1), tensor([1., 1.])), True, (7,))
    >>> decode_answer(encode_error(PermissionError("no")))
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.WorkerError: PermissionError: no
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_fed.exceptions import (
    FederatedConfigError,
    LightningFedError,
    NotAWorkerError,
    PermissionDeniedError,
    PointerError,
    SealedStateError,
    WorkerError,
)
from lightning_fed.secure_aggregation.config import SecureAggregationError
from lightning_fed.transport.errors import SiteRefusedError, SiteUnavailableError, WireError
from lightning_fed.transport.secagg import SecAggInput, SecAggKeys, SecAggShares, SecAggUnmask
from lightning_fed.transport.training import TrainRequest
from lightning_fed.transport.values import ValueDecoder, ValueEncoder, type_name
from lightning_fed.workers.messages import (
    CommandMessage,
    DatasetMessage,
    DeleteMessage,
    GetMessage,
    MoveMessage,
    ObjectMessage,
    PlanMessage,
    SearchMessage,
)

MAGIC = b"LFW1"
PREFIX = struct.Struct(">4sIQ")
MIB = 2**20
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
CHUNK_BYTES = MIB
_ERRORS: dict[str, type[Exception]] = {kind.__name__: kind for kind in (
    WorkerError, PermissionDeniedError, PointerError, FederatedConfigError, NotAWorkerError, SealedStateError,
    WireError, SiteUnavailableError, SiteRefusedError, SecureAggregationError)}  # fmt: skip
_QUERIES = ("hello", "audit")
_SECAGG: dict[type, str] = {SecAggKeys: "secagg-keys", SecAggShares: "secagg-shares", SecAggUnmask: "secagg-unmask"}
_SECAGG_KINDS = tuple(_SECAGG.values())


@dataclass(frozen=True, slots=True)
class SiteQuery:
    """A question about the site itself: ``"hello"`` (its id, policy, datasets and limits) or ``"audit"`` (its
    audit log). Not a worker message: the site's server answers it."""

    what: str


def describe(message: Any) -> str:
    """How errors name a message: ``"a CommandMessage (torch.add)"``, ``"a GetMessage (object 12)"``."""
    detail = getattr(message, "command", None) or getattr(message, "plan", None) or getattr(message, "what", None)
    if detail is None and hasattr(message, "obj_id"):
        detail = f"object {message.obj_id}"
    name = type(message).__name__
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}" + (f" ({detail})" if detail is not None else "")


def check_size(size: int, max_bytes: int, what: str) -> None:
    """Raise :class:`WireError` when ``size`` bytes exceed ``max_bytes``."""
    if size > max_bytes:
        raise WireError(
            f"{what} is {size} bytes ({size / MIB:.1f} MiB), over the message limit of {max_bytes} bytes "
            f"({max_bytes / MIB:.1f} MiB): raise the limit on both sides (RemoteWorker(max_message_mb=...) and the "
            "site's --max-message-mb), or send the tensors in smaller pieces."
        )


def declared_size(prefix: bytes) -> int:
    """The total size a frame declares in its first 16 bytes (to refuse an oversized frame before reading it)."""
    if len(prefix) < PREFIX.size:
        raise WireError(f"a frame is malformed: it is {len(prefix)} bytes, shorter than its {PREFIX.size}-byte prefix.")
    magic, header_len, block_len = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise WireError(f"a frame is malformed: it starts with {magic!r}, not {MAGIC!r} (not a lightning_fed peer?).")
    return PREFIX.size + header_len + block_len


def chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (at least one piece)."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), size):
        yield bytes(view[start : start + size])


def join_chunks(pieces: Iterable[bytes], max_bytes: int, what: str) -> bytes:
    """The chunks of one frame joined, refused with :class:`WireError` before a chunk would take it past the size its
    prefix declares or past ``max_bytes`` (also while the prefix is still incomplete): never more is buffered."""
    buffer = bytearray()
    size: int | None = None
    for piece in pieces:
        seen = len(buffer) + len(piece)
        if size is None and seen > max_bytes:
            check_size(seen, max_bytes, what)
        if size is not None and seen > size:
            raise WireError(
                f"{what} is malformed: its prefix declares {size} bytes, but it sends at least {seen}; it was "
                f"refused after {len(buffer)} bytes."
            )
        buffer += piece
        if size is None and len(buffer) >= PREFIX.size:
            size = declared_size(bytes(buffer[: PREFIX.size]))
            check_size(size, max_bytes, what)
            if len(buffer) > size:
                raise WireError(f"{what} is malformed: its prefix declares {size} bytes, but it sends more.")
    return bytes(buffer)


def message_limit(mib: float, flag: str, who: str = "", default: float = 64) -> int:
    """``mib`` MiB as a message (or store) limit in bytes: a finite number of at least 1 MiB, else a
    :class:`~lightning_fed.exceptions.FederatedConfigError` naming ``who`` and ``flag`` (``"--max-message-mb "``) and
    the ``default`` as an example.

    Example:
        >>> message_limit(64, "--max-message-mb ")
        67108864
        >>> message_limit(float("inf"), "--max-message-mb ")
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `--max-message-mb inf` is not valid: pass a finite...
    """
    if isinstance(mib, bool) or not isinstance(mib, (int, float)) or not math.isfinite(mib) or mib < 1:
        raise FederatedConfigError(
            f"{who + ': ' if who else ''}`{flag}{mib!r}` is not valid: pass a finite number of MiB, at least 1 "
            f"(e.g. {default:g}, the default)."
        )
    return int(mib * MIB)


def printable(text: object) -> str:
    """``str(text)`` with control characters escaped (``\\n`` for a newline): a peer's string cannot forge log lines.

    Example:
        >>> printable("torch.add\\nINFO forged")
        'torch.add\\\\nINFO forged'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def frame(header: dict[str, Any], tensors: Sequence[torch.Tensor], max_bytes: int, what: str) -> bytes:
    """Header and tensors as one frame (see the module docstring); :class:`WireError` if over ``max_bytes``."""
    try:
        head = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:  # only reachable through a bug in the encoder
        raise WireError(f"{what} cannot be written as JSON: {err}.") from None
    block = b""
    if tensors:
        check_size(PREFIX.size + len(head) + sum(t.numel() * t.element_size() for t in tensors), max_bytes, what)
        buffer = io.BytesIO()
        torch.save(list(tensors), buffer)
        block = buffer.getvalue()
    check_size(PREFIX.size + len(head) + len(block), max_bytes, what)
    return PREFIX.pack(MAGIC, len(head), len(block)) + head + block


def unframe(data: bytes, max_bytes: int, what: str) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """The header and the tensors of a frame; :class:`WireError` if it is malformed or over ``max_bytes``."""
    size = declared_size(data)
    check_size(size, max_bytes, what)
    if size != len(data):
        raise WireError(f"{what} is malformed: it declares {size} bytes but holds {len(data)}.")
    _, header_len, block_len = PREFIX.unpack_from(data)
    try:
        header = json.loads(data[PREFIX.size : PREFIX.size + header_len])
    except (UnicodeDecodeError, ValueError) as err:
        raise WireError(f"{what} is malformed: its header is not JSON ({err}).") from None
    if type(header) is not dict:
        raise WireError(f"{what} is malformed: its header is a {type(header).__name__}, not an object.")
    tensors: list[torch.Tensor] = []
    if block_len:
        try:
            tensors = torch.load(io.BytesIO(data[PREFIX.size + header_len :]), weights_only=True)
        except Exception as err:  # weights_only refuses anything but tensors and plain containers
            raise WireError(f"{what} is malformed: its tensor block cannot be read safely ({err}).") from None
        if type(tensors) is not list or not all(type(t) is torch.Tensor for t in tensors):
            raise WireError(f"{what} is malformed: its tensor block is not a list of tensors.")
    return header, tensors


# -- requests -----------------------------------------------------------------------------------------------------
def _refuse(message: Any) -> WireError:
    if isinstance(message, MoveMessage):
        return WireError(
            f"{describe(message)} cannot be sent to a site: sites do not connect to one another in this version, so "
            "an object cannot move from one site to another (use .get() where the site's policy allows it)."
        )
    if isinstance(message, PlanMessage):
        return WireError(
            f"{describe(message)} cannot be sent to a site: a plan is Python code, and no code crosses the wire; "
            "a site trains whole FedAvg rounds instead (FederatedStrategy with a SiteDataModule)."
        )
    return WireError(f"{type_name(message)} is not a message a site answers.")


def encode_request(message: Any, deletes: Sequence[int] = (), max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """A worker message (or :class:`SiteQuery`) as a frame, with the ids of dropped objects to delete first."""
    what = describe(message)
    enc = ValueEncoder(what)
    kind = type(message)
    header: dict[str, Any]
    if kind is ObjectMessage:
        obj = message.obj
        if not isinstance(obj, torch.Tensor):
            raise enc.refuse(obj, "only tensors are sent to a site (a dataset lives at its site; federate() over "
                                  "remote workers is a later step)")  # fmt: skip
        header = {"kind": "object", "id": message.obj_id, "labels": message.labels, "obj": enc.value(obj)}
    elif kind is GetMessage:
        header = {"kind": "get", "id": message.obj_id, "keep": bool(message.keep)}
    elif kind is DeleteMessage:
        header = {"kind": "delete", "id": message.obj_id}
    elif kind is CommandMessage:
        grad = torch.is_grad_enabled() if message.grad_enabled is None else message.grad_enabled  # the caller's mode
        header = {"kind": "command", "command": message.command, "args": enc.value(tuple(message.args)),
                  "kwargs": enc.value(dict(message.kwargs)), "grad": bool(grad)}  # fmt: skip
    elif kind is SearchMessage:
        header = {"kind": "search", "query": [str(item) for item in message.query]}
    elif kind is DatasetMessage:
        header = {"kind": "dataset", "id": message.obj_id, "tensor_ids": list(message.tensor_ids)}
    elif kind is SiteQuery and message.what in _QUERIES:
        header = {"kind": message.what}
    elif kind is TrainRequest:
        secagg = message.secagg
        header = {"kind": "train", "federation": message.federation, "model": message.model,
                  "hparams": enc.value(dict(message.hparams)), "state": enc.value(dict(message.state)),
                  "dataset": message.dataset, "batches": [[int(i) for i in b] for b in message.batches],
                  "round": int(message.round_index), "reset": bool(message.reset_optimizer),
                  "secagg": None if secagg is None else enc.value(dataclasses.astuple(secagg))}  # fmt: skip
    elif kind in _SECAGG:
        header = {"kind": _SECAGG[kind], "federation": message.federation, "round": int(message.round_index),
                  "body": enc.value((message.roster, None) if kind is SecAggShares
                                    else dataclasses.astuple(message)[2:])}  # fmt: skip
    else:
        raise _refuse(message)
    header["deletes"] = [int(obj_id) for obj_id in deletes]
    header["answer_limit"] = int(max_bytes)  # the sender accepts no larger answer: the site checks before it answers
    return frame(header, enc.tensors, max_bytes, what)


def decode_request(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[Any, tuple[int, ...]]:
    """``(message, deletes)`` from a request frame; :class:`WireError` for anything malformed or unknown."""
    message, deletes, _ = read_request(data, max_bytes)
    return message, deletes


def read_request(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[Any, tuple[int, ...], int | None]:
    """``(message, deletes, answer_limit)`` from a request frame: ``answer_limit`` is the largest answer the sender
    accepts (``None`` from a sender that does not say)."""
    header, tensors = unframe(data, max_bytes, "a request")
    kind = header.get("kind")
    dec = ValueDecoder(tensors, f"a request ({kind!r})")

    def ints(key: str) -> list[int]:
        found = header.get(key)
        if type(found) is not list or not all(type(i) is int for i in found):
            raise dec.bad(found, f"{key} must be a list of ints")
        return found

    def one(key: str, kinds: tuple[type, ...] = (int,)) -> Any:
        found = header.get(key)
        if type(found) not in kinds:
            raise dec.bad(found, f"{key} must be {' or '.join(k.__name__ for k in kinds)}")
        return found

    deletes = tuple(ints("deletes"))
    limit = header.get("answer_limit")
    if limit is not None and (type(limit) is not int or limit < PREFIX.size):
        raise dec.bad(limit, f"answer_limit must be a number of bytes (at least {PREFIX.size})")
    if kind == "object":
        obj = dec.value(header.get("obj"))
        if not isinstance(obj, torch.Tensor):
            raise dec.bad(header.get("obj"), "an ObjectMessage holds a tensor")
        message: Any = ObjectMessage(one("id"), obj, one("labels"))
    elif kind == "get":
        message = GetMessage(one("id"), one("keep", (bool,)))
    elif kind == "delete":
        message = DeleteMessage(one("id"))
    elif kind == "command":
        args, kwargs = dec.value(header.get("args")), dec.value(header.get("kwargs"))
        if type(args) is not tuple or type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            raise dec.bad(header.get("args"), "a command's args are a tuple and its kwargs a dict of str keys")
        message = CommandMessage(one("command", (str,)), args, kwargs, one("grad", (bool,)))
    elif kind == "search":
        query = one("query", (list,))
        if not all(type(item) is str for item in query):
            raise dec.bad(query, "a search query is a list of strings")
        message = SearchMessage(tuple(query))
    elif kind == "dataset":
        message = DatasetMessage(one("id"), tuple(ints("tensor_ids")))
    elif kind in _QUERIES:
        message = SiteQuery(kind)
    elif kind == "train":
        hparams, state, batches = (
            dec.value(header.get("hparams")),
            dec.value(header.get("state")),
            header.get("batches"),
        )
        if type(hparams) is not dict or type(state) is not dict or not all(type(k) is str for k in (*hparams, *state)):
            raise dec.bad(header.get("hparams"), "a train request's hparams and state are dicts with str keys")
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise dec.bad(header.get("state"), "a train request's state holds tensors")
        if type(batches) is not list or not all(type(b) is list and all(type(i) is int for i in b) for b in batches):
            raise dec.bad(batches, "a train request's batches are lists of ints")
        message = TrainRequest(one("federation", (str,)), one("model", (str,)), hparams, state,
                               one("dataset", (str,)), batches, one("round"), one("reset", (bool,)),
                               _secagg_input(dec, header.get("secagg")))  # fmt: skip
    elif kind in _SECAGG_KINDS:
        message = _secagg_message(dec, kind, one("federation", (str,)), one("round"), header.get("body"))
    else:
        raise dec.bad(kind, "unknown message kind")
    return message, deletes, limit


def _secagg_input(dec: ValueDecoder, node: Any) -> SecAggInput | None:
    if node is None:
        return None
    found = dec.value(node)
    ok = type(found) is tuple and len(found) == 4
    if ok:
        round_index, inbox, weight, numel = found
        ok = type(round_index) is int and type(numel) is int and type(weight) in (int, float)
        ok = ok and type(inbox) is dict and all(type(k) is str and type(v) is bytes for k, v in inbox.items())
    if not ok:
        raise dec.bad(node, "a train request's secagg is (round, {site: ciphertext}, weight, numel)")
    return SecAggInput(round_index, inbox, float(weight), numel)


def _secagg_message(dec: ValueDecoder, kind: str, federation: str, round_index: int, node: Any) -> Any:
    body = dec.value(node)
    if type(body) is not tuple or len(body) != 2:
        raise dec.bad(node, f"a {kind} request's body is a pair")
    first, second = body

    def names(value: Any) -> bool:
        return type(value) is tuple and all(type(v) is str for v in value)

    if kind == "secagg-keys" and names(first) and type(second) is dict and all(type(k) is str for k in second):
        return SecAggKeys(federation, round_index, first, second)
    if kind == "secagg-unmask" and names(first) and names(second):
        return SecAggUnmask(federation, round_index, first, second)
    if kind == "secagg-shares" and type(first) is dict and second is None:
        keys = first.values()
        if all(type(k) is tuple and len(k) == 3 and type(k[0]) is int and type(k[1]) is bytes and type(k[2]) is bytes
               for k in keys) and all(type(site) is str for site in first):  # fmt: skip
            return SecAggShares(federation, round_index, first)
    raise dec.bad(node, f"not a valid {kind} request")


# -- answers ------------------------------------------------------------------------------------------------------
def encode_answer(value: Any, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, what: str = "an answer") -> bytes:
    """A site's answer (a tensor, descriptors, search results, plain values) as a frame."""
    enc = ValueEncoder(what)
    return frame({"answer": enc.value(value)}, enc.tensors, max_bytes, what)


def encode_error(error: BaseException) -> bytes:
    """An error as a frame: lightning_fed's own error types by name, anything else as a ``WorkerError``."""
    kind = type(error)
    if _ERRORS.get(kind.__name__) is kind:
        body = {"type": kind.__name__, "message": str(error)}
    elif isinstance(error, LightningFedError):
        base = next((k for k in kind.__mro__ if _ERRORS.get(k.__name__) is k), WorkerError)
        body = {"type": base.__name__, "message": str(error)}
    else:
        body = {"type": "WorkerError", "message": f"{kind.__name__}: {error}"}
    return frame({"error": body}, [], DEFAULT_MAX_MESSAGE_BYTES, "an error")


def decode_answer(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """The value of an answer frame; an error frame is raised as its exception type with the site's message."""
    header, tensors = unframe(data, max_bytes, "an answer")
    if "error" in header:
        body = header["error"]
        if type(body) is not dict or type(body.get("message")) is not str:
            raise WireError(f"an answer is malformed: its error is {body!r}.")
        name = body.get("type")
        raise (_ERRORS.get(name, WorkerError) if type(name) is str else WorkerError)(body["message"])
    if "answer" not in header:
        raise WireError("an answer is malformed: it holds neither an answer nor an error.")
    return ValueDecoder(tensors, "an answer").value(header["answer"])

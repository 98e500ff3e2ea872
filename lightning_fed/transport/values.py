"""The values a message carries, as JSON plus a list of tensors: nothing is pickled, nothing runs on arrival.

:class:`ValueEncoder` turns an argument tree (or an answer) into a JSON-able tree and collects the tensors it holds;
:class:`ValueDecoder` turns it back, given the tensors (which :mod:`.wire` writes with ``torch.save`` and reads with
``torch.load(weights_only=True)``). JSON numbers, strings, booleans, ``None`` and lists stand for themselves; every
other value is an object with one key naming its kind:

=========================  =========================================================================================
``{"tuple": [...]}``        a tuple; likewise ``{"dict": [[key, value], ...]}``, ``slice``, ``complex``, ``bytes``
``{"ref": 12}``             an :class:`~lightning_fed.workers.messages.ObjectRef` (an object in the receiver's store)
``{"tensor": 0, ...}``      tensor 0 of the block, with ``requires_grad``, ``grad``, ``parameter``, ``tags``...
``{"desc": {...}}``         a :class:`~lightning_fed.workers.messages.TensorDescriptor`; ``search``: a search result
``{"dtype": "float32"}``    a dtype; likewise ``size``, ``device``, ``layout``, ``memory_format``, ``return_type``
=========================  =========================================================================================

Names (dtypes, layouts, ``torch.return_types``) are looked up in tables built at import, never with ``getattr`` on a
string that came in a message. Anything else (a callable, a module, a dataset, a pointer) is refused with
:class:`~lightning_fed.transport.errors.WireError` naming its type.

Example:
    >>> import torch
    >>> from lightning_fed.workers.messages import ObjectRef
    >>> enc = ValueEncoder("a command")
    >>> tree = enc.value((ObjectRef(3), 2.5, torch.float16, torch.ones(2)))
    >>> tree
    {'tuple': [{'ref': 3}, 2.5, {'dtype': 'float16'}, {'tensor': 0}]}
    >>> ValueDecoder(enc.tensors, "a command").value(tree)
    (ObjectRef(obj_id=3), 2.5, torch.float16, tensor([1., 1.]))
    >>> enc.value(print)
    Traceback (most recent call last):
    ...
    lightning_fed.transport.errors.WireError: a command cannot carry a builtin_function_or_method (builtins...): ...
"""

from __future__ import annotations

import base64
from typing import Any

import torch
from torch import nn

from lightning_fed.transport.errors import WireError
from lightning_fed.workers.messages import ObjectRef, SearchResult, TensorDescriptor

MAX_DEPTH = 64
_DTYPES = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)}
_LAYOUTS = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.layout)}
_FORMATS = {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.memory_format)}
_RETURN_TYPES = {
    name: kind
    for name, kind in vars(torch.return_types).items()
    if isinstance(kind, type) and issubclass(kind, tuple) and not name.startswith("_")
}
_SENT = "only tensors, numbers, strings, None, tuples, lists, dicts, slices, dtypes, shapes and devices cross the wire"


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` detached, without its Python attributes, and over memory of its own size: ``torch.save`` writes a
    tensor's whole storage, so a view of a larger tensor is copied first (the rest of that memory never leaves). A
    channels-last tensor stays channels-last (a CNN trained in that format keeps it across the wire).

    Example:
        >>> big = torch.arange(1000.0)
        >>> compact(big[:2]).untyped_storage().nbytes(), compact(big).untyped_storage().nbytes()
        (8, 4000)
        >>> batch = torch.zeros(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
        >>> compact(batch[:1]).is_contiguous(memory_format=torch.channels_last)
        True
    """
    plain = tensor.detach()
    if plain.is_conj() or plain.is_neg():
        plain = plain.resolve_conj().resolve_neg()
    own = plain.storage_offset() == 0 and any(plain.is_contiguous(memory_format=f) for f in _DENSE_FORMATS)
    if not own or plain.untyped_storage().nbytes() != plain.numel() * plain.element_size():
        plain = plain.clone(memory_format=torch.preserve_format)  # dense strides kept, any other view made dense
    return plain


_DENSE_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def type_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__name__} ({kind.__module__}.{kind.__qualname__})"


class ValueEncoder:
    """Encodes values for :mod:`.wire`; ``what`` names the message in errors ("a CommandMessage (torch.add)")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.tensors: list[torch.Tensor] = []

    def refuse(self, obj: Any, why: str = _SENT) -> WireError:
        return WireError(f"{self.what} cannot carry a {type_name(obj)}: {why}.")

    def value(self, obj: Any, depth: int = 0) -> Any:
        """The JSON-able tree of ``obj`` (tensors are appended to :attr:`tensors`)."""
        if depth > MAX_DEPTH:
            raise WireError(f"{self.what} nests values more than {MAX_DEPTH} levels deep: flatten the arguments.")
        kind = type(obj)
        if obj is None or kind is bool or kind is int or kind is str:
            return obj
        if kind is float:
            return obj if obj == obj and abs(obj) != float("inf") else {"float": repr(obj)}
        if kind is list:
            return [self.value(item, depth + 1) for item in obj]
        if kind is tuple:
            return {"tuple": [self.value(item, depth + 1) for item in obj]}
        if kind is dict:
            return {"dict": [[self.value(k, depth + 1), self.value(v, depth + 1)] for k, v in obj.items()]}
        if kind is ObjectRef:
            return {"ref": _int(obj.obj_id, "ObjectRef.obj_id", self.what)}
        if kind is torch.Tensor or kind is nn.Parameter:
            return self.tensor(obj)
        if isinstance(obj, torch.Tensor):
            why = "a pointer names an object in this process; send the tensor, or .get() it first"
            raise self.refuse(obj, why if hasattr(obj, "id_at_location") else "only plain tensors and Parameters do")
        if kind is TensorDescriptor:
            return {"desc": self.descriptor(obj)}
        if kind is SearchResult:
            tags = sorted(_strings(obj.tags, "SearchResult.tags", self.what))
            return {"search": [self.descriptor(obj.descriptor), tags, _optional_str(obj.description, self.what)]}
        simple = self._simple(obj, kind)
        if simple is not None:
            return simple
        if isinstance(obj, tuple) and _RETURN_TYPES.get(kind.__name__) is kind:
            return {"return_type": kind.__name__, "items": [self.value(item, depth + 1) for item in obj]}
        raise self.refuse(obj)

    def _simple(self, obj: Any, kind: type) -> dict[str, Any] | None:
        if kind is torch.dtype:
            return {"dtype": str(obj).removeprefix("torch.")}
        if kind is torch.Size:
            return {"size": list(obj)}
        if kind is torch.device:
            return {"device": str(obj)}
        if kind is torch.layout:
            return {"layout": str(obj).removeprefix("torch.")}
        if kind is torch.memory_format:
            return {"memory_format": str(obj).removeprefix("torch.")}
        if kind is complex:
            return {"complex": [self.value(obj.real), self.value(obj.imag)]}
        if kind is slice:
            return {"slice": [self.value(obj.start), self.value(obj.stop), self.value(obj.step)]}
        if obj is Ellipsis:
            return {"ellipsis": True}
        if kind is bytes:
            return {"bytes": base64.b64encode(obj).decode("ascii")}
        return None

    def descriptor(self, desc: TensorDescriptor) -> dict[str, Any]:
        return {"id": _int(desc.obj_id, "TensorDescriptor.obj_id", self.what), "shape": list(desc.shape),
                "dtype": str(desc.dtype).removeprefix("torch."), "device": str(desc.device),
                "requires_grad": bool(desc.requires_grad),
                "layout": str(desc.layout).removeprefix("torch.")}  # fmt: skip

    def add_tensor(self, tensor: torch.Tensor) -> int:
        if tensor.layout is not torch.strided:
            raise self.refuse(tensor, f"a tensor with layout {tensor.layout} does not; send a dense (strided) tensor")
        self.tensors.append(compact(tensor))
        return len(self.tensors) - 1

    def tensor(self, tensor: torch.Tensor) -> dict[str, Any]:
        """A tensor and what travels with it: ``requires_grad``, its ``.grad``, whether it is an ``nn.Parameter``,
        and the ``tags``/``description`` a worker's search matches."""
        node: dict[str, Any] = {"tensor": self.add_tensor(tensor)}
        if tensor.requires_grad:
            node["requires_grad"] = True
        if type(tensor) is nn.Parameter:
            node["parameter"] = True
        grad = tensor.grad if tensor.is_leaf else None
        if grad is not None:
            node["grad"] = self.add_tensor(grad)
        extra = tensor.__dict__
        if extra.get("tags"):
            node["tags"] = sorted(_strings(extra["tags"], "tags", self.what))
        if extra.get("description") is not None:
            node["description"] = _optional_str(extra["description"], self.what)
        return node


class ValueDecoder:
    """Decodes what :class:`ValueEncoder` wrote, given the tensors read back; malformed input raises
    :class:`~lightning_fed.transport.errors.WireError`."""

    def __init__(self, tensors: list[torch.Tensor], what: str) -> None:
        self.tensors = tensors
        self.what = what

    def bad(self, node: Any, why: str) -> WireError:
        text = repr(node)
        return WireError(f"{self.what} is malformed: {why} (at {text[:120]}{'...' if len(text) > 120 else ''}).")

    def value(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise self.bad("...", f"values nest more than {MAX_DEPTH} levels deep")
        kind = type(node)
        if node is None or kind in (bool, int, float, str):
            return node
        if kind is list:
            return [self.value(item, depth + 1) for item in node]
        if kind is not dict or len(node) < 1:
            raise self.bad(node, "not a value")
        tag = next(iter(node))
        body = node[tag]
        try:
            return self._tagged(tag, body, node, depth)
        except WireError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
            raise self.bad(node, f"{type(err).__name__}: {err}") from None

    def _tagged(self, tag: str, body: Any, node: dict[str, Any], depth: int) -> Any:
        if tag == "tuple":
            return tuple(self.value(item, depth + 1) for item in _list(body))
        if tag == "dict":
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in _list(body)}
        if tag == "ref":
            return ObjectRef(_int(body, "ref", self.what))
        if tag == "tensor":
            return self.tensor(node)
        if tag == "desc":
            return self.descriptor(body)
        if tag == "search":
            desc, tags, description = _list(body)
            return SearchResult(self.descriptor(desc), frozenset(_strings(tags, "tags", self.what)),
                                _optional_str(description, self.what))  # fmt: skip
        if tag == "return_type":
            kind = _RETURN_TYPES.get(body)
            if kind is None:
                raise self.bad(node, f"{body!r} is not one of torch.return_types")
            return kind([self.value(item, depth + 1) for item in _list(node["items"])])
        return self._simple(tag, body, node)

    def _simple(self, tag: str, body: Any, node: dict[str, Any]) -> Any:
        tables = {"dtype": _DTYPES, "layout": _LAYOUTS, "memory_format": _FORMATS}
        if tag in tables:
            found = tables[tag].get(body)
            if found is None:
                raise self.bad(node, f"{body!r} is not a torch {tag}")
            return found
        if tag == "size":
            return torch.Size([_int(n, "size", self.what) for n in _list(body)])
        if tag == "device":
            return torch.device(str(body))
        if tag == "float":
            if body not in ("nan", "inf", "-inf"):
                raise self.bad(node, "not a special float")
            return float(body)
        if tag == "complex":
            re, im = (float(self.value(part)) for part in _list(body))
            return complex(re, im)
        if tag == "slice":
            start, stop, step = (self.value(v) for v in _list(body))
            return slice(start, stop, step)
        if tag == "ellipsis":
            return Ellipsis
        if tag == "bytes":
            return base64.b64decode(str(body), validate=True)
        raise self.bad(node, f"unknown kind {tag!r}")

    def descriptor(self, body: Any) -> TensorDescriptor:
        if type(body) is not dict:
            raise self.bad(body, "not a tensor descriptor")
        dtype = _DTYPES.get(body["dtype"])
        if dtype is None:
            raise self.bad(body, f"{body['dtype']!r} is not a torch dtype")
        name = body.get("layout", "strided")  # a peer from before layouts were sent: dense
        layout = _LAYOUTS.get(name) if type(name) is str else None
        if layout is None:
            raise self.bad(body, f"{name!r} is not a torch layout")
        shape = torch.Size([_int(n, "shape", self.what) for n in _list(body["shape"])])
        return TensorDescriptor(_int(body["id"], "id", self.what), shape, dtype, torch.device(str(body["device"])),
                                bool(body["requires_grad"]), layout)  # fmt: skip

    def _at(self, index: Any) -> torch.Tensor:
        i = _int(index, "tensor index", self.what)
        if not 0 <= i < len(self.tensors):
            raise self.bad(index, f"tensor index {i} is out of range (the message holds {len(self.tensors)})")
        return self.tensors[i]

    def tensor(self, node: dict[str, Any]) -> torch.Tensor:
        tensor = self._at(node["tensor"])
        requires_grad = node.get("requires_grad", False) is True
        if node.get("parameter") is True:
            tensor = nn.Parameter(tensor, requires_grad=requires_grad)
        elif requires_grad:
            tensor.requires_grad_(True)
        if "grad" in node:
            tensor.grad = self._at(node["grad"])
        if "tags" in node:
            tensor.tags = set(_strings(node["tags"], "tags", self.what))
        if "description" in node:
            tensor.description = _optional_str(node["description"], self.what)
        return tensor


def _int(value: Any, name: str, what: str) -> int:
    if type(value) is not int:
        raise WireError(f"{what} is malformed: {name} must be an int, got {value!r} ({type(value).__name__}).")
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _strings(values: Any, name: str, what: str) -> list[str]:
    found = list(values) if isinstance(values, (list, tuple, set, frozenset)) else None
    if found is None or not all(type(v) is str for v in found):
        raise WireError(f"{what}: {name} must be strings, got {values!r}.")
    return found


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and type(value) is not str:
        raise WireError(f"{what}: a description must be a string, got {type(value).__name__}.")
    return value

"""The command allowlist: the torch functions and tensor methods a worker will run, resolved once.

A message names a command by a string such as ``"torch.Tensor.add_"``; the worker looks that string up in a table
built from :func:`torch.overrides.get_overridable_functions` and never calls ``getattr`` with a name that arrived in a
message. Functions that would reveal a worker's data as a plain Python value (``item``, ``tolist``, ``__bool__``...)
or run a caller's Python code at the worker (``register_hook``...) are refused.

Example:
    >>> import torch
    >>> name = command_name(torch.add)
    >>> name
    'torch.add'
    >>> resolve_command(name) is torch.add
    True
    >>> refusal_reason(command_name(torch.Tensor.item))
    "it would return the worker's data as a plain value: call .get() on the pointer first"
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import get_overridable_functions

_REVEALING = (
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__nonzero__",
    "__int__",
    "__long__",
    "__float__",
    "__complex__",
    "__index__",
    "__array__",
    "__array_wrap__",
    "__contains__",
    "__reduce_ex__",
    "__getstate__",
    "__setstate__",
    "__dlpack__",
    "__dlpack_device__",
    "__repr__",
    "__str__",
    "__format__",
    "data_ptr",
    "const_data_ptr",
    "storage",
    "untyped_storage",
    "_typed_storage",
    "equal",
    "allclose",
    "is_nonzero",
)
_CALLABLE_TAKING = (
    "register_hook",
    "register_post_accumulate_grad_hook",
    "apply_",
    "map_",
    "map2_",
)
_REVEAL_REASON = "it would return the worker's data as a plain value: call .get() on the pointer first"
_CALLABLE_REASON = "it takes a Python callable, and a worker runs only torch functions"


def _namespace_name(namespace: Any) -> str | None:
    if isinstance(namespace, types.ModuleType):
        return namespace.__name__
    if namespace is torch.Tensor:
        return "torch.Tensor"
    if isinstance(namespace, (types.GetSetDescriptorType, types.MemberDescriptorType)):
        return f"torch.Tensor.{namespace.__name__}"
    if isinstance(namespace, property) and namespace.fget is not None:
        return f"torch.Tensor.{namespace.fget.__name__}"
    return None


@functools.cache
def _tables() -> tuple[dict[str, Callable], dict[Any, str], dict[str, str]]:
    by_name: dict[str, Callable] = {}
    by_func: dict[Any, str] = {}
    refused: dict[str, str] = {}

    def add(name: str, func: Callable) -> None:
        if func in by_func:
            return
        base = name
        k = 1
        while name in by_name:  # two different callables sharing a qualified name: keep both reachable
            k += 1
            name = f"{base}#{k}"
        by_name[name] = func
        by_func[func] = name
        short = base.rsplit(".", 1)[-1]
        if isinstance(func, types.MethodWrapperType):  # getters/setters: torch.Tensor.grad.__get__
            short = base.rsplit(".", 2)[-2]
        if short in _REVEALING or short.startswith(("sym_", "_sym_")):  # torch.sym_float(t) is float(t)
            refused[name] = _REVEAL_REASON
        elif short in _CALLABLE_TAKING:
            refused[name] = _CALLABLE_REASON

    for namespace, funcs in get_overridable_functions().items():
        ns_name = _namespace_name(namespace)
        if ns_name is None:
            continue
        for func in funcs:
            if isinstance(func, types.MethodWrapperType):
                add(f"{ns_name}.{func.__name__}", func)
            else:
                add(f"{ns_name}.{getattr(func, '__name__', repr(func))}", func)
        setter = getattr(namespace, "__set__", None)
        if isinstance(namespace, types.GetSetDescriptorType) and setter is not None:
            add(f"{ns_name}.__set__", setter)
        if isinstance(namespace, property) and namespace.fset is not None:
            add(f"{ns_name}.__set__", namespace.__set__)
    # tensor factories that reach __torch_function__ but are missing from torch's list of overridable functions
    for name in ("new_ones", "new_zeros", "new_full", "new_empty", "new_empty_strided", "new_tensor"):
        func = getattr(torch.Tensor, name, None)
        if func is not None and func not in by_func:
            add(f"torch.Tensor.{name}", func)
    for name in ("__reduce_ex__", "__getstate__", "__setstate__"):
        func = getattr(torch.Tensor, name, None)
        if func is not None and func not in by_func:
            add(f"torch.Tensor.{name}", func)
    return by_name, by_func, refused


def command_name(func: Any) -> str | None:
    """The allowlist name of ``func``, or ``None`` when a worker would not run it."""
    return _tables()[1].get(func)


def resolve_command(name: str) -> Callable | None:
    """The callable for an allowlisted, not refused, command name; ``None`` otherwise."""
    by_name, _, refused = _tables()
    if name in refused:
        return None
    return by_name.get(name)


def refusal_reason(name: str) -> str | None:
    """Why the command ``name`` is refused, or ``None`` when it is allowed."""
    return _tables()[2].get(name)


def allowlist() -> frozenset[str]:
    """Every command name a worker runs."""
    by_name, _, refused = _tables()
    return frozenset(name for name in by_name if name not in refused)

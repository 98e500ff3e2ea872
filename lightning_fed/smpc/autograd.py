"""A small tape for shared tensors: each result records its inputs and a backward function; ``backward()`` walks
the tape in reverse topological order and accumulates ``.grad`` on the leaves that require it.

Gradients are shared tensors too: every backward rule is made of the same secure operations as the forward pass.
A result is recorded only while ``torch.is_grad_enabled()`` and some input requires a gradient, as in torch.

Example:
    >>> import torch, lightning_fed as sy
    >>> from lightning_fed.smpc import share
    >>> bob, alice, james = (sy.VirtualWorker(id=n) for n in ("bob", "alice", "james"))
    >>> x = share(torch.tensor([1.0, -2.0]), bob, alice, crypto_provider=james, requires_grad=True)
    >>> loss = (x * x).sum()
    >>> loss.backward()
    >>> x.grad.get().float_precision()
    tensor([ 2., -4.])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class Node:
    """How a result was made: its ``inputs`` and ``backward(grad) -> one gradient (or None) per input``."""

    __slots__ = ("backward", "inputs")

    def __init__(self, backward: Callable[[Any], Sequence[Any]], inputs: Sequence[Any]) -> None:
        self.backward = backward
        self.inputs = tuple(inputs)


def _requires(x: Any) -> bool:
    return getattr(x, "_smpc_requires_grad", False) is True


def needs_grad(*inputs: Any) -> bool:
    """Whether a result of ``inputs`` must be recorded."""
    return torch.is_grad_enabled() and any(_requires(x) for x in inputs)


def record(out: Any, inputs: Sequence[Any], backward: Callable[[Any], Sequence[Any]]) -> Any:
    """Attach a :class:`Node` to ``out`` when needed; return ``out``."""
    if needs_grad(*inputs):
        out._smpc_grad_fn = Node(backward, inputs)
        out._smpc_requires_grad = True
    return out


def _topological(root: Any) -> list[Any]:
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        fn = node._smpc_grad_fn
        if fn is not None:
            stack.extend((x, False) for x in fn.inputs if _requires(x) and id(x) not in seen)
    return order


def backward(root: Any, grad: Any, add: Callable[[Any, Any], Any]) -> None:
    """Propagate ``grad`` (the gradient of ``root``) back to the leaves; ``add`` sums two gradients."""
    order = _topological(root)
    grads: dict[int, Any] = {id(root): grad}
    with torch.no_grad():
        for node in reversed(order):
            g = grads.pop(id(node), None)
            fn = node._smpc_grad_fn
            if g is None:
                continue
            if fn is None:
                node._smpc_grad = g if node._smpc_grad is None else add(node._smpc_grad, g)
                continue
            for x, gx in zip(fn.inputs, fn.backward(g)):
                if gx is None or not _requires(x):
                    continue
                prev = grads.get(id(x))
                grads[id(x)] = gx if prev is None else add(prev, gx)
            node._smpc_grad_fn = Node(_freed, ())  # release what the step saved; a second backward() fails


def _freed(grad: Any) -> Sequence[Any]:
    raise RuntimeError(
        "backward() through this shared result a second time: its saved values were freed by the first backward(); "
        "run the forward pass again."
    )

"""Pointers to tensors held by workers, module send/get, and the opt-in ``TorchHook``."""

from lightning_fed.pointers import grads  # noqa: F401 - registers how pointers answer `.grad`
from lightning_fed.pointers.api import copy_tensor, describe, get, send, send_tensor, tag
from lightning_fed.pointers.hook import TorchHook
from lightning_fed.pointers.module import get_module, get_optimizer_state, module_location, send_module
from lightning_fed.pointers.pointer_tensor import PointerTensor, pointers_from, worker_id_of

__all__ = [
    "PointerTensor",
    "TorchHook",
    "copy_tensor",
    "describe",
    "get",
    "get_module",
    "get_optimizer_state",
    "module_location",
    "pointers_from",
    "send",
    "send_module",
    "send_tensor",
    "tag",
    "worker_id_of",
]

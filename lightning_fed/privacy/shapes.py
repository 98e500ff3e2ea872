"""Which commands would reveal private values through what they return besides tensors' values: a result *shape*
that depends on the values (``nonzero``, ``unique``, boolean masks, a private number used as a size or a dim), or a
plain Python value computed from them.

The lists were found by running every allowlisted command on inputs of one shape and different values (see
``tests/privacy/test_labels.py``, which repeats that search as a test).

Example:
    >>> import torch
    >>> private = lambda t: True
    >>> shape_reason("torch.Tensor.nonzero", (torch.ones(2),), {}, private) is not None
    True
    >>> shape_reason("torch.Tensor.sum", (torch.ones(2),), {}, private) is None  # a fixed shape
    True
    >>> shape_reason("torch.Tensor.sum", (torch.ones(2, 2), torch.tensor(1)), {}, private) is not None  # private dim
    True
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lightning_fed.privacy.labels import leaves
from lightning_fed.workers.commands import resolve_command

# the result shape depends on the values of any input
_VALUE_SHAPED = frozenset(
    {
        "nonzero", "argwhere", "unique", "unique_consecutive", "_unique", "_unique2", "unique_dim", "masked_select",
        "bincount", "one_hot", "to_sparse", "to_sparse_csr", "to_sparse_csc", "to_sparse_bsr", "to_sparse_bsc",
        "_to_sparse", "nonzero_static",
    }
)  # fmt: skip
# the result shape depends on a number (a size, a dim, a count, sections) that may be given as a tensor
_SIZED = frozenset(
    {
        "all", "any", "amax", "amin", "argmax", "argmin", "aminmax", "chunk", "unsafe_chunk",
        "count_nonzero", "diag", "diag_embed", "diagflat", "diagonal", "diagonal_copy", "diff", "dsplit", "hsplit",
        "vsplit", "split", "unsafe_split", "split_copy", "split_with_sizes", "tensor_split", "flatten", "unflatten",
        "hash_tensor", "histc", "histogram", "histogramdd", "logsumexp", "special_logsumexp", "mean", "nanmean",
        "median", "nanmedian", "mode", "multinomial", "nansum", "sum", "prod", "std", "std_mean", "var", "var_mean",
        "frobenius_norm", "new_empty", "new_ones", "new_zeros", "new_full", "new_empty_strided", "repeat",
        "repeat_interleave", "tile", "resize_", "rot90", "size", "topk", "kthvalue", "unbind", "unbind_copy",
        "unsqueeze", "unsqueeze_", "unsqueeze_copy", "squeeze", "squeeze_", "view", "reshape", "expand", "narrow",
        "narrow_copy", "as_strided", "as_strided_", "permute", "transpose", "transpose_", "movedim", "moveaxis",
        "swapaxes", "swapdims", "unfold", "combinations", "pca_lowrank", "svd_lowrank", "interpolate", "pad",
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
        "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "fold",
        "fft_fft", "fft_fftn", "fft_hfft", "fft_hfftn", "fft_ifft", "fft_ifftn", "fft_ihfft", "fft_ihfftn",
        "fft_irfft", "fft_irfftn", "fft_rfft", "fft_rfftn", "fft_fft2", "fft_ifft2", "fft_rfft2", "fft_irfft2",
        "fractional_max_pool2d", "fractional_max_pool3d", "fractional_max_pool2d_with_indices",
        "fractional_max_pool3d_with_indices", "upsample", "upsample_nearest", "upsample_bilinear",
    }
)  # fmt: skip
# plain Python values a command may return about private tensors: metadata, never computed from the values
_METADATA = frozenset(
    {
        "dim", "ndimension", "ndim", "size", "shape", "stride", "numel", "nelement", "__len__", "element_size",
        "itemsize", "nbytes", "is_contiguous", "is_floating_point", "is_complex", "is_signed", "requires_grad",
        "is_leaf", "get_device", "is_cuda", "is_sparse", "is_sparse_csr", "is_quantized", "is_meta", "is_cpu",
        "is_mps", "is_xpu", "is_mkldnn", "is_nested", "is_inference", "is_conj", "is_neg", "is_pinned",
        "is_shared", "is_same_size", "output_nr", "retains_grad", "dtype", "device", "layout", "names", "has_names",
        "type", "is_tensor", "is_storage", "_is_view", "dense_dim", "sparse_dim", "_version",
    }
)  # fmt: skip
_SAFE_VALUES = (type(None), torch.Size, torch.dtype, torch.device, torch.layout, torch.memory_format, str)
# an integer argument in an aten schema (a size, a dim, a stride, a count; SymInt reads as int); float arguments that
# set a result's size by their names; Python functions' size arguments whose annotations torch rewrites to None
_INTEGER_TYPES = frozenset({"int", "Optional[int]", "List[int]", "Optional[List[int]]"})
_SCALE_NAMES = frozenset(
    {"scale_factor", "scale_factors", "scales", "scales_d", "scales_h", "scales_w", "output_ratio"}
)
_SIZE_NAMES = frozenset({"size", "shape", "output_size", "kernel_size", "stride", "padding", "dilation", "pad"})
_INT_ANNOTATION = re.compile(r"\bint\b")
_PLAIN_INT = {int}

SHAPE_FIX = "DataAccessPolicy(release_shapes=True)"


def short_name(name: str) -> str:
    """``"torch.Tensor.sum"`` -> ``"sum"``; a property ``"torch.Tensor.grad.__get__"`` -> ``"grad"``."""
    parts = name.split("#", 1)[0].rsplit(".", 2)
    if parts[-1] in ("__get__", "__set__") and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def shape_reason(name: str, args: tuple, kwargs: dict, is_private: Callable[[Any], bool]) -> str | None:
    """Why the shape of ``name(*args, **kwargs)`` would reveal private values (``is_private(tensor)``), or ``None``."""
    short = short_name(name)
    if short in _VALUE_SHAPED:
        return f"the shape of its result depends on the values of its inputs (e.g. how many of them {short} finds)"
    if short in ("where", "repeat_interleave") and len(args) == 1 and not kwargs:
        return f"the one-argument {short} gives a result as long as the values say"
    if short == "__getitem__" and len(args) > 1 and _private_in(args[1], is_private, mask_only=True):
        return "indexing with a private boolean mask gives a result as long as the number of true values"
    if short in _SIZED:
        rest = list(args[1:]) + list(kwargs.values())
        if _private_in(rest, is_private, mask_only=False):
            return "a private number sets the shape of its result (a size, a dim or a count taken from a tensor)"
        return None
    positions, names, varargs = integer_arguments(name)
    if positions or names:
        found = [args[i] for i in positions if i < len(args)]
        if varargs is not None:
            found.extend(args[varargs:])
        found.extend(value for key, value in kwargs.items() if key in names)
        if _private_number_in(found, is_private):
            return (
                "a private number is passed where it takes an integer (a size, a dim, a stride or a count), which "
                "can set the shape of its result"
            )
    return None


@functools.cache
def integer_arguments(name: str) -> tuple[frozenset[int], frozenset[str], int | None]:
    """Where command ``name`` takes an integer: its positions, its keyword names, and the position from which every
    positional argument is one (``x.view(2, n)``), from torch's operator schemas (any overload) or, for a Python
    function, its own signature.

    Example:
        >>> positions, names, varargs = integer_arguments("torch.broadcast_to")
        >>> positions, "size" in names, varargs
        (frozenset({1}), True, 1)
        >>> sorted(integer_arguments("torch.conv1d")[0])  # stride, padding, dilation, groups
        [3, 4, 5, 6]
        >>> integer_arguments("torch.Tensor.copy_")[0]  # copy_(src): a tensor (TorchScript's copy_.int aside)
        frozenset()
    """
    short = short_name(name)
    positions: set[int] = set()
    names: set[str] = set(_SIZE_NAMES | _SCALE_NAMES)  # a private tensor passed by one of these names: always
    tensor_positions: set[int] = set()
    tensor_names: set[str] = set()
    varargs: int | None = None
    for schema in torch._C._jit_get_schemas_for_operator(f"aten::{short}"):
        if schema.overload_name.startswith("prim") or not any("Tensor" in str(a.real_type) for a in schema.arguments):
            continue  # TorchScript's own overloads (``aten::add.int(int a, int b)``, ``to.prim_dtype``)
        positional = [arg for arg in schema.arguments if not arg.kwarg_only]
        for index, arg in enumerate(schema.arguments):
            kind = str(arg.real_type)
            if kind in _INTEGER_TYPES or arg.name in _SCALE_NAMES:
                names.add(arg.name)
                if not arg.kwarg_only:
                    positions.add(index)
            elif "Tensor" in kind:  # an overload takes a tensor here (``copy_(self, src)`` beside ``copy_.int``)
                tensor_names.add(arg.name)
                if not arg.kwarg_only:
                    tensor_positions.add(index)
        if positional and str(positional[-1].real_type) in ("List[int]", "Optional[List[int]]"):
            varargs = min(len(positional) - 1, varargs if varargs is not None else len(positional))
    positions -= tensor_positions  # a tensor there is used as a tensor, not read as a number
    names -= tensor_names
    if varargs in tensor_positions:
        varargs = None
    func = resolve_command(name)
    params = _parameters(func)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and all(param.kind in kinds or param.kind is inspect.Parameter.KEYWORD_ONLY for param in params):
        positions.clear()  # a Python function with named parameters: its own positions (the schema's may differ)
        varargs = None
        for index, param in enumerate(params):
            text = str(param.annotation)
            integer = _INT_ANNOTATION.search(text) is not None and "Tensor" not in text
            if integer or param.name in names:
                names.add(param.name)
                if param.kind in kinds:
                    positions.add(index)
    return frozenset(positions), frozenset(names), varargs


def _parameters(func: Any) -> list[inspect.Parameter]:
    """A Python function's parameters; none for a builtin, or a wrapper of one (``Tensor.__pow__``) without a
    signature."""
    if not inspect.isfunction(func):
        return []
    try:
        return list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []


def _private_number_in(values: list[Any], is_private: Callable[[Any], bool]) -> bool:
    """:func:`_private_in` over ``values``, quick for what layers pass (ints, tuples of ints, ``None``)."""
    for value in values:
        kind = type(value)
        if kind is int or value is None or (kind is tuple and set(map(type, value)) <= _PLAIN_INT):
            continue
        if _private_in(value, is_private, mask_only=False):
            return True
    return False


def _private_in(value: Any, is_private: Callable[[Any], bool], mask_only: bool) -> bool:
    if isinstance(value, torch.Tensor):
        if mask_only and value.dtype not in (torch.bool, torch.uint8):
            return False
        return is_private(value)
    if isinstance(value, (tuple, list)):
        return any(_private_in(item, is_private, mask_only) for item in value)
    if isinstance(value, slice):
        return any(_private_in(item, is_private, False) for item in (value.start, value.stop, value.step))
    return False


def plain_value_reason(name: str, result: Any) -> str | None:
    """Why returning ``result`` of command ``name`` as a plain value would reveal private inputs, or ``None``."""
    if short_name(name) in _METADATA:
        return None
    for value in _plain_values(result):
        if not isinstance(value, _SAFE_VALUES):
            return f"it returns a plain {type(value).__name__} computed from them, not a tensor that stays there"
    return None


def _plain_values(obj: Any) -> Iterator[Any]:
    """The leaves of ``obj`` that are not tensors."""
    return (leaf for leaf in leaves(obj) if not isinstance(leaf, torch.Tensor))

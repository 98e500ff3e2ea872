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

from collections.abc import Callable, Iterator
from typing import Any

import torch

from lightning_fed.privacy.labels import leaves

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

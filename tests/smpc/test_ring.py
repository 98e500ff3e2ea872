"""The ring helpers against exact int64 references (torch's own int64 arithmetic wraps modulo 2**64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_fed.smpc import ring

INT64 = st.integers(-(2**63), 2**63 - 1)


def _rand(shape, gen):
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


@given(st.lists(INT64, min_size=1, max_size=20))
def test_limbs_recombine(values):
    a = torch.tensor(values, dtype=torch.int64)
    l0, l1, l2 = ring.limbs(a)
    assert l0.abs().max() <= 2**21 and l1.abs().max() <= 2**21 and l2.abs().max() <= 2**19 + 1
    back = l0.long() + (l1.long() << 22) + (l2.long() << 44)
    assert torch.equal(back, a)
    wide = ring.limbs(a, 16, 4)
    assert all(limb.abs().max() <= 2**15 for limb in wide)
    assert torch.equal(sum(limb.long() << (16 * i) for i, limb in enumerate(wide)), a)


def test_conv2d_weight_gradient_over_many_positions_is_exact():
    gen = torch.Generator().manual_seed(5)
    x, g = _rand((2, 1, 36, 36), gen), _rand((2, 2, 34, 34), gen)  # 1156 > 1024 positions per image
    w = _rand((2, 1, 3, 3), gen)
    gw = ring.conv2d_weight_grad(x, g, w.shape)
    assert (w * gw).sum() == (ring.conv2d(x, w) * g).sum()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.sampled_from([1, 7, 1024, 1025, 2500]), st.integers(1, 4), st.integers(0, 2**31))
def test_matmul_exact(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = _rand((m, k), gen), _rand((k, n), gen)
    assert torch.equal(ring.matmul(a, b), torch.matmul(a, b))


def test_matmul_vector_operands():
    gen = torch.Generator().manual_seed(1)
    a, b = _rand((1500,), gen), _rand((1500, 3), gen)
    assert torch.equal(ring.matmul(a, b), torch.matmul(a, b))
    assert torch.equal(ring.matmul(b.t(), a), torch.matmul(b.t(), a))


def _conv_ref(x, w, stride, padding):
    xf = torch.nn.functional.pad(x, (padding,) * 4)
    kh, kw = w.shape[2:]
    cols = xf.unfold(2, kh, stride).unfold(3, kw, stride)  # N, C, OH, OW, kh, kw
    n, _c, oh, ow = cols.shape[:4]
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n, oh * ow, -1)
    return (cols @ w.reshape(w.shape[0], -1).t()).permute(0, 2, 1).reshape(n, w.shape[0], oh, ow)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 3, 50]), st.sampled_from([1, 2]), st.sampled_from([0, 1]), st.integers(0, 2**31))
def test_conv2d_and_its_gradients_exact(cin, stride, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    x, w = _rand((2, cin, 9, 9), gen), _rand((4, cin, 5, 5), gen)
    y = ring.conv2d(x, w, stride=stride, padding=padding)
    assert torch.equal(y, _conv_ref(x, w, stride, padding))
    g = _rand(y.shape, gen)
    # adjoint identities in the ring: <conv(x, w), g> == <x, dX(g, w)> == <w, dW(x, g)>
    lhs = (y * g).sum()
    gx = ring.conv2d_input_grad(g, w, x.shape, stride=stride, padding=padding)
    gw = ring.conv2d_weight_grad(x, g, w.shape, stride=stride, padding=padding)
    assert lhs == (x * gx).sum() == (w * gw).sum()


def test_split_reconstruct_and_fresh_randomness():
    v = torch.tensor([1, -2, 2**62])
    a, b = ring.split(v, 2), ring.split(v, 2)
    assert torch.equal(ring.reconstruct(a), v) and torch.equal(ring.reconstruct(b), v)
    assert not torch.equal(a[0], b[0])


def test_secureml_truncation_error_is_one_unit():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-(2**40), 2**40, (10_000,), generator=gen)
    s0 = _rand(x.shape, gen)
    s1 = x - s0
    out = ring.trunc_share(s0, 1000, 0) + ring.trunc_share(s1, 1000, 1)
    exact = torch.div(x, 1000, rounding_mode="floor")
    assert (out - exact).abs().max() <= 1

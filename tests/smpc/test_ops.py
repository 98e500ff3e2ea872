"""Every operation on shares equals the plain operation within the fixed-point error (property tests)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_fed.smpc import share

ENCODINGS = st.sampled_from([(10, 3), (10, 4), (2, 12), (2, 16)])
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _values(seed, shape, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) * 2 - 1) * scale  # both signs


def _tol(base, prec, k=1.0):
    return k * 4.0 / base**prec


def _sh(x, ws, enc, **kw):
    return share(x, *ws[:-1], crypto_provider=ws[-1], base=enc[0], precision_fractional=enc[1], **kw)


def _get(x):
    return x.get().float_precision()


@pytest.fixture(params=["two", "three"])
def parties(request, workers, three):
    return workers if request.param == "two" else three


@SETTINGS
@given(st.integers(0, 2**31), st.lists(st.integers(1, 5), min_size=1, max_size=3), ENCODINGS)
def test_linear_ops(parties, seed, shape, enc):
    x, y = _values(seed, shape), _values(seed + 1, shape)
    sx, sy_ = _sh(x, parties, enc), _sh(y, parties, enc)
    tol = _tol(*enc)
    assert torch.allclose(_get(sx + sy_), x + y, atol=tol)
    assert torch.allclose(_get(sx - sy_), x - y, atol=tol)
    assert torch.allclose(_get(sx + 1.5), x + 1.5, atol=tol)
    assert torch.allclose(_get(2.0 - sx), 2.0 - x, atol=tol)
    assert torch.allclose(_get(-sx), -x, atol=tol)
    assert torch.allclose(_get(sx * 3), x * 3, atol=3 * tol)
    assert torch.allclose(_get(sx.sum()), x.sum(), atol=tol * x.numel())
    assert torch.allclose(_get(sx.mean()), x.mean(), atol=tol * 2)


@SETTINGS
@given(st.integers(0, 2**31), st.lists(st.integers(1, 4), min_size=1, max_size=3), ENCODINGS)
def test_products(parties, seed, shape, enc):
    x, y = _values(seed, shape), _values(seed + 1, shape)
    sx, sy_ = _sh(x, parties, enc), _sh(y, parties, enc)
    tol = _tol(*enc, k=10)
    assert torch.allclose(_get(sx * sy_), x * y, atol=tol)
    assert torch.allclose(_get(sx * 0.37), x * 0.37, atol=tol)
    assert torch.allclose(_get(sx**2), x * x, atol=tol)
    assert torch.allclose(_get(sx / 4), x / 4, atol=tol)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(1, 40), st.integers(1, 5), ENCODINGS)
def test_matmul_and_linear(parties, seed, m, k, n, enc):
    x, w, b = _values(seed, (m, k)), _values(seed + 1, (n, k)), _values(seed + 2, (n,))
    sx, sw, sb = (_sh(v, parties, enc) for v in (x, w, b))
    tol = _tol(*enc, k=10) * k * 3
    assert torch.allclose(_get(sx @ sw.t()), x @ w.t(), atol=tol)
    assert torch.allclose(_get(sx.mm(w.t())), x @ w.t(), atol=tol)  # a public operand
    assert torch.allclose(_get(F.linear(sx, sw, sb)), F.linear(x, w, b), atol=tol)


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.sampled_from([0, 1]), ENCODINGS)
def test_conv2d(parties, seed, cin, stride, padding, enc):
    x, w, b = _values(seed, (2, cin, 8, 8)), _values(seed + 1, (4, cin, 3, 3)), _values(seed + 2, (4,))
    out = F.conv2d(_sh(x, parties, enc), _sh(w, parties, enc), _sh(b, parties, enc), stride=stride, padding=padding)
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    assert torch.allclose(_get(out), ref, atol=_tol(*enc, k=10) * cin * 9 * 3)


@SETTINGS
@given(st.integers(0, 2**31), st.lists(st.integers(1, 6), min_size=1, max_size=3), ENCODINGS)
def test_comparisons_and_relu(parties, seed, shape, enc):
    x, y = _values(seed, shape), _values(seed + 1, shape)
    y.view(-1)[0] = x.view(-1)[0]  # one tie
    sx, sy_ = _sh(x, parties, enc), _sh(y, parties, enc)
    xe, ye = (torch.round(v.double() * enc[0] ** enc[1]) for v in (x, y))  # compare what was encoded
    assert torch.equal(_get(sx > sy_), (xe > ye).float())
    assert torch.equal(_get(sx < sy_), (xe < ye).float())
    assert torch.equal(_get(sx >= sy_), (xe >= ye).float())
    assert torch.equal(_get(sx <= sy_), (xe <= ye).float())
    assert torch.equal(_get(sx == sy_), (xe == ye).float())
    assert torch.allclose(_get(F.relu(sx)), F.relu(x), atol=_tol(*enc))


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 9), ENCODINGS)
def test_argmax_and_max(parties, seed, rows, cols, enc):
    x = _values(seed, (rows, cols))
    sx = _sh(x, parties, enc)
    xe = torch.round(x.double() * enc[0] ** enc[1]).long()  # ties after encoding: the first one wins, as in torch
    assert torch.equal(_get(sx.argmax(dim=1)).long(), xe.argmax(dim=1))
    assert torch.equal(_get(sx.copy().argmax(dim=0)).long(), xe.argmax(dim=0))
    assert torch.allclose(_get(sx.copy().max(dim=1)), x.max(dim=1).values, atol=_tol(*enc))
    assert torch.allclose(_get(sx.max()), x.max(), atol=_tol(*enc))


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([(2, 2), (3, 3), (2, 1)]), ENCODINGS)
def test_max_pool2d(parties, seed, ks, enc):
    k, s = ks
    x = _values(seed, (2, 3, 7, 7))
    out = F.max_pool2d(_sh(x, parties, enc), k, s)
    assert torch.allclose(_get(out), F.max_pool2d(x, k, s), atol=_tol(*enc))


def test_integer_sharing_is_exact(workers):
    bob, alice, james = workers
    x = share(torch.tensor([25, -3]), bob, alice, crypto_provider=james)
    y = share(torch.tensor([5, 7]), bob, alice, crypto_provider=james)
    assert torch.equal((x * y).get(), torch.tensor([125, -21]))
    assert (x * y).get().dtype == torch.int64


def test_copy_and_refresh_keep_the_value_with_new_shares(workers):
    bob, alice, james = workers
    x = share(torch.tensor([1.5, -2.25]), bob, alice, crypto_provider=james)
    before = x.shares[0].to_here()
    fresh = x.refresh()
    assert not torch.equal(fresh.shares[0].to_here(), before)
    assert torch.equal(x.copy().get().child, fresh.get().child)

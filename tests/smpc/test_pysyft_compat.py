"""PySyft 0.2 details on fixed-precision and shared tensors: division modes, FixedPrecisionTensor arithmetic, a
pointer's ``fix_precision()``, optimizers other than SGD, ``get_()``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError, PointerError
from lightning_fed.smpc import FixedPrecisionTensor, UnsupportedOperationError, share


@pytest.fixture
def hook() -> Iterator[sy.TorchHook]:
    hook = sy.TorchHook(torch)
    yield hook
    hook.unhook()


# -- division -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["floor", "trunc"])
def test_div_refuses_a_rounding_mode(workers, mode: str) -> None:
    bob, alice, james = workers
    x = share(torch.tensor([-1.5, 3.5]), bob, alice, crypto_provider=james)
    with pytest.raises(UnsupportedOperationError, match=rf"rounding_mode='{mode}'.*\.get\(\).*round"):
        torch.div(x, 2, rounding_mode=mode)
    with pytest.raises(UnsupportedOperationError, match=rf"rounding_mode='{mode}'"):
        x.div(2, rounding_mode=mode)
    assert torch.allclose(torch.div(x, 2, rounding_mode=None).get().float_precision(), torch.tensor([-0.75, 1.75]))


def test_integer_shares_refuse_true_division(workers) -> None:
    bob, alice, james = workers
    x = share(torch.tensor([7, -7]), bob, alice, crypto_provider=james)
    with pytest.raises(UnsupportedOperationError, match=r"integer shares.*/ 2.*3\.5.*fix_precision\(\)"):
        x / 2
    with pytest.raises(UnsupportedOperationError, match=r"rounding_mode='floor'.*round locally"):
        torch.div(x, 2, rounding_mode="floor")
    assert torch.equal((x * 3).get(), torch.tensor([21, -21]))  # the shares are untouched


# -- FixedPrecisionTensor ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "prec"), [(10, 3), (2, 16)])
def test_fixed_precision_products_and_sums(base: int, prec: int) -> None:
    a, b = torch.tensor([[1.5, -2.25], [0.125, 3.0]]), torch.tensor([[-0.5, 4.0], [2.0, -1.75]])
    fa, fb = (FixedPrecisionTensor.from_float(t, base, prec) for t in (a, b))
    tol = 3.0 / base**prec
    cases = {
        "fp * fp": (fa * fb, a * b),
        "fp * int": (fa * 3, a * 3),
        "int * fp": (-2 * fa, -2 * a),
        "fp * float": (fa * 0.3, a * 0.3),
        "fp * tensor": (fa * torch.tensor([0.5, -2.0]), a * torch.tensor([0.5, -2.0])),
        "fp * int tensor": (fa * torch.tensor([2, -3]), a * torch.tensor([2, -3])),
        "sum": (fa.sum(), a.sum()),
        "sum(dim)": (fa.sum(dim=0), a.sum(dim=0)),
        "sum(keepdim)": (fa.sum(1, keepdim=True), a.sum(1, keepdim=True)),
        "torch.sum": (torch.sum(fa), a.sum()),
        "torch.mul": (torch.mul(fa, fb), a * b),
        "torch.sub(fp, tensor)": (torch.sub(fa, b), a - b),
        "torch.sub(tensor, fp)": (torch.sub(b, fa), b - a),  # not commutative: the reflected subtraction
        "tensor - fp": (b - fa, b - a),
        "mixed": ((fa * fb + fa).sum(), (a * b + a).sum()),
    }
    for name, (got, want) in cases.items():
        assert isinstance(got, FixedPrecisionTensor), name
        out = got.float_precision()
        assert out.shape == want.shape and torch.allclose(out, want, atol=tol), (name, out, want)


def test_fixed_precision_product_refuses_overflow_and_other_encodings() -> None:
    big = FixedPrecisionTensor.from_float(torch.tensor([1e6]), 2, 16)
    with pytest.raises(OverflowError, match="precision_fractional"):
        big * big
    with pytest.raises(FederatedConfigError, match="different encodings"):
        FixedPrecisionTensor.from_float(torch.tensor([1.0])) * big


def test_fixed_precision_unsupported_operations_say_what_is_supported() -> None:
    fp = FixedPrecisionTensor.from_float(torch.tensor([1.5, -2.0]))
    with pytest.raises(UnsupportedOperationError, match=r"FixedPrecisionTensor supports.*\*.*sum.*share"):
        fp / 2
    with pytest.raises(UnsupportedOperationError, match=r"FixedPrecisionTensor supports.*share"):
        fp @ fp
    with pytest.raises(UnsupportedOperationError, match=r"relu.*FixedPrecisionTensor supports.*share"):
        torch.relu(fp)
    with pytest.raises(AttributeError, match=r"FixedPrecisionTensor has no 'relu'.*supports.*\.share\("):
        fp.relu()
    with pytest.raises(AttributeError, match=r"no 'get'.*local.*float_precision\(\)"):
        fp.get()
    with pytest.raises(AttributeError, match=r"no 'send'.*share"):
        fp.send
    with pytest.raises(UnsupportedOperationError, match=r"\* a str"):
        fp * "2"
    assert not hasattr(fp, "relu")


# -- a pointer's fix_precision() ----------------------------------------------------------------------------------------
def test_remote_fix_precision_get_location_float_precision_repr(hook, workers) -> None:
    bob, alice, james = workers
    x = torch.tensor([0.5, 1.2345])
    ptr = x.send(bob)
    fp = ptr.fix_precision()
    assert fp.location is bob
    assert repr(fp).startswith("RemoteFixedPrecision(") and "bob:" in repr(fp) and "precision_fractional=3" in repr(fp)
    back = fp.float_precision()
    assert back.location is bob and torch.equal(back.get(), x.fix_precision().float_precision())
    local = fp.get()
    assert isinstance(local, FixedPrecisionTensor) and torch.equal(local.child, x.fix_precision().child)
    with pytest.raises(PointerError, match=r"already brought.*get\(\)"):
        fp.get()
    assert ptr.is_live and torch.equal(ptr.get(), x)  # the pointer's own tensor stays at bob, as in PySyft
    shared = torch.tensor([0.25]).send(bob).fix_precision().share(bob, alice, crypto_provider=james)
    assert repr(shared).startswith("RemoteShared(") and "['bob', 'alice']" in repr(shared)
    with pytest.raises(UnsupportedOperationError, match=r"RemoteShared has no arithmetic.*\.get\(\)"):
        shared + shared
    with pytest.raises(AttributeError, match=r"RemoteFixedPrecision has no 'relu'.*share\(.*get\(\)"):
        torch.tensor([1.0]).send(bob).fix_precision().relu()


def test_remote_fix_precision_get_obeys_the_policy(hook) -> None:
    clinic = sy.VirtualWorker(hook, id="clinic")
    ptr = torch.tensor([0.5]).send(clinic)
    clinic.set_policy("strict")
    with pytest.raises(PermissionDeniedError):
        ptr.fix_precision().get()


# -- optimizers, get_ -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [torch.optim.Adam, torch.optim.RMSprop])
def test_optimizers_other_than_sgd_are_refused_on_shared_models(hook, workers, make) -> None:
    bob, alice, james = workers
    net = nn.Linear(3, 1)
    net.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    opt = make(net.parameters(), lr=0.1)
    x = torch.randn(4, 3).fix_precision().share(bob, alice, crypto_provider=james)
    ((net(x)) ** 2).sum().backward()
    with pytest.raises(UnsupportedOperationError, match=rf"torch\.optim\.{make.__name__}.*SGD.*momentum"):
        opt.step()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sgd.step()  # SGD steps shared parameters


def test_shared_get_underscore_names_the_alternative(workers) -> None:
    bob, alice, james = workers
    x = share(torch.tensor([1.0]), bob, alice, crypto_provider=james)
    with pytest.raises(FederatedConfigError, match=r"get_\(\).*x = x\.get\(\)"):
        x.get_()
    assert torch.allclose(x.get().float_precision(), torch.tensor([1.0]))

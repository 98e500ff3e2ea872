"""Bad input: each a clear error naming the fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lightning_fed as sy
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.smpc import FixedPoint, UnsupportedOperationError, share


def test_fewer_than_two_workers(workers):
    bob, _, james = workers
    with pytest.raises(FederatedConfigError, match=r"at least two workers.*share\(bob, alice"):
        share(torch.tensor([1.0]), bob, crypto_provider=james)
    with pytest.raises(FederatedConfigError, match="at least two workers"):
        share(torch.tensor([1.0]))


def test_missing_crypto_provider_names_it(workers):
    bob, alice, _ = workers
    x = share(torch.tensor([1.0, 2.0]), bob, alice)
    assert torch.allclose((x + x).get().float_precision(), torch.tensor([2.0, 4.0]))  # additions need no provider
    for op in (lambda t: t * t, lambda t: t @ t, F.relu, lambda t: t > 0):
        with pytest.raises(FederatedConfigError, match=r"crypto provider.*crypto_provider="):
            op(share(torch.tensor([1.0, 2.0]), bob, alice))


def test_mixing_tensors_shared_among_different_workers(workers):
    bob, alice, james = workers
    carol = sy.VirtualWorker(id="carol")
    x = share(torch.tensor([1.0]), bob, alice, crypto_provider=james)
    y = share(torch.tensor([1.0]), bob, carol, crypto_provider=james)
    with pytest.raises(FederatedConfigError, match=r"different workers: \['bob', 'alice'\] and \['bob', 'carol'\]"):
        x + y
    z = share(torch.tensor([1.0]), bob, alice, crypto_provider=james, precision_fractional=4)
    with pytest.raises(FederatedConfigError, match="different encodings"):
        x * z


def test_precision_overflow(workers):
    bob, alice, james = workers
    with pytest.raises(OverflowError, match=r"precision overflow.*lower precision_fractional"):
        share(torch.tensor([1e16]), bob, alice, crypto_provider=james)
    with pytest.raises(FederatedConfigError, match="precision_fractional=40"):
        FixedPoint(2, 40)
    with pytest.raises(FederatedConfigError, match="NaN"):
        share(torch.tensor([float("nan")]), bob, alice)


def test_unsupported_operation_names_the_supported_ones(workers):
    bob, alice, james = workers
    x = share(torch.tensor([1.0]), bob, alice, crypto_provider=james)
    with pytest.raises(UnsupportedOperationError, match=r"sin is not supported on shared tensors.*Supported: .*relu"):
        torch.sin(x)
    with pytest.raises(UnsupportedOperationError, match="division by a shared tensor"):
        x / x
    with pytest.raises(UnsupportedOperationError, match="item"):
        x.item()
    with pytest.raises(UnsupportedOperationError, match="padding=0"):
        F.max_pool2d(share(torch.zeros(1, 1, 4, 4), bob, alice, crypto_provider=james), 2, padding=1)


def test_bad_parties_and_arguments(workers):
    bob, alice, _james = workers
    with pytest.raises(FederatedConfigError, match="crypto provider 'bob' also holds a share"):
        share(torch.tensor([1.0]), bob, alice, crypto_provider=bob)
    with pytest.raises(FederatedConfigError, match="same worker twice"):
        share(torch.tensor([1.0]), bob, bob)
    with pytest.raises(FederatedConfigError, match=r"takes workers, got 'alice'"):
        share(torch.tensor([1.0]), bob, "alice")
    with pytest.raises(FederatedConfigError, match=r"protocol='xyz'"):
        share(torch.tensor([1.0]), bob, alice, protocol="xyz")
    with pytest.raises(FederatedConfigError, match="requires_grad=True needs real values"):
        share(torch.tensor([1]), bob, alice, requires_grad=True)
    with pytest.raises(FederatedConfigError, match="cannot be pickled"):
        import pickle

        pickle.dumps(share(torch.tensor([1.0]), bob, alice))


def test_backward_errors(workers):
    bob, alice, james = workers
    x = share(torch.tensor([1.0, 2.0]), bob, alice, crypto_provider=james)
    with pytest.raises(FederatedConfigError, match="requires_grad=True"):
        x.sum().backward()
    y = share(torch.tensor([1.0, 2.0]), bob, alice, crypto_provider=james, requires_grad=True)
    with pytest.raises(FederatedConfigError, match=r"needs a scalar.*\.sum\(\)"):
        (y * 2).backward()


def test_crypto_providers_combine_or_conflict(workers):
    bob, alice, james = workers
    without = share(torch.tensor([2.0]), bob, alice)
    with_provider = share(torch.tensor([3.0]), bob, alice, crypto_provider=james)
    product = without * with_provider  # the provider of either operand serves
    assert product.crypto_provider is james
    assert torch.allclose(product.get().float_precision(), torch.tensor([6.0]), atol=1e-2)
    other = share(torch.tensor([3.0]), bob, alice, crypto_provider=sy.VirtualWorker(id="other"))
    with pytest.raises(FederatedConfigError, match="different crypto providers"):
        share(torch.tensor([1.0]), bob, alice, crypto_provider=james) * other

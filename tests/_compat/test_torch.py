"""The private torch APIs of ``lightning_fed._compat.torch`` exist in the installed torch and count as documented; a
torch release without them makes every send copy (correct, slower), and this test says so first."""

from __future__ import annotations

import torch

from lightning_fed._compat.torch import storage_holders, tensor_holders
from lightning_fed.pointers import handover


def test_the_installed_torch_counts_storage_holders() -> None:
    t = torch.zeros(4)
    assert storage_holders(t) == 1
    view = t[1:]
    assert storage_holders(t) == 2
    del view
    assert storage_holders(t) == 1


def test_the_installed_torch_counts_tensor_holders() -> None:
    p = torch.zeros(2, requires_grad=True)
    assert tensor_holders(p) == 1
    graph = p * 2  # its AccumulateGrad node holds `p`
    assert tensor_holders(p) == 2
    del graph
    assert tensor_holders(p) == 1


def test_the_reference_counts_behave_as_measured_at_import() -> None:
    # None would mean: nothing is ever handed over at a get's let-go, and a gradient is always copied
    assert handover._REFS is not None

from __future__ import annotations

import pytest
import torch

import lightning_fed as sy


@pytest.fixture
def workers():
    """Two share holders and a crypto provider (fresh for each test)."""
    return sy.VirtualWorker(id="bob"), sy.VirtualWorker(id="alice"), sy.VirtualWorker(id="james")


@pytest.fixture
def three():
    """Three share holders and a crypto provider."""
    return sy.VirtualWorker(id="p0"), sy.VirtualWorker(id="p1"), sy.VirtualWorker(id="p2"), sy.VirtualWorker(id="d")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

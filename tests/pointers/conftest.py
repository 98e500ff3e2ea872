"""Fixtures the pointer tests share: the hook (undone after each test) and two fresh workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import lightning_fed as sy
from lightning_fed.workers import VirtualWorker


@pytest.fixture
def hook() -> Iterator[sy.TorchHook]:
    hook = sy.TorchHook(torch)
    yield hook
    hook.unhook()


@pytest.fixture
def alice() -> VirtualWorker:
    return VirtualWorker(id="alice")


@pytest.fixture
def bob() -> VirtualWorker:
    return VirtualWorker(id="bob")

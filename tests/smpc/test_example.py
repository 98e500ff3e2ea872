"""examples/mnist_encrypted.py runs end to end on tiny MNIST files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tests.helpers.mnist_files import write_mnist_raw

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist_encrypted.py"


def test_encrypted_example_classifies_and_trains(tmp_path, capsys):
    write_mnist_raw(tmp_path, num_train=192, num_test=100)
    spec = importlib.util.spec_from_file_location("mnist_encrypted", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--data-root", str(tmp_path), "--train-images", "192", "--test-images", "100"])
    out = capsys.readouterr().out
    assert "bob holds shares only" in out and "(a) encrypted classification" in out and "(b) encrypted training" in out
    assert 0.0 <= result["classify_acc"] <= 1.0 and 0.0 <= result["train_acc"] <= 1.0
    assert not hasattr(torch.Tensor, "share")  # the example unhooks at the end

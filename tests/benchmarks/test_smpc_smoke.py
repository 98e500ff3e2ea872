"""benchmarks/smpc.py still runs (smoke size: tiny synthetic data); no timing is checked."""

from __future__ import annotations

from tests.benchmarks.test_smoke import run_smoke


def test_smpc_benchmark_smoke():
    record = run_smoke("smpc.py")
    assert record["benchmark"] == "smpc"
    inference, training = record["inference"], record["training"]
    assert inference["cnn"] == "seed" and inference["images"] == 16
    assert set(inference["s_per_image_by_layer"]) >= {"conv1", "relu1", "conv2", "relu2", "pool", "fc1", "fc2"}
    assert training["batches"] == 2 and 0.0 <= training["shared_test_acc"] <= 1.0

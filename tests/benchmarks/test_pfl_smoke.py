"""The pfl-research contender of benchmarks/flower.py: its schedule, its batches, its CNN, and a smoke-size run.

The run needs ``pfl``, which is no dependency of lightning_fed: it uses this interpreter when ``pfl`` imports here,
else ``.venv-pfl`` (made by ``benchmarks/pfl_env.sh``), and is skipped, saying so, when neither has it. No timing is
checked.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from benchmarks.flower import PflCNN, local_train, shuffled_order
from benchmarks.pfl_contender import ScheduleSampler

ROOT = Path(__file__).resolve().parents[2]


def test_schedule_sampler_hands_out_the_rounds_in_order_then_refuses():
    sampler = ScheduleSampler([[4, 0, 2], [1, 3, 0]])
    assert [sampler() for _ in range(6)] == [(0, 4), (0, 0), (0, 2), (1, 1), (1, 3), (1, 0)]
    with pytest.raises(RuntimeError, match="pfl asked for user 7, but the schedule has 6"):
        sampler()


@pytest.mark.parametrize("n", [1, 10, 23])
def test_local_train_visits_the_samples_in_shuffled_order(n):
    visited: list[int] = []

    class Recorded(TensorDataset):
        def __getitem__(self, i):
            visited.append(i)
            return super().__getitem__(i)

    order = shuffled_order(n, 0, 2, 5)
    local_train(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LogSoftmax(1)),
                Recorded(torch.randn(n, 3), torch.arange(n) % 2), batch_size=10, lr=0.1, epochs=1, order=order)  # fmt: skip
    assert visited == order.tolist() and sorted(visited) == list(range(n))
    assert not torch.equal(shuffled_order(n, 0, 3, 5), order) or n == 1  # another round, another order


@pytest.mark.parametrize(("seed", "round_index", "client", "n"), [(0, 0, 0, 7), (0, 3, 5, 23), (11, 2, 1, 60)])
def test_every_contender_visits_a_client_in_lightning_feds_order(seed, round_index, client, n):
    # lightning_fed's loader, one local epoch: round r is its epoch r, client k its worker k; the other contenders'
    # DataLoaders visit the samples in shuffled_order, which must be that very order
    from lightning_fed import FederatedDataModule

    sizes = [n] * (client + 1)
    parts, start = [], 0
    for size in sizes:
        parts.append(list(range(start, start + size)))
        start += size
    data = FederatedDataModule.from_datasets(TensorDataset(torch.arange(start)), workers=len(parts), batch_size=4,
                                             partition=lambda num_samples, num_workers: parts, seed=seed)  # fmt: skip
    data.setup("fit")
    loader = data.train_dataloader()
    positions = torch.cat(list(loader.batch_positions(loader.workers[client], epoch=round_index)))
    assert torch.equal(positions, shuffled_order(n, seed, round_index, client))


def test_pfl_cnn_is_pfls_benchmark_cnn_for_mnist():
    model = PflCNN()
    assert sum(p.numel() for p in model.parameters()) == 1_199_882
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.5]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def _pfl_python() -> str | None:
    if importlib.util.find_spec("pfl") is not None:
        return sys.executable
    venv = ROOT / ".venv-pfl" / "bin" / "python"
    return str(venv) if venv.exists() else None


def test_pfl_contender_smoke():
    python = _pfl_python()
    if python is None:
        pytest.skip("pfl is not installed here and .venv-pfl does not exist (bash benchmarks/pfl_env.sh makes it)")
    proc = subprocess.run(
        [python, str(ROOT / "benchmarks" / "flower.py"), "--smoke", "--workloads", "B", "C", "--contenders", "pfl",
         "plain"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"flower.py --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["pfl"] is not None
    assert record["contenders"] == ["pfl", "plain"]
    for key, workload in record["workloads"].items():
        pfl = workload["results"]["pfl"]
        assert pfl["wall_s"] > 0
        assert 0.0 <= pfl["test_acc"] <= 1.0, key
        assert len(pfl["round_s"]) == workload["workload"]["rounds"]
        assert sum(pfl["round_s"]) <= pfl["wall_s"]
        assert {"min", "median", "max"} <= workload["ratios"]["pfl/plain"].keys()
    # workload B has no dropout: pfl trained the same clients on the same batches as plain, so the weights agree
    b = record["workloads"]["B"]["results"]
    assert float(b["pfl"]["max_abs_diff_vs_plain"]) < 1e-5
    assert b["pfl"]["test_acc"] == b["plain"]["test_acc"]

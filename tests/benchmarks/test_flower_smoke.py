"""benchmarks/flower.py still runs (smoke size); no timing is checked.

CI's venv has no ``flwr`` and no ``pfl``: there the Flower and pfl contenders are left out with a note, and
lightning_fed and plain still run, on all three workloads (C: pfl's cross-device shape with pfl's benchmark CNN).
"""

from __future__ import annotations

import pytest

from tests.benchmarks.test_smoke import run_smoke


def test_flower_benchmark_smoke():
    record = run_smoke("flower.py")
    assert record["benchmark"] == "flower"
    assert {"machine", "config", "contenders", "workloads"} <= record.keys()
    assert record["config"]["smoke"] is True
    assert {"lightning_fed", "lightning_fed_vectorized", "plain"} <= set(record["contenders"])
    assert ("flower" in record["contenders"]) == (record["flwr"] is not None)
    assert ("pfl" in record["contenders"]) == (record["pfl"] is not None)
    assert set(record["workloads"]) == {"A", "B", "C"}
    c = record["workloads"]["C"]["workload"]
    assert (c["model"], c["batch_size"], c["local_epochs"]) == ("pfl_cnn", 10, 1)
    assert record["workloads"]["C"]["train_samples"] == c["clients"] * c["samples_per_client"]
    for workload in record["workloads"].values():
        results = workload["results"]
        assert set(results) == set(record["contenders"])
        for name in ("lightning_fed", "plain"):
            assert results[name]["wall_s"] > 0
            assert 0.0 <= results[name]["test_acc"] <= 1.0
            if name.startswith("lightning_fed"):  # num_threads="auto"'s threads, one description per repeat
                assert len(results[name]["threads_all"]) == record["config"]["repeats"]
                assert all(t.startswith("num_threads=") for t in results[name]["threads_all"])
        assert {"min", "median", "max"} <= workload["ratios"]["lightning_fed/plain"].keys()
        if workload["workload"]["model"] != "pfl_cnn":  # no dropout: the same batches give the plain loop's weights
            for name in ("lightning_fed", "lightning_fed_vectorized"):
                assert float(results[name]["max_abs_diff_vs_plain"]) < 1e-5, (name, workload["workload"]["name"])
        # every contender trained the same clients each round
        assert len(workload["schedule"]) == workload["workload"]["rounds"]
        assert all(len(clients) == workload["workload"]["clients_per_round"] for clients in workload["schedule"])


def test_flower_after_startup_is_set_against_every_lightning_fed_contender_repeat_by_repeat():
    from benchmarks.flower import after_startup_ratios

    walls = {"flower": [10.0, 20.0, 12.0], "lightning_fed_vectorized": [2.0, 4.0, 2.0], "lightning_fed": [5.0, 5.0, 4.0],
             "plain": [3.0, 3.0, 3.0]}  # fmt: skip
    results = {"flower": {"after_startup_s_all": [6.0, 8.0, 9.0]}}  # Flower's rounds and shut-down, per repeat
    got = after_startup_ratios(results, walls)
    assert set(got) == {"flower_after_startup/lightning_fed_vectorized", "flower_after_startup/lightning_fed"}
    vec = got["flower_after_startup/lightning_fed_vectorized"]  # 6/2, 8/4, 9/2
    assert (vec["min"], vec["median"], vec["max"]) == (2.0, 3.0, 4.5)
    assert got["flower_after_startup/lightning_fed"]["median"] == pytest.approx(1.6)  # 1.2, 1.6, 2.25
    assert after_startup_ratios({}, {"lightning_fed": [1.0]}) == {}  # no Flower (its venv only): no quotient

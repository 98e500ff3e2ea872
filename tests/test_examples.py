"""The examples run: the pointer tour prints what the seed shows; the two-schools app trains on tiny MNIST files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from tests.helpers.mnist_files import write_mnist_raw

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pointer_tour_prints_the_seed_output(capsys):
    _load("pointer_tour").main()
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> clinic:\d+\]", lines[0])
    assert re.fullmatch(r"\{\d+: tensor\(\[0, 1, 2, 1, 2\]\)\}", lines[1])
    assert lines[2:4] == ["tensor([0, 1, 2, 1, 2])", "{}"]
    assert lines[5:] == ["tensor([2.4000, 6.2000], requires_grad=True)", "tensor([1., 1.])"]
    assert not hasattr(torch.Tensor, "send")  # the tour unhooks at the end


def test_two_schools_example_trains_and_reports(tmp_path, capsys):
    source = tmp_path / "shared"
    write_mnist_raw(source, num_train=128, num_test=64)
    example = _load("mnist_two_schools")
    result = example.main(["--data-root", str(tmp_path / "data"), "--mnist-from", str(source), "--epochs", "2",
                           "--batch-size", "32", "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert "Test accuracy after 2 rounds (fedavg, iid, recipe fast):" in out
    assert "westside" in out and "grapevine" in out and "1 at a time" in out  # the seed's way by default
    assert re.search(r"round 1/2 took \dm\d\ds; \dm\d\ds elapsed, about \dm\d\ds left", out)
    assert "round 2/2" in out and "about 0m00s left" in out
    assert 0.0 <= result["test_acc"] <= 1.0


def test_two_schools_train_at_once_with_the_same_result(tmp_path, capsys):
    source = tmp_path / "shared"
    write_mnist_raw(source, num_train=128, num_test=64)
    example = _load("mnist_two_schools")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each school's thread runs at one torch thread: the one-after-the-other run does too
    try:
        results = [example.main(["--data-root", str(tmp_path / "data"), "--mnist-from", str(source), "--epochs", "2",
                                 "--batch-size", "32", "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu",
                                 "--parallel-workers", count]) for count in ("1", "2")]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert "2 at a time" in capsys.readouterr().out
    assert results[0]["test_acc"] == results[1]["test_acc"]


def test_two_schools_refuses_a_test_limit_that_leaves_no_batch_before_training(tmp_path, monkeypatch):
    source = tmp_path / "shared"
    write_mnist_raw(source, num_train=128, num_test=64)  # one test batch of 1000
    example = _load("mnist_two_schools")
    fits = []
    monkeypatch.setattr(example.pl.Trainer, "fit", lambda *a, **k: fits.append(a))
    with pytest.raises(
        SystemExit, match=r"^--limit-test-batches 0.5: 0.5 of the 1 test batch\(es\) is no batch at all"
    ):
        example.main(["--data-root", str(tmp_path / "data"), "--mnist-from", str(source), "--epochs", "1",
                      "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu", "--limit-test-batches", "0.5"])  # fmt: skip
    assert fits == []  # refused before any training


def test_two_schools_recipes_fill_what_the_command_line_leaves_unset():
    example = _load("mnist_two_schools")
    fast, seed = example.parse_args([]), example.parse_args(["--recipe", "seed"])
    assert (fast.epochs, fast.lr, fast.momentum, fast.lr_decay_at) == (6, 0.05, 0.9, [4])
    # the seed tutorial's own: plain SGD at a constant rate
    assert (seed.epochs, seed.lr, seed.momentum, seed.batch_size, seed.lr_decay_at) == (10, 0.01, 0.0, 64, [])
    mixed = example.parse_args(["--recipe", "seed", "--epochs", "3", "--momentum", "0.5", "--lr-decay-at", "2"])
    assert (mixed.epochs, mixed.lr, mixed.momentum, mixed.lr_decay_at) == (3, 0.01, 0.5, [2])
    assert example.parse_args(["--lr-decay-at"]).lr_decay_at == []  # the option alone: a constant rate


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr-decay-at", "5", "3"], "argument --lr-decay-at: rounds must increase, got 5 3"),
        (["--lr-decay-at", "4", "4"], "argument --lr-decay-at: rounds must increase, got 4 4"),
        (["--lr-decay-at", "0"], "argument --lr-decay-at: 0 is not valid: pass an integer >= 1."),
    ],
)
def test_two_schools_refuses_a_bad_lr_decay_by_name(argv, message, capsys):
    example = _load("mnist_two_schools")
    with pytest.raises(SystemExit) as exc:
        example.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_dp_example_trains_with_calibrated_noise_and_spends_the_target_epsilon(tmp_path, capsys):
    root = tmp_path / "data"
    write_mnist_raw(root, num_train=200, num_test=50)
    example = _load("mnist_dp")
    result = example.main(["--data-root", str(root), "--preset", "eps3", "--epochs", "2", "--batch-size", "10",
                           "--log-dir", str(tmp_path / "logs")])  # fmt: skip
    out = capsys.readouterr().out
    assert "Per school epsilon at delta=1e-05" in out and "westside" in out and "grapevine" in out
    # the noise was calibrated so that 2 rounds spend (about) Opacus' epsilon 3.01 and no more
    assert 2.5 < result["epsilon"] <= 3.01 + 1e-6
    assert result["noise_multiplier"] > 0


def test_dp_example_without_dp_trains(tmp_path):
    root = tmp_path / "data"
    write_mnist_raw(root, num_train=100, num_test=20)
    result = _load("mnist_dp").main(["--data-root", str(root), "--no-dp", "--epochs", "1", "--batch-size", "10",
                                     "--log-dir", str(tmp_path / "logs")])  # fmt: skip
    assert "epsilon" not in result and 0.0 <= result["test_acc"] <= 100.0


def test_deploy_run_local_trains_at_two_school_processes_and_prints_the_accuracy(tmp_path):
    """examples/deploy/run_local.sh end to end: certificates, one folder per school, two `lightning-fed worker`
    processes over mutual TLS on loopback, the server's Trainer for one round, the test accuracy, workers stopped."""
    import os
    import subprocess
    import sys

    raw = write_mnist_raw(tmp_path / "mnist", num_train=160, num_test=40, seed=3, gz=True)
    bin_dir = str(Path(sys.executable).parent)  # `lightning-fed` is installed beside this Python
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHON": sys.executable,
           "ROUNDS": "1", "PER_SITE": "64", "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "examples" / "deploy" / "run_local.sh"
    done = subprocess.run(["bash", str(script), str(raw)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"test accuracy after 1 rounds: \d+\.\d\d%", done.stdout), done.stdout[-2000:]
    assert re.search(r"alice: 1 rounds, [\d.]+ MiB sent to it", done.stdout)
    for site in ("alice", "bob"):  # each school was given only its own folder, and stopped cleanly
        log = (tmp_path / "work" / f"{site}.out").read_text()
        assert "mnist-train=" not in log and f"lightning-fed worker '{site}' stopped" in log

"""Bad command-line values exit with status 2 and one clear message: the examples' argparse types, the
``lightning-fed`` arguments that classes refuse, ``--ckpt_path last`` with no checkpoint (1), and the help texts."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from lightning_fed.cli import main
from tests.helpers.mnist_files import write_mnist_raw

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "mnist_two_schools.yaml"
FAST = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit_of(call, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        call()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# -- the examples ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "args", "message"),
    [("mnist_two_schools", ["--epochs", "-1"], "argument --epochs: -1 is not valid: pass an integer >= 1"),
     ("mnist_two_schools", ["--epochs", "0"], "argument --epochs: 0 is not valid: pass an integer >= 1"),
     ("mnist_two_schools", ["--parallel-workers", "0"], "argument --parallel-workers: 0 is not valid: pass an integer"),
     ("mnist_two_schools", ["--batch-size", "0"], "argument --batch-size: 0 is not valid: pass an integer >= 1"),
     ("mnist_two_schools", ["--alpha", "-1"], "argument --alpha: -1 is not valid: pass a number > 0"),
     ("mnist_two_schools", ["--lr", "abc"], "argument --lr: 'abc' is not a number: pass a number > 0"),
     ("mnist_two_schools", ["--limit-test-batches", "0"], "argument --limit-test-batches: 0 is not valid: pass a "
                                                          "fraction in (0, 1]"),
     ("mnist_dp", ["--epochs", "0"], "argument --epochs: 0 is not valid: pass an integer >= 1"),
     ("mnist_dp", ["--clip", "-1"], "argument --clip: -1 is not valid: pass a number > 0"),
     ("mnist_dp", ["--sigma", "-1"], "argument --sigma: -1 is not valid: pass a number >= 0"),
     ("mnist_dp", ["--delta", "5"], "argument --delta: 5 is not valid: pass a probability in (0, 1)"),
     ("mnist_encrypted", ["--test-images", "0"], "argument --test-images: 0 is not valid: pass an integer >= 1"),
     ("mnist_encrypted", ["--batch-size", "0"], "argument --batch-size: 0 is not valid: pass an integer >= 1")],
)  # fmt: skip
def test_an_examples_bad_number_exits_2_naming_the_flag_the_value_and_what_is_allowed(capsys, name, args, message):
    example = _example(name)
    call = (lambda: example.parse_args(args)) if hasattr(example, "parse_args") else lambda: example.main(args)
    code, _, err = _exit_of(call, capsys)
    assert code == 2
    assert err.startswith("usage: ") and message in err


def test_a_missing_mnist_from_folder_exits_2_instead_of_downloading(tmp_path, capsys):
    code, _, err = _exit_of(lambda: _example("mnist_two_schools").parse_args(["--mnist-from", str(tmp_path / "no")]),
                            capsys)  # fmt: skip
    assert code == 2 and err.startswith("usage:")
    assert f"argument --mnist-from: '{tmp_path / 'no'}': there is no such folder" in err
    assert "or leave it out to download them" in err
    code, _, err = _exit_of(lambda: _example("mnist_two_schools").parse_args(["--mnist-from", str(tmp_path)]), capsys)
    assert code == 2 and "argument --mnist-from" in err and "holds the four MNIST files" in err
    raw = write_mnist_raw(tmp_path / "shared", num_train=8, num_test=4)
    assert _example("mnist_two_schools").parse_args(["--mnist-from", str(raw.parent.parent)]).mnist_from == str(
        raw.parent.parent
    )


@pytest.mark.parametrize("name", ["mnist_two_schools", "mnist_dp"])
def test_an_unwritable_log_dir_exits_2_up_front(tmp_path, capsys, name):
    (tmp_path / "a_file").write_text("")
    log_dir = str(tmp_path / "a_file" / "logs")
    code, _, err = _exit_of(lambda: _example(name).parse_args(["--log-dir", log_dir]), capsys)
    assert code == 2
    assert f"argument --log-dir: '{log_dir}' cannot be written: '{tmp_path / 'a_file'}' is not a folder" in err
    assert _example(name).parse_args(["--log-dir", str(tmp_path / "new" / "logs")]).log_dir == str(
        tmp_path / "new" / "logs"
    )
    assert not (tmp_path / "new").exists()


def test_mnist_encrypted_refuses_a_data_root_without_mnist(tmp_path, capsys):
    code, _, err = _exit_of(lambda: _example("mnist_encrypted").main(["--data-root", str(tmp_path)]), capsys)
    assert code == 2 and f"argument --data-root: '{tmp_path}': '{tmp_path / 'MNIST' / 'raw'}' lacks" in err


@pytest.mark.parametrize(
    ("name", "defaults"),
    [("mnist_two_schools", ["--log-dir LOG_DIR", "(default: lightning_logs)", "(default: 0.3)", "(default: fast)"]),
     ("mnist_dp", ["(default: 120)", "(default: 1e-05)", "(default: eps1.2)"]),
     ("mnist_encrypted", ["(default: 6000)", "(default: 1000)", "(default: 64)", "(default: 0.1)"])],
)  # fmt: skip
def test_the_examples_help_describes_every_option_and_shows_the_defaults(capsys, name, defaults):
    example = _example(name)
    call = (lambda: example.parse_args(["--help"])) if hasattr(example, "parse_args") else lambda: example.main(["-h"])
    code, out, _ = _exit_of(call, capsys)
    assert code == 0
    flat = " ".join(out.split())
    for default in defaults:
        assert default in flat
    options = out.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert entries and all(len(entry.split()) > 2 + entry.count(",") for entry in entries), entries  # a description


def test_pointer_tour_help_prints_help_instead_of_the_tour(capsys):
    code, out, _ = _exit_of(lambda: _example("pointer_tour").main(["--help"]), capsys)
    assert code == 0 and out.startswith("usage: ") and "PointerTensor" not in out


# -- lightning-fed ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--trainer.strategy.mode", "bogus"], "--trainer.strategy.mode: `mode='bogus'` is not valid: choose 'fedavg'"),
     (["--trainer.strategy.local_epochs", "-1"], "--trainer.strategy.local_epochs: `local_epochs=-1` is not valid"),
     (["--model.architecture", "bogus"], "--model.architecture: `architecture='bogus'` is not valid: choose one of"),
     (["--data.batch_size", "-5"], "--data.batch_size: `batch_size=-5` is not valid: pass an integer >= 1."),
     (["--data.workers", "0"], "--data.workers: `workers=0` is not valid: pass a number of workers >= 1."),
     (["--data.partition", "bogus"], "--data.partition: `partition='bogus'` is not a known partitioner: known names are 'dirichlet', 'iid'"),
     (["--trainer.strategy", "fedavgg"], "--trainer.strategy: `fedavgg` is not a strategy name: pass one of fedavg, federated")],
)  # fmt: skip
def test_a_bad_value_a_class_refuses_exits_2_with_one_line(tmp_path, capsys, flags, message):
    assert main(["fit", "--config", str(CONFIG), "--data.root", str(tmp_path), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert f"lightning-fed: error: {message}" in err
    assert "Traceback" not in err and "Does not validate against any of the Union subtypes" not in err


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
def test_ckpt_path_last_without_a_checkpoint_exits_1_naming_the_folder_and_the_fix(tmp_path, monkeypatch, capsys,
                                                                                   command):  # fmt: skip
    write_mnist_raw(tmp_path / "data", num_train=32, num_test=16)
    monkeypatch.chdir(tmp_path)  # the config's checkpoint folder is relative: checkpoints/mnist_two_schools
    assert main([command, "--config", str(CONFIG), "--data.root", "data", *FAST, "--ckpt_path", "last"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    folder = tmp_path / "checkpoints" / "mnist_two_schools"
    assert f"lightning-fed: error: `--ckpt_path last`: there is no last checkpoint (last.ckpt) in '{folder}'" in err
    assert f"so `{command}` would run an untrained model. Run `lightning-fed fit` with the same config first" in err
    assert "or pass a checkpoint file: --ckpt_path path/to/file.ckpt" in err


def test_fit_help_shows_the_federated_defaults_only(capsys):
    code, out, _ = _exit_of(lambda: main(["fit", "--help"]), capsys)
    assert code == 0
    flat = " ".join(out.split())
    strategy = flat.rsplit("--trainer.strategy STRATEGY", 1)[1].split("--trainer.", 1)[0]
    devices = flat.rsplit("--trainer.devices DEVICES", 1)[1].split("--trainer.num_nodes", 1)[0]
    assert "default: federated" in strategy and "Default:" not in strategy
    assert "default: 1)" in devices and "Default:" not in devices

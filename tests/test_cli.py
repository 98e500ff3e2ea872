"""The ``lightning-fed`` command line (LightningCLI) on tiny MNIST files written by the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_fed import FederatedStrategy
from lightning_fed.cli import main, run
from lightning_fed.datasets import FederatedMNISTDataModule
from tests.helpers.mnist_files import write_mnist_raw

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "mnist_two_schools.yaml"
FAST = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


@pytest.fixture
def mnist_root(tmp_path: Path) -> str:
    write_mnist_raw(tmp_path / "data", num_train=128, num_test=32)
    return str(tmp_path / "data")


def test_fit_with_the_two_schools_config(mnist_root, tmp_path):
    cli = run(["fit", "--config", str(CONFIG), "--data.root", mnist_root, *FAST,
                f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert isinstance(cli.trainer.strategy, FederatedStrategy)
    assert [w.id for w in cli.datamodule.workers] == ["westside", "grapevine"]
    assert cli.trainer.strategy.round_index == 1
    assert cli.datamodule.hparams.federated["partition"] == "iid"


def test_flags_override_the_config(mnist_root, tmp_path):
    cli = run(["fit", "--config", str(CONFIG), "--data.root", mnist_root, "--data.partition=dirichlet",
                "--data.alpha=0.3", "--trainer.strategy=federated_follow", *FAST,
                f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert cli.datamodule.partition_args == {"alpha": 0.3}
    assert cli.trainer.strategy.mode == "follow"


def test_print_config_can_be_fed_back(mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIG), "--data.root", mnist_root, "--data.partition=dirichlet",
              "--data.alpha=0.5", "--print_config"])  # fmt: skip
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["data"]["init_args"]["alpha"] == 0.5
    assert config["trainer"]["strategy"]["class_path"] == "lightning_fed.FederatedStrategy"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    cli = run(["fit", "--config", str(saved), *FAST, f"--trainer.default_root_dir={tmp_path}"])
    assert cli.datamodule.partition_args == {"alpha": 0.5}


def test_validate_and_test_subcommands(mnist_root, tmp_path):
    for command in ("validate", "test"):
        cli = run([command, "--config", str(CONFIG), "--data.root", mnist_root, *FAST,
                    f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
        assert cli.trainer.state.fn == command.replace("validate", "validate")


def test_strategy_class_path_with_init_args_in_a_users_cli(mnist_root, tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from lightning_fed.models import MNISTClassifier

    cli = LightningCLI(
        MNISTClassifier,
        FederatedMNISTDataModule,
        args=["fit", "--data.root", mnist_root, "--trainer.strategy", "lightning_fed.FederatedStrategy",
              "--trainer.strategy.clients_per_round=1", "--trainer.devices=1", *FAST,
              f"--trainer.default_root_dir={tmp_path}"],
    )  # fmt: skip
    assert isinstance(cli.trainer.strategy, FederatedStrategy)
    assert cli.trainer.strategy.clients_per_round == 1


def test_console_entry_point_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "lightning_fed", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "validate" in result.stdout

"""The ``lightning-fed`` command line (LightningCLI) on tiny MNIST files written by the test.

The installed console script runs in subprocesses: README's "Command line" section, in order, as written, and the
exit status on success and on failure. The rest calls :func:`lightning_fed.cli.run` in this process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

import lightning_fed.privacy.policy as policy_module
from lightning_fed import FederatedStrategy
from lightning_fed.cli import main, run
from lightning_fed.datasets import FederatedMNISTDataModule, MNISTDataModule
from lightning_fed.models import MNISTClassifier
from lightning_fed.privacy import DataAccessPolicy
from tests.helpers.mnist_files import write_mnist_raw

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "mnist_two_schools.yaml"
FAST = ["--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
BIN = Path(sys.executable).parent
CONSOLE = BIN / "lightning-fed"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=_env())


@pytest.fixture
def mnist_root(tmp_path: Path) -> str:
    write_mnist_raw(tmp_path / "data", num_train=128, num_test=32)
    return str(tmp_path / "data")


class TinyDataModule(pl.LightningDataModule):
    """A user's own datamodule, which knows nothing of federation."""

    def __init__(self, size: int = 60) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(size, 1, 28, 28, generator=generator), torch.arange(size) % 10)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=10, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=30)


# -- README's "Command line" section, through the installed console script ------------------------------------------
def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Command line section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> list[dict]:
    """Run README's commands in order from a fresh copy of the repository's examples, on tiny IDX data."""
    workspace = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "examples", workspace / "examples")
    write_mnist_raw(workspace / "data", num_train=128, num_test=32)
    last = workspace / "checkpoints" / "mnist_two_schools" / "last.ckpt"
    results = []
    for i, command in enumerate(readme_commands()):
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600, cwd=workspace,
                              env=_env())  # fmt: skip
        snapshot = None
        if last.exists():
            snapshot = workspace / f"after_{i}.ckpt"
            shutil.copyfile(last, snapshot)
        results.append({"command": command, "rc": done.returncode, "out": done.stdout, "err": done.stderr,
                        "snapshot": snapshot, "workspace": workspace})  # fmt: skip
    return results


def _uses_a_checkpoint(command: str) -> bool:
    return "--ckpt_path" in command


def test_readme_commands_run_in_order_and_exit_0(readme_run) -> None:
    commands = [r["command"] for r in readme_run]
    assert commands[0].startswith("lightning-fed fit --config examples/configs/mnist_two_schools.yaml")
    assert any("--data.partition=dirichlet --data.alpha=0.3" in c for c in commands)
    assert any("--data lightning_fed.data.FederatedDataModule" in c and "--data.alpha=0.3" in c for c in commands)
    for result in readme_run:
        if _uses_a_checkpoint(result["command"]):
            continue
        assert result["rc"] == 0, f"{result['command']!r} exited {result['rc']}:\n{result['err'][-3000:]}"
        assert "FederatedCLI object" not in result["out"]
    assert readme_run[0]["snapshot"] is not None  # the first fit saved last.ckpt where `--ckpt_path last` looks
    printed = next(r for r in readme_run if "--print_config" in r["command"])
    assert (printed["workspace"] / "my.yaml").read_text().startswith("# lightning.pytorch==")
    assert readme_run[-1]["out"].startswith("usage: lightning-fed") and "validate" in readme_run[-1]["out"]


def test_readme_resume_and_test_use_the_trained_checkpoint(readme_run) -> None:
    resume, tested = (r for r in readme_run if _uses_a_checkpoint(r["command"]))
    for result in (resume, tested):
        assert result["rc"] == 0, f"{result['command']!r} exited {result['rc']}:\n{result['err'][-3000:]}"
        assert re.search(r"Restoring states from the checkpoint path at .*last\.ckpt", result["err"])
    first = torch.load(readme_run[0]["snapshot"], weights_only=False)
    resumed = torch.load(resume["snapshot"], weights_only=False)
    assert (first["epoch"], resumed["epoch"]) == (9, 11)  # 10 rounds, then 2 more
    # the test command tested the resumed model: its loss is that checkpoint's loss on the test set
    model = MNISTClassifier(architecture="seed_cnn", lr=0.01)
    model.load_state_dict(resumed["state_dict"])
    data = MNISTDataModule(root=resume["workspace"] / "data", test_batch_size=1000)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, devices=1)
    expected = trainer.test(model, datamodule=data, verbose=False)[0]["test_loss"]
    printed = float(re.search(r"test_loss\s+([0-9.e-]+)", tested["out"]).group(1))
    assert printed == pytest.approx(expected, abs=1e-5)


def test_a_checkpoint_file_given_by_path_loads_in_the_cli(readme_run) -> None:
    # LightningCLI reads the hyper-parameters of a `--ckpt_path` file with torch.load(weights_only=True)
    snapshot = readme_run[0]["snapshot"]
    done = console("test", "--config", "examples/configs/mnist_two_schools.yaml", "--ckpt_path", str(snapshot),
                   "--trainer.enable_progress_bar=false", cwd=readme_run[0]["workspace"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(snapshot, weights_only=True)["epoch"] == 9


# -- the console script's exit status --------------------------------------------------------------------------------
def test_console_script_exits_2_with_one_line_when_a_class_refuses_its_arguments(mnist_root, tmp_path) -> None:
    done = console("fit", "--config", str(CONFIG), "--data.root", mnist_root, "--data.partition=dirichlet", *FAST,
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "lightning-fed: error: Partitioner 'dirichlet' needs `alpha`, which was not given" in done.stderr
    assert "Traceback" not in done.stderr


def test_console_script_exits_2_on_a_bad_argument(tmp_path) -> None:
    done = console("fit", "--config", str(CONFIG), "--data.no_such_argument=1", cwd=tmp_path)
    assert done.returncode == 2
    assert "no_such_argument" in done.stderr


def test_python_m_exits_with_the_status(tmp_path) -> None:
    bad = subprocess.run([sys.executable, "-m", "lightning_fed", "fit", "--config", str(CONFIG), "--data.root",
                          str(tmp_path / "empty"), "--data.download=false", *FAST], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=_env())  # fmt: skip
    assert bad.returncode == 1
    assert "lightning-fed: error: MNIST files missing from" in bad.stderr


def test_main_returns_the_exit_status(mnist_root, tmp_path, capsys) -> None:
    assert main(["fit", "--config", str(CONFIG), "--data.root", mnist_root, *FAST]) == 0
    assert main(["fit", "--config", str(CONFIG), "--data.root", mnist_root, "--data.partition=shards",
                 "--data.alpha=0.3", *FAST]) == 2  # fmt: skip
    assert "lightning-fed: error: Partitioner 'shards' does not take alpha=0.3" in capsys.readouterr().err


# -- the CLI in this process ----------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--data.partition=dirichlet", "--data.alpha=0.3"], {"alpha": 0.3}),
     (["--data.partition=dirichlet", "--data.alpha=0.3", "--data.min_size=2"], {"alpha": 0.3, "min_size": 2}),
     (["--data.partition=dirichlet", "--data.partition_args={alpha: 0.5}"], {"alpha": 0.5}),
     (["--data.partition=shards", "--data.shards_per_worker=1"], {"shards_per_worker": 1})],
)  # fmt: skip
def test_partition_arguments_of_a_wrapped_user_datamodule(tmp_path, flags, expected):
    cli = run(["fit", "--model", "lightning_fed.models.MNISTClassifier", "--data",
               "lightning_fed.data.FederatedDataModule", "--data.datamodule", f"{__name__}.TinyDataModule",
               "--data.workers=2", *flags, *FAST, f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert type(cli.datamodule.datamodule) is TinyDataModule
    assert cli.datamodule.partition_args == expected
    assert sum(cli.datamodule.partition_stats.samples.values()) == 60


# -- the workers' data-access policy ----------------------------------------------------------------------------------
def test_a_run_keeps_the_workers_strict_by_default_and_never_takes_their_data(mnist_root, tmp_path):
    cli = run(["fit", "--config", str(CONFIG), "--data.root", mnist_root, *FAST,
               f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    assert cli.datamodule.policy is None and cli.datamodule.hparams.federated["policy"] is None
    for worker in cli.datamodule.workers:
        assert worker.policy == DataAccessPolicy.strict()
        assert worker.audit_log.refused == []  # training asked for nothing the policy keeps
        assert {r.rule for r in worker.audit_log} <= {"public", "release_model", "release_scalars"}
        assert "release_data" not in {r.rule for r in worker.audit_log}


@pytest.mark.parametrize("where", ["flag", "config"])
def test_policy_open_from_the_command_line_or_a_config_opens_the_workers_and_warns(
    mnist_root, tmp_path, monkeypatch, where
):
    monkeypatch.setattr(policy_module, "_warned_open", False)  # the warning is once per process
    if where == "flag":
        flags = ["--config", str(CONFIG), "--policy", "open"]
    else:
        config = yaml.safe_load(CONFIG.read_text())
        (tmp_path / "open.yaml").write_text(yaml.safe_dump({**config, "policy": "open"}))
        flags = ["--config", str(tmp_path / "open.yaml")]
    with pytest.warns(UserWarning, match=r"open data-access policy \(release_data=True\)"):
        cli = run(["fit", *flags, "--data.root", mnist_root, *FAST, f"--trainer.default_root_dir={tmp_path}"])
    assert cli.datamodule.hparams.federated["policy"] == "open"
    assert [w.policy for w in cli.datamodule.workers] == [DataAccessPolicy.open()] * 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--config", str(CONFIG), "--policy", "open", "--data.policy", "strict"],
         "`--policy=open` and `--data.policy=strict` disagree: give the workers' policy once"),
        (["--config", str(CONFIG), "--data.policy", "private"], "`policy='private'` is not valid: pass 'strict'"),
        (["--model", "lightning_fed.models.MNISTClassifier", "--data", f"{__name__}.TinyDataModule", "--policy",
          "strict"], f"the datamodule ({__name__}.TinyDataModule) takes no `policy` argument: use "
                     "lightning_fed.data.FederatedDataModule"),
    ],
)  # fmt: skip
def test_a_bad_or_misplaced_policy_is_a_bad_argument(mnist_root, tmp_path, capsys, flags, message):
    root = ["--data.root", mnist_root] if "--config" in flags else []
    assert main(["fit", *flags, *root, *FAST]) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_the_policy_flag_accepts_only_strict_or_open(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIG), "--policy", "closed"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'Parser key "policy"' in err and "Literal['strict', 'open']" in err and "Given value: closed" in err


def test_help_documents_the_partition_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", "lightning_fed.data.FederatedDataModule"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--data.alpha", "--data.shards_per_worker", "--data.min_size", "--data.distribution",
                 "--data.sigma", "--data.power", "--data.partition_args"):  # fmt: skip
        assert flag in out
    assert 'the ``"dirichlet"`` partitioner\'s concentration' in out
    assert "drop each worker's last short batch" in out


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
        assert cli.trainer.state.fn == command


def test_strategy_class_path_with_init_args_in_a_users_cli(mnist_root, tmp_path):
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        MNISTClassifier,
        FederatedMNISTDataModule,
        args=["fit", "--data.root", mnist_root, "--trainer.strategy", "lightning_fed.FederatedStrategy",
              "--trainer.strategy.local_epochs=2", "--trainer.devices=1", *FAST,
              f"--trainer.default_root_dir={tmp_path}"],
    )  # fmt: skip
    assert isinstance(cli.trainer.strategy, FederatedStrategy)
    assert cli.trainer.strategy.local_epochs == 2


@pytest.mark.parametrize("count", ["1", "5"])
def test_clients_per_round_from_the_command_line_stays_an_int_count(mnist_root, tmp_path, count):
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        MNISTClassifier,
        FederatedMNISTDataModule,
        args=["fit", "--data.root", mnist_root, "--data.workers=5", "--trainer.strategy",
              "lightning_fed.FederatedStrategy", f"--trainer.strategy.clients_per_round={count}",
              "--trainer.devices=1", *FAST, f"--trainer.default_root_dir={tmp_path}"],
    )  # fmt: skip
    value = cli.trainer.strategy.clients_per_round
    assert type(value) is int and value == int(count)


# -- the example app lays out its logs as the CLI does ---------------------------------------------------------------
def _example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mnist_two_schools", ROOT / "examples" / "mnist_two_schools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_logs_to_version_folders_and_prints_its_table_once(tmp_path, capsys, caplog):
    source = tmp_path / "shared" / "MNIST" / "raw"
    write_mnist_raw(tmp_path / "shared", num_train=64, num_test=32)
    example = _example()
    with caplog.at_level("INFO"):
        example.main(["--data-root", str(tmp_path / "data"), "--mnist-from", str(source), "--epochs", "1",
                      "--log-dir", str(tmp_path / "logs"), "--accelerator", "cpu"])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["version_0"]  # not logs/lightning_logs/...
    out = capsys.readouterr().out
    assert "worker  samples   steps" not in out and "schools: westside, grapevine" in out
    assert caplog.text.count("worker  samples   steps") == 1


@pytest.mark.parametrize("where", ["root", "MNIST", "raw"])
def test_the_example_finds_the_mnist_files_at_any_level(tmp_path, where):
    raw = write_mnist_raw(tmp_path / "shared", num_train=20, num_test=10)
    given = {"root": tmp_path / "shared", "MNIST": raw.parent, "raw": raw}[where]
    _example().copy_mnist_files(str(given), str(tmp_path / "data"))
    assert sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir()) == sorted(
        p.name for p in raw.iterdir()
    )


def test_the_example_says_where_the_mnist_files_must_be(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SystemExit, match=r"--mnist-from .*elsewhere.*holds the four MNIST files train-images"):
        _example().copy_mnist_files(str(tmp_path / "elsewhere"), str(tmp_path / "data"))
    with pytest.raises(SystemExit, match=r"--mnist-from .*nowhere.*: there is no such folder.*or leave it out"):
        _example().copy_mnist_files(str(tmp_path / "nowhere"), str(tmp_path / "data"))  # no download: a typo


def test_lightning_fed_worker_runs_the_site_program(capsys):
    from lightning_fed.cli import main

    assert main(["worker", "--id", "site-a", "--listen", "127.0.0.1:0"]) == 2  # no certificates, no --insecure
    assert "site 'site-a' has no certificates" in capsys.readouterr().err

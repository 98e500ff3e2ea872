"""FederatedStrategy's arguments: strict types, one way to say each thing, errors that name the fix."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from lightning_fed import FederatedStrategy
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.rounds.planning import resolve_clients_per_round
from lightning_fed.testing import BoringClassifier
from tests.strategies.helpers import FedDM, tiny_dataset, trainer


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"local_epochs": 2, "local_steps": 3}, r"`local_epochs=2` and `local_steps=3` both set .* pass one"),
        ({"local_epochs": 0}, r"`local_epochs=0` is not valid: pass an integer >= 1"),
        ({"seed": -1}, r"`seed=-1` is not valid: pass an integer in \[0, 2\*\*63\)"),
        ({"seed": "7"}, r"`seed='7'` is not valid"),
        ({"reset_optimizer_state": "no"}, r"`reset_optimizer_state='no'` is not valid: pass True or False"),
        ({"tolerate_failures": 1}, r"`tolerate_failures=1` is not valid: pass True or False"),
        ({"vectorize": "true"}, r"`vectorize='true'` is not valid: pass True or False"),
        ({"secure_aggregation": "false"}, r"`secure_aggregation='false'` is not valid: pass True, False or a"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument_and_the_fix(kwargs, match):
    with pytest.raises(FederatedConfigError, match=match):
        FederatedStrategy(**kwargs)


@pytest.mark.parametrize(
    ("count", "fraction", "expected"), [(None, None, 10), (3, None, 3), (None, 0.25, 3), (None, 1.0, 10), (1, None, 1)]
)
def test_a_count_and_a_fraction_of_clients_are_separate_arguments(count, fraction, expected):
    assert resolve_clients_per_round(count, 10, fraction) == expected


@pytest.mark.parametrize(
    ("count", "fraction", "match"),
    [
        (0.5, None, r"`clients_per_round=0.5` is not valid: it is a count .* pass client_fraction=0.5"),
        (3, 0.5, r"`clients_per_round=3` and `client_fraction=0.5` both choose"),
        (None, 1.5, r"`client_fraction=1.5` is not valid: pass the fraction of workers a round samples, in \(0, 1\]"),
        (11, None, r"`clients_per_round=11` is out of range: there are 10 workers"),
    ],
)
def test_bad_client_counts_name_the_fix(count, fraction, match):
    with pytest.raises(FederatedConfigError, match=match):
        resolve_clients_per_round(count, 10, fraction)


def test_the_command_line_keeps_a_count_an_int_and_a_fraction_a_float():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FederatedStrategy, "strategy")
    args = parser.parse_args(["--strategy.clients_per_round", "1", "--strategy.local_epochs", "2"])
    assert args.strategy.clients_per_round == 1 and isinstance(args.strategy.clients_per_round, int)
    args = parser.parse_args(["--strategy.client_fraction", "1"])
    assert args.strategy.client_fraction == 1.0 and args.strategy.clients_per_round is None


def test_a_client_fraction_samples_that_share_of_the_workers_each_round():
    strategy = FederatedStrategy(client_fraction=0.5, seed=3)
    trainer(max_epochs=2, strategy=strategy).fit(BoringClassifier(num_classes=3), datamodule=FedDM(tiny_dataset(32), 4))
    assert [len(strategy.round_plan(r).workers) for r in range(2)] == [2, 2]


def test_a_truncated_checkpoint_is_refused_naming_the_file_and_the_fix(tmp_path):
    fed = FedDM(tiny_dataset(32), 2)
    first = trainer(max_epochs=1, strategy=FederatedStrategy())
    first.fit(BoringClassifier(num_classes=3), datamodule=fed)
    first.save_checkpoint(tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])  # a save that was interrupted
    with pytest.raises(FederatedConfigError, match=r"`ckpt_path='.*cut\.ckpt'` cannot be read as a checkpoint .*trunc"):
        trainer(max_epochs=2, strategy=FederatedStrategy()).fit(
            BoringClassifier(num_classes=3), datamodule=fed, ckpt_path=tmp_path / "cut.ckpt"
        )

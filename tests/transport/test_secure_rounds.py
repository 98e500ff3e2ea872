"""Secure aggregation over site processes on 127.0.0.1: each site masks its own update; the server sees only sums.

Oracles: the in-process simulation with the same seeds (VirtualWorkers holding the same tensors, built here from the
generator's seeds, not from the sites' files), including a simulated run in which the killed site fails the same
round. The sites are started with ``--allow-seeded-secagg`` (test-only) so that both runs draw the same keys and
rounding; tests/transport/test_secagg.py shows an unseeded run equal to the simulation as well.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedStrategy
from lightning_fed.data import FederatedDataLoader
from lightning_fed.data.federated import FederatedDataset
from lightning_fed.data.sites import SiteDataModule
from lightning_fed.models import MNISTClassifier
from lightning_fed.secure_aggregation import SecureAggregationConfig
from lightning_fed.transport import RemoteWorker
from tests.transport.conftest import RestartableSite, Site, mnist_sites, site_tensors

SEEDS = {"alice": 5, "bob": 6, "dave": 9}
SIZES = {"alice": 24, "bob": 16, "dave": 16}
ACCEPTED = "lightning_fed.models.MNISTClassifier"
CONFIG = SecureAggregationConfig(seed=11)  # reproducible keys and rounding: the sites must allow it
SECAGG_KINDS = ("SecAggKeys", "SecAggShares", "SecAggUnmask")


@pytest.fixture(scope="module")
def secure_sites(tmp_path_factory: pytest.TempPathFactory, federation) -> Iterator[dict[str, Site]]:
    """alice and bob, mutual TLS, each serving its own MNIST folder, accepting MNISTClassifier and seeded rounds."""
    sizes = {s: SIZES[s] for s in ("alice", "bob")}
    args = ["--certs", str(federation), "--accept-model", ACCEPTED, "--allow-seeded-secagg"]
    with mnist_sites(tmp_path_factory.mktemp("secure-sites"), sizes, SEEDS, args) as started:
        yield started


def _tensors(site_id: str) -> TensorDataset:
    return site_tensors(SIZES[site_id], SEEDS[site_id])


class _Simulated(pl.LightningDataModule):
    def __init__(self, site_ids: tuple[str, ...], seed: int) -> None:
        super().__init__()
        workers = [sy.VirtualWorker(id=f"sim-{s}") for s in site_ids]
        parts = [_tensors(s) for s in site_ids]
        bounds = [0]
        for part in parts:
            bounds.append(bounds[-1] + len(part))
        partition = [list(range(bounds[i], bounds[i + 1])) for i in range(len(parts))]
        self.loader = FederatedDataLoader(FederatedDataset(ConcatDataset(parts), workers, partition), batch_size=8,
                                          shuffle=True, seed=seed)  # fmt: skip

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader


class _FailsInRound(MNISTClassifier):
    """The simulation's stand-in for a killed site: its training step raises for ``sim-<site>`` in one round."""

    fail: tuple[str, int] | None = None

    def training_step(self, batch, batch_idx):
        active = self.trainer.strategy.backend.rounds.active
        if self.fail is not None and (active.id, self.current_epoch) == self.fail:
            raise RuntimeError("killed")
        return super().training_step(batch, batch_idx)


def _fit(datamodule, aggregation: str, rounds: int = 2, model_class: type = MNISTClassifier, callbacks=(),
         **strategy) -> tuple[dict[str, torch.Tensor], FederatedStrategy, list[str]]:  # fmt: skip
    torch.manual_seed(0)
    model = model_class(lr=0.05, momentum=0.5)
    loaded: list[str] = []  # what the server loads into its module: never a site's state in a secure round
    original = model.load_state_dict
    model.load_state_dict = lambda state, *a, **k: loaded.append(sorted(state)[0]) or original(state, *a, **k)
    # one torch thread, as the sites train (OMP_NUM_THREADS=1): with "auto" the simulation's thread count follows the
    # load, and FedAdam's normalised step amplifies the other rounding past the tolerance (test_rounds.py likewise)
    strategy = {"num_threads": 1, **strategy}
    federated = FederatedStrategy(aggregation=aggregation, secure_aggregation=CONFIG, **strategy)
    trainer = pl.Trainer(strategy=federated, max_epochs=rounds, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=list(callbacks))  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, federated, loaded


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("aggregation", ["fedavg", "fedadam"])
def test_a_deployed_secure_run_equals_the_simulation(secure_sites, federation, aggregation):
    sites = [RemoteWorker(s, secure_sites[s].address, certs=federation, timeout=60) for s in ("alice", "bob")]
    deployed, strategy, loaded = _fit(SiteDataModule(sites, "mnist-train", batch_size=8, seed=3), aggregation)
    simulated, _, _ = _fit(_Simulated(("alice", "bob"), seed=3), aggregation)
    assert strategy.round_index == 2 and type(strategy.backend).__name__ == "RemoteBackend"
    assert _max_diff(deployed, simulated) < 1e-6, _max_diff(deployed, simulated)
    start = MNISTClassifier(lr=0.05, momentum=0.5).state_dict()  # the run did train: the oracle can fail
    assert any(not torch.equal(deployed[k], start[k]) for k in deployed if k.startswith("net."))
    assert loaded == []  # the server never loaded a site's model: it received none
    # what crossed the wire: the model down, one int64 masked vector of the model's size up, keys and shares (small)
    numel = sum(v.numel() for v in deployed.values())
    model_bytes = sum(v.numel() * v.element_size() for v in deployed.values())
    for site in sites:
        messages, sent, received = site.traffic["TrainRequest"]
        assert messages == 2
        assert model_bytes * 2 <= sent < model_bytes * 2 + 64_000  # the global model, twice
        assert numel * 8 * 2 <= received < numel * 8 * 2 + 64_000  # int64 masked vectors; no float32 model state
        for kind in SECAGG_KINDS:
            count, up, down = site.traffic[kind]
            assert count == 2 and up + down < 16_000, (kind, site.traffic[kind])
        assert set(site.traffic) <= {"TrainRequest", "SiteQuery", *SECAGG_KINDS}
        sent_rules = [r.rule for r in site.audit_log if r.kind == "update"][-2:]  # the site's record of what left
        assert sent_rules == ["secure_aggregation"] * 2


def test_a_site_killed_mid_round_is_recovered_and_rejoins(secure_sites, federation, tmp_path):
    """Dave shares its keys in round 1, then dies before its training: the round completes with alice and bob
    (min_clients=2, n - t = 1) and equals the simulation in which dave fails the same round; dave restarts after
    round 1 (its optimizer state from its --state-dir) and takes part in round 2 again."""
    extra = ("--allow-seeded-secagg", "--state-dir", str(tmp_path / "dave-state"))
    dave = RestartableSite(tmp_path, num_train=SIZES["dave"], seed=SEEDS["dave"], extra=extra, timeout=30)
    sites = [RemoteWorker(s, secure_sites[s].address, certs=federation, timeout=60) for s in ("alice", "bob")]
    train = dave.worker.train

    def killed_in_round_1(request):
        if request.round_index == 1:
            dave.kill()  # after its keys and shares (rounds 0 and 1 of the protocol), before its masked update
        return train(request)

    dave.worker.train = killed_in_round_1

    class Restart(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                dave.restart()

    try:
        with pytest.warns(UserWarning, match=r"worker 'dave' failed"):
            deployed, strategy, loaded = _fit(
                SiteDataModule([*sites, dave.worker], "mnist-train", batch_size=8, seed=3), "fedavg", rounds=3,
                callbacks=[Restart()], tolerate_failures=True, min_clients=2,
            )  # fmt: skip
    finally:
        dave.stop()
    summary = strategy.worker_summary()
    assert strategy.round_index == 3 and loaded == []
    assert summary["dave"]["failed"] == 1 and summary["alice"]["failed"] == 0
    assert dave.worker.traffic["SecAggShares"][0] == 3 and dave.worker.traffic["TrainRequest"][0] == 2
    _FailsInRound.fail = ("sim-dave", 1)
    with pytest.warns(UserWarning, match=r"worker 'sim-dave' failed"):
        simulated, sim_strategy, _ = _fit(_Simulated(("alice", "bob", "dave"), seed=3), "fedavg", rounds=3,
                                          model_class=_FailsInRound, tolerate_failures=True, min_clients=2)  # fmt: skip
    assert sim_strategy.worker_summary()["sim-dave"]["failed"] == 1
    assert _max_diff(deployed, simulated) < 1e-6, _max_diff(deployed, simulated)

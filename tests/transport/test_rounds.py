"""FedAvg over remote sites: two site processes on 127.0.0.1 (mutual TLS) train the rounds, the Trainer runs here.

The deployed run equals the in-process simulation with the same seed (the oracle: VirtualWorkers holding the same
tensors, built here from the generator's seeds, not from the sites' files); one request per sampled site per round,
model-sized both ways; a site refuses a model class its operator did not accept.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedStrategy
from lightning_fed.backends.remote import check_remote_aggregator
from lightning_fed.data import FederatedDataLoader
from lightning_fed.data.federated import FederatedDataset
from lightning_fed.data.sites import SiteDataModule, SiteLoader
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.models import MNISTClassifier
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.transport import RemoteWorker
from tests.transport.conftest import RestartableSite, Site, mnist_sites, site_tensors

SEEDS = {"alice": 5, "bob": 6}
SIZES = {"alice": 24, "bob": 16}
ACCEPTED = "lightning_fed.models.MNISTClassifier"
HOOKED = "tests.helpers.hooked_models.HalvedInputs"


@pytest.fixture(scope="module")
def training_sites(tmp_path_factory: pytest.TempPathFactory, federation) -> Iterator[dict[str, Site]]:
    """alice and bob, mutual TLS, each serving its own MNIST folder and accepting MNISTClassifier."""
    sizes = {s: SIZES[s] for s in ("alice", "bob")}
    args = ["--certs", str(federation), "--accept-model", ACCEPTED, "--accept-model", HOOKED]
    with mnist_sites(tmp_path_factory.mktemp("training-sites"), sizes, SEEDS, args) as started:
        yield started


def _remote(sites: dict[str, Site], federation) -> list[RemoteWorker]:
    return [RemoteWorker(s, sites[s].address, certs=federation, timeout=60) for s in SEEDS]


def _tensors(site_id: str) -> TensorDataset:
    return site_tensors(SIZES[site_id], SEEDS[site_id])


class _Simulated(pl.LightningDataModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        workers = [sy.VirtualWorker(id=f"sim-{s}") for s in SEEDS]
        parts = [_tensors(s) for s in SEEDS]
        bounds = [0, len(parts[0]), len(parts[0]) + len(parts[1])]
        partition = [list(range(bounds[i], bounds[i + 1])) for i in range(2)]
        fed = FederatedDataset(ConcatDataset(parts), workers, partition)
        self.loader = FederatedDataLoader(fed, batch_size=8, shuffle=True, seed=seed)

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader


def _fit(datamodule, aggregation: str, rounds: int = 2, model_class: type = MNISTClassifier,
         ) -> tuple[dict[str, torch.Tensor], FederatedStrategy]:  # fmt: skip
    torch.manual_seed(0)
    model = model_class(lr=0.05, momentum=0.5)
    # one torch thread, as the sites train (OMP_NUM_THREADS=1): "auto" would follow the machine's load, and another
    # thread count rounds the convolutions' sums differently, which FedAdam's normalised step amplifies past 1e-6
    if aggregation == "central-dp":  # client-level DP, the server's noise (seeded: both runs draw the same)
        strategy = FederatedStrategy(privacy=DPConfig(noise_multiplier=0.3, clip_norm=0.5, seed=7), num_threads=1)
    else:
        strategy = FederatedStrategy(aggregation=aggregation, num_threads=1)
    trainer = pl.Trainer(strategy=strategy, max_epochs=rounds, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, strategy


@pytest.mark.parametrize("aggregation", ["fedavg", "fedadam", "central-dp"])
def test_a_deployed_run_equals_the_simulation(training_sites, federation, aggregation):
    sites = _remote(training_sites, federation)
    sent_before = len([r for r in sites[0].audit_log if r.kind == "update"])  # the sites serve the whole module
    deployed, strategy = _fit(SiteDataModule(sites, "mnist-train", batch_size=8, seed=3), aggregation)
    simulated, _ = _fit(_Simulated(seed=3), aggregation)
    assert strategy.round_index == 2 and type(strategy.backend).__name__ == "RemoteBackend"
    diff = max((deployed[k].double() - simulated[k].double()).abs().max().item() for k in deployed)
    assert diff < 1e-6, diff
    start = MNISTClassifier(lr=0.05, momentum=0.5).state_dict()  # the run did train: the oracle can fail
    assert any(not torch.equal(deployed[k], start[k]) for k in deployed if k.startswith("net."))
    # what crossed the wire: one train request per site per round, each model-sized both ways, nothing data-sized
    model_bytes = sum(v.numel() * v.element_size() for v in deployed.values())
    for site in sites:
        messages, sent, received = site.traffic["TrainRequest"]
        assert messages == 2
        assert (
            model_bytes * 2 <= sent < model_bytes * 2 + 64_000
            and model_bytes * 2 <= received < model_bytes * 2 + 64_000
        )
        assert set(site.traffic) <= {"TrainRequest", "SiteQuery"}
    summary = strategy.worker_summary()
    assert summary["alice"]["steps"] == 2 * 3 and summary["bob"]["steps"] == 2 * 2  # 24 and 16 samples, batch 8
    sent = [r.rule for r in sites[0].audit_log if r.kind == "update"][sent_before:]  # the site's record of what left
    assert sent == ["release_model"] * 2


def test_the_modules_transfer_hooks_run_at_the_site_as_in_the_simulation(training_sites, federation):
    """A module whose ``on_after_batch_transfer`` unpacks its batch: the server's Lightning never hands it a site's
    work description, and the site runs it on each real batch, as the simulation does at its workers."""
    from tests.helpers.hooked_models import HalvedInputs

    sites = _remote(training_sites, federation)
    deployed, _ = _fit(SiteDataModule(sites, "mnist-train", batch_size=8, seed=3), "fedavg", model_class=HalvedInputs)
    simulated, _ = _fit(_Simulated(seed=3), "fedavg", model_class=HalvedInputs)
    unhooked, _ = _fit(_Simulated(seed=3), "fedavg")
    assert max((deployed[k] - simulated[k]).abs().max().item() for k in deployed) < 1e-6
    assert max((simulated[k] - unhooked[k]).abs().max().item() for k in deployed) > 1e-4  # the hook matters


def test_a_site_trains_only_the_model_classes_it_accepted(training_sites, federation):
    sites = _remote(training_sites, federation)

    class Unaccepted(MNISTClassifier):
        pass

    trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(PermissionDeniedError, match=r"this site does not accept model class '.*Unaccepted'.*accepted"):
        trainer.fit(Unaccepted(), datamodule=SiteDataModule(sites, "mnist-train", batch_size=8))


def test_remote_sites_refuse_aggregators_that_run_code_at_the_worker(training_sites, federation):
    sites = _remote(training_sites, federation)
    with pytest.raises(FederatedConfigError, match=r"remote sites run only their training"):
        _fit(SiteDataModule(sites, "mnist-train", batch_size=8), "scaffold", rounds=1)
    with pytest.raises(FederatedConfigError, match=r"serves no dataset 'cifar' \(it serves \['mnist-train'\]\)"):
        SiteLoader(sites, "cifar")
    with pytest.raises(FederatedConfigError, match=r"pass the remote workers"):
        SiteLoader([sy.VirtualWorker(id="local-only")], "mnist-train")
    with pytest.raises(FederatedConfigError, match=r"not iterated batch by batch"):
        iter(SiteLoader(sites, "mnist-train")).__next__()
    check_remote_aggregator(FederatedStrategy(aggregation="fedyogi").aggregator)  # server-side: accepted


def test_a_killed_site_is_left_out_and_rejoins_after_a_restart(training_sites, federation, tmp_path):
    """Dave is killed after round 0; round 1 completes with alice (min_clients=1, tolerate_failures=True). Dave
    restarts on its address before round 2 and trains in it again."""
    dave = RestartableSite(tmp_path, num_train=16, seed=9, timeout=20)
    alice = RemoteWorker("alice", training_sites["alice"].address, certs=federation, timeout=60)

    class Faults(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                dave.kill()
            if trainer.current_epoch == 1:
                dave.restart()

    strategy = FederatedStrategy(tolerate_failures=True, min_clients=1)
    trainer = pl.Trainer(strategy=strategy, max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Faults()])  # fmt: skip
    try:
        with pytest.warns(UserWarning, match=r"worker 'dave' failed"):
            trainer.fit(
                MNISTClassifier(lr=0.05), datamodule=SiteDataModule([alice, dave.worker], "mnist-train", batch_size=8)
            )
    finally:
        dave.stop()
    summary = strategy.worker_summary()
    assert strategy.round_index == 3
    assert summary["dave"]["failed"] == 1 and summary["dave"]["steps"] == 2 * 2  # rounds 0 and 2, 16 images each
    assert summary["alice"]["failed"] == 0 and summary["alice"]["steps"] == 3 * 3


@pytest.mark.parametrize("keep_state", [True, False], ids=["state-dir", "no-state-dir"])
def test_a_site_restarted_between_rounds_goes_on_from_its_own_state(training_sites, federation, tmp_path, keep_state):
    """Dave is killed after round 0 and restarted before round 1 (it misses nothing). With --state-dir it reloads its
    optimizer state (momentum) from its own disk and the run equals the simulation; without, the momentum is lost and
    the run differs (the oracle can fail)."""
    extra = ("--state-dir", str(tmp_path / "dave-state")) if keep_state else ()
    dave = RestartableSite(tmp_path, num_train=SIZES["bob"], seed=SEEDS["bob"], extra=extra)  # bob's data, as dave
    alice = RemoteWorker("alice", training_sites["alice"].address, certs=federation, timeout=60)

    class Restart(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                dave.kill()
                dave.restart()

    try:
        torch.manual_seed(0)
        model = MNISTClassifier(lr=0.05, momentum=0.5)
        trainer = pl.Trainer(strategy=FederatedStrategy(), max_epochs=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[Restart()])  # fmt: skip
        trainer.fit(model, datamodule=SiteDataModule([alice, dave.worker], "mnist-train", batch_size=8, seed=3))
    finally:
        dave.stop()
    deployed = {k: v.detach() for k, v in model.state_dict().items()}
    simulated, _ = _fit(_Simulated(seed=3), "fedavg")
    diff = max((deployed[k].double() - simulated[k].double()).abs().max().item() for k in deployed)
    assert (diff < 1e-6) is keep_state, diff


def test_the_cli_trains_deployed_sites_from_a_yaml_list_of_addresses(training_sites, federation, tmp_path, capsys):
    """Deployed or simulated is configuration: site addresses take the place of worker names."""
    from lightning_fed.cli import main

    sites = _remote(training_sites, federation)
    before = {s.id: len([r for r in s.audit_log if r.kind == "update"]) for s in sites}
    addresses = ", ".join(f'"{s}={training_sites[s].address}"' for s in SEEDS)
    config = tmp_path / "deployed.yaml"
    config.write_text(
        "model:\n  class_path: lightning_fed.models.MNISTClassifier\n"
        "data:\n  class_path: lightning_fed.data.sites.SiteDataModule\n  init_args:\n"
        f"    sites: [{addresses}]\n    certs: {federation}\n    dataset: mnist-train\n    batch_size: 8\n"
        "trainer:\n  max_epochs: 1\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
        f"  default_root_dir: {tmp_path}\n"  # LightningCLI saves its config.yaml there, not in the working directory
    )
    assert main(["fit", "--config", str(config)]) == 0, capsys.readouterr().err[-2000:]
    after = {s.id: len([r for r in s.audit_log if r.kind == "update"]) for s in sites}
    assert after == {site: count + 1 for site, count in before.items()}  # one round: each site sent one model
    with pytest.raises(
        FederatedConfigError, match=r"`sites` item 'alice' is not valid: write a site as 'ID=HOST:PORT'"
    ):
        SiteDataModule(["alice"], certs=str(federation))

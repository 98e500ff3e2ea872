"""Secure aggregation with remote sites, in process: the site's side (transport.secagg), the server's side
(secure_aggregation.remote) over gRPC on 127.0.0.1, and a Trainer over in-process sites (plaintext, loopback).

Oracles: the unmasked sum equals the plain sum of the survivors' quantized inputs (exact, in the ring); the deployed
run equals the simulation bit for bit with deterministic rounding and no seed (keys from the operating system).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

import lightning_fed as sy
from lightning_fed import FederatedStrategy
from lightning_fed.backends.remote import check_remote_aggregator
from lightning_fed.data import FederatedDataLoader
from lightning_fed.data.federated import FederatedDataset
from lightning_fed.data.sites import SiteDataModule
from lightning_fed.exceptions import FederatedConfigError, PermissionDeniedError
from lightning_fed.privacy.dp import DPConfig
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregationError, dequantize, quantize
from lightning_fed.secure_aggregation.remote import RemoteSecureAggregationRound
from lightning_fed.testing import BoringClassifier
from lightning_fed.transport import RemoteWorker
from lightning_fed.transport.errors import SiteUnavailableError
from lightning_fed.transport.secagg import SecAggInput, SecAggKeys, SecAggShares, SecAggUnmask, SiteSecAgg
from lightning_fed.transport.server import SiteServer, SiteWorker
from lightning_fed.transport.wire import decode_request, encode_request

NEAREST = SecureAggregationConfig(rounding="nearest", fractional_bits=8, clip=1000.0)
BORING = "lightning_fed.testing.BoringClassifier"


class Sites:
    """In-process sites on 127.0.0.1 (plaintext), their RemoteWorkers and an executor; all closed at the end."""

    def __init__(self, ids: tuple[str, ...], data: dict[str, TensorDataset] | None = None, **site_kwargs) -> None:
        self.site = {w: SiteWorker(w, accepted_models={BORING: BoringClassifier}, **site_kwargs) for w in ids}
        for w, part in (data or {}).items():
            self.site[w].add_dataset("toy", *part.tensors)
        self.server = {w: SiteServer(s, "127.0.0.1:0", insecure=True) for w, s in self.site.items()}
        self.remote = {w: RemoteWorker(w, f"127.0.0.1:{s.start()}", insecure=True, timeout=20)
                       for w, s in self.server.items()}  # fmt: skip
        self.pool = ThreadPoolExecutor(4)

    def round(
        self, config: SecureAggregationConfig = NEAREST, numel: int = 3, **kwargs
    ) -> RemoteSecureAggregationRound:
        return RemoteSecureAggregationRound(list(self.site), numel, config, sites=self.remote, federation="run1",
                                            executor=self.pool, **kwargs)  # fmt: skip

    def send(self, protocol: RemoteSecureAggregationRound, worker: str, update: torch.Tensor, weight: float) -> None:
        """Round 2 for one site: the site masks ``update`` at home; the server receives and accepts the result."""
        masked, clipped = self.site[worker].secagg.masked_input(
            "run1", protocol.train_input(worker, weight), [update], [torch.float64]
        )
        protocol.receive(worker, masked, clipped)
        protocol.accept(worker, weight)

    def close(self) -> None:
        for remote in self.remote.values():
            remote._channel.close()
        for server in self.server.values():
            server.stop(grace=None)
        self.pool.shutdown()


@pytest.fixture
def trio() -> Iterator[Sites]:
    sites = Sites(("sa", "sb", "sc"))
    yield sites
    sites.close()


UPDATES = {"sa": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), "sb": torch.tensor([3.0, 0.25, -1.0]).double(),
           "sc": torch.tensor([-7.0, 4.0, 2.0], dtype=torch.float64)}  # fmt: skip
WEIGHTS = {"sa": 2.0, "sb": 3.0, "sc": 5.0}


def plain_sum(workers: list[str]) -> torch.Tensor:
    return sum(WEIGHTS[w] * UPDATES[w] for w in workers)


def unmasked(protocol: RemoteSecureAggregationRound, config: SecureAggregationConfig = NEAREST) -> torch.Tensor:
    return dequantize(protocol.finish(), fractional_bits=config.fractional_bits, bits=config.bits)


def test_sites_mask_at_home_and_a_dropped_site_is_recovered(trio):
    """Three sites share keys; sc fails before sending its masked update; the server unmasks the sum of sa and sb."""
    protocol = trio.round()
    assert sorted(protocol.inboxes) == ["sa", "sb", "sc"] and protocol.left_out == {}
    for w in ("sa", "sb"):
        trio.send(protocol, w, UPDATES[w], WEIGHTS[w])
    protocol.drop("sc")
    assert torch.equal(unmasked(protocol), plain_sum(["sa", "sb"]))  # dyadic values, nearest rounding: exact
    assert trio.site["sa"].secagg.open_rounds == [] == trio.site["sb"].secagg.open_rounds  # forgotten in round 3
    assert trio.site["sc"].secagg.open_rounds == [("run1", 0)]  # no round 3 for it: gone at its next round 0
    with pytest.raises(SecureAggregationError, match=r"'sa''s secure-aggregation client is at its site"):
        protocol.client("sa")  # the server holds no participant's secrets


def test_the_server_receives_only_masked_vectors(trio):
    protocol = trio.round()
    masked, _ = trio.site["sa"].secagg.masked_input("run1", protocol.train_input("sa", 2.0), [UPDATES["sa"]],
                                                     [torch.float64])  # fmt: skip
    q = quantize(2.0 * UPDATES["sa"], clip=NEAREST.clip, fractional_bits=8, bits=64, rounding="nearest")
    assert masked.dtype == torch.int64 and not torch.equal(masked, q) and (masked - q).abs().min() > 2**20
    with pytest.raises(SecureAggregationError, match=r"already sent its masked update in round 0"):
        trio.site["sa"].secagg.masked_input("run1", protocol.train_input("sa", 2.0), [UPDATES["sa"]], [torch.float64])
    protocol.train_input("sb", 3.0)
    protocol.receive("sb", torch.zeros(3), 0)  # a float vector is refused when it would join the sum
    with pytest.raises(TypeError, match=r"masked int64 ring vectors of length 3 only, got Tensor torch.float32"):
        protocol.accept("sb", 3.0)
    with pytest.raises(
        SecureAggregationError, match=r"weighted its update by 2.0, the round delivers it with weight 9"
    ):
        protocol.receive("sa", masked, 0) or protocol.accept("sa", 9.0)
    with pytest.raises(SecureAggregationError, match=r"answered its secure-aggregation round without a masked update"):
        protocol.receive("sa", None, None)


def test_a_site_down_at_the_key_exchange_is_left_out(trio):
    trio.server["sc"].stop(grace=None)
    with pytest.raises(SiteUnavailableError, match=r"worker 'sc' at 127.0.0.1:\d+ is unavailable"):
        trio.round(tolerate_failures=False)
    protocol = trio.round()
    assert sorted(protocol.inboxes) == ["sa", "sb"] and isinstance(protocol.left_out["sc"], SiteUnavailableError)
    with pytest.raises(SiteUnavailableError):
        protocol.train_input("sc", 5.0)  # the backend records this as the site's failure in the round
    for w in ("sa", "sb"):
        trio.send(protocol, w, UPDATES[w], WEIGHTS[w])
    protocol.drop("sc")
    assert torch.equal(unmasked(protocol), plain_sum(["sa", "sb"]))


def test_more_than_n_minus_t_dropouts_raise(trio):
    protocol = trio.round()  # n = 3, t = 2
    trio.send(protocol, "sa", UPDATES["sa"], WEIGHTS["sa"])
    protocol.drop("sb")
    protocol.drop("sc")
    with pytest.raises(SecureAggregationError, match=r"2 of 3 participants dropped out .* at most n - t = 1 dropouts"):
        protocol.finish()


def test_a_restarted_site_has_no_client_and_is_the_rounds_dropout(trio):
    protocol = trio.round()
    trio.site["sc"].secagg = SiteSecAgg("sc")  # what a restart leaves: no client in memory
    with pytest.raises(SecureAggregationError, match=r"holds no secure-aggregation client .* this round's dropout"):
        trio.site["sc"].secagg.masked_input("run1", protocol.train_input("sc", 5.0), [UPDATES["sc"]], [torch.float64])
    for w in ("sa", "sb"):
        trio.send(protocol, w, UPDATES[w], WEIGHTS[w])
    protocol.drop("sc")
    assert torch.equal(unmasked(protocol), plain_sum(["sa", "sb"]))
    with pytest.raises(SecureAggregationError, match=r"holds no secure-aggregation client"):  # round 3 forgot it
        trio.site["sa"].secagg.unmask(SecAggUnmask("run1", 0, ("sa", "sb"), ("sc",)))


def test_a_seeded_round_is_refused_without_the_flag(trio, caplog):
    seeded = SecureAggregationConfig(seed=7)
    refused = pytest.raises(PermissionDeniedError, match=r"refuses a seeded secure-aggregation round .*--allow-seeded")
    with caplog.at_level(logging.INFO, logger="lightning_fed.transport.site"), refused:
        trio.round(seeded)
    assert "lightning-fed worker --allow-seeded-secagg" in caplog.text  # the site's own log line names the flag
    allowed = Sites(("sd", "se"), allow_seeded_secagg=True)
    try:
        assert sorted(allowed.round(seeded).inboxes) == ["sd", "se"]
    finally:
        allowed.close()


def test_secure_aggregation_messages_cross_the_wire_typed():
    messages = [
        SecAggKeys("run1", 3, ("a", "b"), {"seed": None, "bits": 64, "clip": 2.5}),
        SecAggShares("run1", 3, {"a": (1, b"\x01" * 32, b"\x02" * 32), "b": (2, b"\x03" * 32, b"\x04" * 32)}),
        SecAggUnmask("run1", 3, ("a",), ("b",)),
    ]
    for message in messages:
        assert decode_request(encode_request(message))[0] == message
    site = SiteSecAgg("a")
    with pytest.raises(FederatedConfigError, match=r"secure-aggregation config it cannot read"):
        site.advertise(SecAggKeys("run1", 0, ("a", "b"), {"colour": "red"}))
    with pytest.raises(SecureAggregationError, match=r"'a' is not among the round's participants \['x', 'y'\]"):
        site.advertise(SecAggKeys("run1", 0, ("x", "y"), {}))
    inp = SecAggInput(0, {"b": b"\x00" * 8}, 2.0, 3)
    assert decode_request(encode_request(sy_train_request(inp)))[0].secagg == inp


def sy_train_request(secagg: SecAggInput):
    from lightning_fed.transport.training import TrainRequest

    return TrainRequest("run1", BORING, {}, {}, "toy", [[0]], 0, False, secagg)


def test_remote_sites_accept_secure_aggregation_around_a_server_side_sum_only():
    secure = SecureAggregationConfig()
    check_remote_aggregator(FederatedStrategy(aggregation="fedadam", secure_aggregation=secure).aggregator)
    with pytest.raises(FederatedConfigError, match=r"remote sites run only their training and secure aggregation"):
        check_remote_aggregator(FederatedStrategy(aggregation="fedprox", secure_aggregation=True).aggregator)
    noise = DPConfig(noise_multiplier=0.3, clip_norm=0.5, noise="distributed")
    with pytest.raises(FederatedConfigError, match=r"DPAggregator: clipping, noise .* simulated workers for distrib"):
        check_remote_aggregator(FederatedStrategy(secure_aggregation=True, privacy=noise).aggregator)


# -- a Trainer over in-process sites --------------------------------------------------------------------------------
PARTS = {w: TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(s)), torch.arange(n) % 2)
         for w, n, s in (("ta", 12, 1), ("tb", 8, 2))}  # fmt: skip


class _Simulated(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        workers = [sy.VirtualWorker(id=f"sim-{w}") for w in PARTS]
        bounds = [0, len(PARTS["ta"]), len(PARTS["ta"]) + len(PARTS["tb"])]
        fed = FederatedDataset(ConcatDataset(list(PARTS.values())), workers, [list(range(bounds[i], bounds[i + 1]))
                                                                               for i in range(2)])  # fmt: skip
        self.loader = FederatedDataLoader(fed, batch_size=4, shuffle=True, seed=1)

    def train_dataloader(self) -> FederatedDataLoader:
        return self.loader


def _fit(datamodule, config: SecureAggregationConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BoringClassifier(4, 2, hidden=3, lr=0.3)
    trainer = pl.Trainer(strategy=FederatedStrategy(secure_aggregation=config), max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_an_unseeded_deployed_round_equals_the_simulation_and_a_seeded_one_is_refused():
    """Keys from the operating system at each site (no seed): masks cancel exactly, and deterministic rounding makes
    the deployed run equal the simulation bit for bit. A seeded config is refused by these sites (no flag)."""
    sites = Sites(tuple(PARTS), PARTS)
    try:
        config = SecureAggregationConfig(rounding="nearest")
        deployed = _fit(SiteDataModule(list(sites.remote.values()), "toy", batch_size=4, seed=1), config)
        simulated = _fit(_Simulated(), config)
        assert all(torch.equal(deployed[k], simulated[k]) for k in deployed)
        assert not torch.equal(deployed["net.0.weight"], BoringClassifier(4, 2, hidden=3).state_dict()["net.0.weight"])
        assert [r.rule for r in sites.remote["ta"].audit_log if r.kind == "update"] == ["secure_aggregation"] * 2
        with pytest.raises(PermissionDeniedError, match=r"site 'ta' refuses a seeded .* --allow-seeded-secagg"):
            _fit(SiteDataModule(list(sites.remote.values()), "toy", batch_size=4), SecureAggregationConfig(seed=1))
    finally:
        sites.close()

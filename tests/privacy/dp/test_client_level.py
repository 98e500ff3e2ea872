"""DP-FedAvg (DPAggregator): clipping bounds (fixed and adaptive), the noise's standard deviation (server-side and
distributed), explicit weights, one accountant step per round, resume, target epsilon, and its errors."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest
import torch
from torch import Tensor

from lightning_fed.aggregation import SCAFFOLD, FedAvg, FedMedian
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.privacy.dp import DPAggregator, DPConfig
from lightning_fed.privacy.dp import accountant as accountant_module
from lightning_fed.privacy.dp.functional import global_norm
from tests.privacy.dp.test_functional import N, std_matches

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant


class SpyFedAvg(FedAvg):
    """FedAvg that records what reaches its sum."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[list[Tensor], float, Hashable]] = []

    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
        self.seen.append(([t.clone() for t in update], weight, worker_id))
        super().accumulate(update, weight, worker_id)


def make(inner=None, workers: int = 10, per_round: int = 4, **cfg) -> DPAggregator:
    agg = DPAggregator(inner or FedAvg(), DPConfig(**{"noise_multiplier": 1.0, "clip_norm": 1.0, "seed": 0, **cfg}))
    agg.setup([f"w{i}" for i in range(workers)])
    agg.check_num_clients(per_round)
    return agg


def run_round(agg, global_tensors, updates, weights=None):
    agg.begin_round(global_tensors)
    sent = {}
    for worker_id, update in updates.items():
        agg.worker_start(worker_id, global_tensors)
        sent[worker_id] = agg.worker_update(worker_id, [t.double() for t in update], num_steps=1, lr=0.1)
        agg.accumulate(sent[worker_id], weight=(weights or {}).get(worker_id, 10), worker_id=worker_id)
    return agg.finalize(global_tensors), sent


def random_updates(round_index: int, count: int = 4, size: int = 6, scale: float = 2.0):
    g = torch.Generator().manual_seed(100 + round_index)
    return {
        f"w{i}": [torch.randn(size, generator=g) * scale * (i + 1) / count, torch.randn(2, generator=g)]
        for i in range(count)
    }


def test_refuses_non_sum_inner_and_wrong_level():
    with pytest.raises(
        FederatedConfigError,
        match=r"DPConfig\(level='client'\).*`aggregation=FedMedian\(\)` is not a sum \(is_sum=False\)",
    ):
        DPAggregator(FedMedian(), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    with pytest.raises(FederatedConfigError, match=r"DPAggregator adds client-level DP.*DPConfig\(level='client'"):
        DPAggregator(FedAvg(), DPConfig(level="sample", noise_multiplier=1.0, clip_norm=1.0))
    with pytest.raises(
        FederatedConfigError, match=r"cannot wrap `aggregation='scaffold'`: SCAFFOLD's control variates"
    ):
        DPAggregator(SCAFFOLD(), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    with pytest.raises(FederatedConfigError, match="`inner='fedavg'` is not an Aggregator"):
        DPAggregator("fedavg", DPConfig(noise_multiplier=1.0, clip_norm=1.0))


@pytest.mark.parametrize("adaptive", [False, True])
def test_every_update_is_clipped_to_the_rounds_clip_norm(adaptive):
    spy = SpyFedAvg()
    cfg = {"adaptive_clipping": True, "noise_multiplier": 0.5, "clipped_count_stddev": 1.0} if adaptive else {}
    agg = make(spy, **{"noise_multiplier": 0.0, "clip_norm": 0.5, **cfg})
    global_tensors = [torch.zeros(6), torch.zeros(2)]
    norms_seen = []
    for r in range(6):
        clip = agg.clip_norm
        spy.seen.clear()
        _, sent = run_round(agg, global_tensors, random_updates(r))
        assert all(global_norm(u) <= clip for u in sent.values())  # what each worker sends
        if not adaptive:  # without noise the inner sum receives exactly the clipped updates
            assert all(global_norm(u) <= clip and w == 1.0 for u, w, _ in spy.seen)
        norms_seen.append(clip)
    if adaptive:
        assert len(set(norms_seen)) > 1  # the bound moved


def test_integer_buffers_are_sent_as_zeros_and_left_out_of_the_norm():
    agg = make(noise_multiplier=0.0)
    global_tensors = [torch.zeros(2), torch.zeros((), dtype=torch.long)]
    agg.begin_round(global_tensors)
    sent = agg.worker_update(
        "w0", [torch.tensor([0.3, 0.4], dtype=torch.float64), torch.tensor(7.0, dtype=torch.float64)], 1, 0.1
    )
    assert torch.equal(sent[0], torch.tensor([0.3, 0.4], dtype=torch.float64)) and float(sent[1]) == 0.0


@pytest.mark.parametrize("noise", ["server", "distributed"])
def test_noise_on_the_sum_has_std_z_c_and_a_wrong_z_fails(noise):
    z, c, k = 1.2, 0.5, 4
    agg = make(noise_multiplier=z, clip_norm=c, noise=noise, per_round=k)
    global_tensors = [torch.zeros(N, dtype=torch.float64)]
    new, sent = run_round(agg, global_tensors, {f"w{i}": [torch.zeros(N)] for i in range(k)})
    noisy_sum = new[0] * k  # the inner FedAvg divides the noisy sum by the k contributions
    assert std_matches(noisy_sum, z * c)
    assert not std_matches(noisy_sum, 1.05 * z * c)
    if noise == "distributed":  # each worker's share: N(0, (z C)^2 / k)
        assert std_matches(sent["w0"][0], z * c / k**0.5)
    else:
        assert all(torch.equal(u[0], torch.zeros(N, dtype=torch.float64)) for u in sent.values())


def test_weights_are_explicit_uniform_or_capped():
    updates = {"w0": [torch.tensor([0.2])], "w1": [torch.tensor([0.4])]}
    agg = make(noise_multiplier=0.0)
    new, _ = run_round(agg, [torch.zeros(1)], updates, weights={"w0": 5, "w1": 500})
    assert agg.last_weights == {"w0": 1.0, "w1": 1.0} and torch.allclose(new[0], torch.tensor([0.3]))
    agg = make(noise_multiplier=0.0, weighting="capped", weight_cap=10)
    new, _ = run_round(agg, [torch.zeros(1)], updates, weights={"w0": 5, "w1": 500})
    assert agg.last_weights == {"w0": 0.5, "w1": 1.0}
    assert torch.allclose(new[0], torch.tensor([(0.5 * 0.2 + 0.4) / 2]))  # divided by the contributions, not samples


def test_one_accountant_step_per_round_at_the_client_sampling_rate():
    agg = make(noise_multiplier=1.1, workers=10, per_round=2)
    for r in range(3):
        run_round(agg, [torch.zeros(6), torch.zeros(2)], random_updates(r, count=2))
    assert agg.accountant.history == [(1.1, 0.2, 3)] and agg.rounds == 3
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=0.2)
    assert agg.epsilon() == reference.get_epsilon(delta=1e-5)
    assert agg.metrics()["dp/epsilon"] == agg.epsilon()
    unknown = DPAggregator(FedAvg(), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    assert unknown.sample_rate == 1.0  # not told: conservative


@pytest.mark.parametrize("noise", ["server", "distributed"])
def test_resume_from_state_dict_continues_the_same_run(noise):
    cfg = dict(noise_multiplier=0.8, adaptive_clipping=True, clipped_count_stddev=2.0, noise=noise)
    global_tensors = [torch.zeros(6), torch.zeros(2)]
    straight = make(**cfg)
    outputs = [run_round(straight, global_tensors, random_updates(r))[0] for r in range(4)]
    first = make(**cfg)
    for r in range(2):
        run_round(first, global_tensors, random_updates(r))
    state = first.state_dict()
    resumed = make(**{**cfg, "seed": 123})  # the state, not the seed, decides what follows
    resumed.load_state_dict(state)
    assert resumed.epsilon() == first.epsilon() and resumed.clip_norm == first.clip_norm
    for r in range(2, 4):
        out, _ = run_round(resumed, global_tensors, random_updates(r))
        assert all(torch.equal(a, b) for a, b in zip(out, outputs[r]))
    assert resumed.epsilon() == straight.epsilon() and resumed.accountant.history == straight.accountant.history
    assert resumed.clip_norm == straight.clip_norm
    resumed.load_state_dict({})  # the strategy's "no saved state"


def test_target_epsilon_stops_before_it_is_passed():
    agg = make(noise_multiplier=1.0, target_epsilon=6.0, workers=10, per_round=2)
    rounds = 0
    while not agg.should_stop:
        run_round(agg, [torch.zeros(6), torch.zeros(2)], random_updates(rounds, count=2))
        rounds += 1
        assert rounds < 500
    assert rounds > 1 and agg.epsilon() <= 6.0
    assert agg.accountant.epsilon_after(1e-5, noise_multiplier=1.0, sample_rate=0.2) > 6.0
    assert not make().should_stop  # no target, no stop


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_target_epsilon_calibrates_the_noise_multiplier_for_num_rounds():
    agg = make(noise_multiplier=None, target_epsilon=2.0, num_rounds=5, workers=5, per_round=5)
    z = agg.noise_multiplier
    assert z is not None and z > 0
    for r in range(5):
        assert not agg.should_stop
        run_round(agg, [torch.zeros(6), torch.zeros(2)], random_updates(r, count=5))
    assert agg.accountant.history == [(z, 1.0, 5)]
    assert 1.98 <= agg.epsilon() <= 2.0 and agg.should_stop


def test_errors():
    with pytest.raises(FederatedConfigError, match=r"`clipped_count_stddev=0.1` is too small for noise_multiplier=1.0"):
        make(adaptive_clipping=True, clipped_count_stddev=0.1)
    lonely = DPAggregator(FedAvg(), DPConfig(noise_multiplier=1.0, clip_norm=1.0, noise="distributed"))
    lonely.begin_round([torch.zeros(1)])
    with pytest.raises(LightningFedError, match="pass clients_per_round="):
        lonely.worker_update("a", [torch.zeros(1, dtype=torch.float64)], 1, 0.1)
    agg = make(noise="distributed")
    agg.begin_round([torch.zeros(1)])
    with pytest.raises(LightningFedError, match="update of worker 'w0' without its worker_update"):
        agg.accumulate([torch.zeros(1)], weight=1, worker_id="w0")
    with pytest.raises(LightningFedError, match="no worker contributed"):
        agg.finalize([torch.zeros(1)])


def test_setup_without_opacus_names_the_extra(monkeypatch):
    def no_opacus(name, *args, **kwargs):
        raise ImportError(name)

    monkeypatch.setattr(accountant_module.importlib, "import_module", no_opacus)
    with pytest.raises(ImportError, match=r"client-level differential privacy.*pip install 'lightning-fed\[privacy\]'"):
        DPAggregator(FedAvg(), DPConfig(noise_multiplier=1.0, clip_norm=1.0)).setup(["a"])


def test_an_aggregator_whose_constructor_raised_can_be_printed_in_its_traceback():
    from lightning_fed.privacy.dp import DPSGDAggregator
    from lightning_fed.secure_aggregation import SecureAggregator

    with pytest.raises(FederatedConfigError) as caught:
        DPAggregator(SecureAggregator(FedAvg()), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    half_built = caught.traceback[-1].locals["self"]  # what a traceback with locals or a debugger shows
    assert repr(half_built) == "DPAggregator(<not constructed>)"
    assert repr(object.__new__(DPSGDAggregator)) == "DPSGDAggregator(<not constructed>)"


def test_distributed_noise_composes_with_secure_aggregation():
    from lightning_fed.secure_aggregation import SecureAggregator

    with pytest.raises(
        FederatedConfigError, match=r"DPConfig\(noise='server'\).*secure aggregation.*noise='distributed'"
    ):
        DPAggregator(SecureAggregator(FedAvg()), DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    updates = random_updates(0)
    global_tensors = [torch.zeros(6), torch.zeros(2)]
    secure = make(SecureAggregator(FedAvg()), noise="distributed", per_round=4)
    secure.set_participants(list(updates))
    secured, _ = run_round(secure, global_tensors, updates)
    plain = make(noise="distributed", per_round=4)  # the same seed: the same clipping and noise shares
    expected, _ = run_round(plain, global_tensors, updates)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(secured, expected))  # up to fixed-point rounding
    assert secure.accountant.history == plain.accountant.history == [(1.0, 0.4, 1)]

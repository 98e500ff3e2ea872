"""``SecureAggregator``: FedAvg's result within the quantization bound; the server side never holds an update."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_fed.aggregation import AGGREGATORS, SCAFFOLD, Aggregator, FedAvg, FedAvgM, FedMedian
from lightning_fed.exceptions import FederatedConfigError, LightningFedError
from lightning_fed.secure_aggregation import (
    SecAggClient,
    SecAggServer,
    SecureAggregationConfig,
    SecureAggregationError,
    SecureAggregationRound,
    SecureAggregator,
    quantize,
)
from lightning_fed.secure_aggregation.quantization import MASK32, error_bound

SHAPES = [(3, 4), (5,), ()]


def model_update(seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) * 0.1 for s in SHAPES]


def global_model() -> list[Tensor]:
    return [torch.ones(s, dtype=torch.float64) for s in SHAPES]


def weights(n: int) -> list[float]:
    return [float(5 + 3 * i) for i in range(n)]


CONFIG = SecureAggregationConfig(bits=32, clip=64.0, fractional_bits=20, seed=11)


def run_round(agg: Aggregator, n: int, dropouts: int, participants: bool = True) -> list[Tensor]:
    ids = [f"w{i}" for i in range(n)]
    if participants and isinstance(agg, SecureAggregator):
        agg.begin_round(global_model(), participants=ids)
    else:
        agg.begin_round(global_model())
    for i, w in enumerate(ids):
        if 0 < i <= dropouts:
            if isinstance(agg, SecureAggregator):
                agg.drop(w)
            continue
        agg.accumulate(model_update(i), weights(n)[i], w)
    return agg.finalize(global_model())


CASES = [(2, 0), (5, 0), (5, 1), (5, 2), (20, 0), (20, 1), (20, 9)]


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize(("n", "dropouts"), CASES)
def test_secure_fedavg_equals_fedavg_within_the_quantization_bound(n: int, dropouts: int, rounding: str) -> None:
    config = SecureAggregationConfig(bits=32, clip=64.0, fractional_bits=20, rounding=rounding, seed=11)
    secure = run_round(SecureAggregator(FedAvg(), config), n, dropouts)
    plain = run_round(FedAvg(), n, dropouts)
    survivors = n - dropouts
    total = sum(w for i, w in enumerate(weights(n)) if not 0 < i <= dropouts)
    bound = error_bound(survivors, config.fractional_bits, rounding) / total
    for s, p in zip(secure, plain):
        assert s.dtype == p.dtype and s.shape == p.shape
        assert (s - p).abs().max() <= bound + 1e-15
    assert any((s - p).abs().max() > 0 for s, p in zip(secure, plain))  # quantized: not bit-identical


@pytest.mark.parametrize(("n", "dropouts"), [(2, 0), (5, 2), (20, 9)])
def test_the_unmasked_sum_is_the_plain_quantized_sum_exactly(n: int, dropouts: int, monkeypatch: Any) -> None:
    """Through the wrapper: spy on what each client masks and on what the protocol returns."""
    masked_inputs: dict[Hashable, Tensor] = {}
    results: list[Tensor] = []
    mask, finish = SecAggClient.mask, SecureAggregationRound.finish

    def spy_mask(self: SecAggClient, x: Tensor) -> Tensor:
        masked_inputs[self.worker_id] = x.clone()
        return mask(self, x)

    def spy_finish(self: SecureAggregationRound) -> Tensor:
        results.append(finish(self))
        return results[-1]

    monkeypatch.setattr(SecAggClient, "mask", spy_mask)
    monkeypatch.setattr(SecureAggregationRound, "finish", spy_finish)
    run_round(SecureAggregator(FedAvg(), CONFIG), n, dropouts)
    assert len(masked_inputs) == n - dropouts
    assert torch.equal(results[0], torch.stack(list(masked_inputs.values())).sum(0) & MASK32)
    # and each quantized input is weight * update, quantized (nearest rounding is deterministic: recompute it)
    cfg = SecureAggregationConfig(bits=32, clip=64.0, fractional_bits=20, rounding="nearest")
    masked_inputs.clear()
    run_round(SecureAggregator(FedAvg(), cfg), n, 0)
    for i in range(n):
        flat = torch.cat([u.reshape(-1) for u in model_update(i)]) * weights(n)[i]
        expected = quantize(flat, clip=64.0, fractional_bits=20, bits=32, rounding="nearest")
        assert torch.equal(masked_inputs[f"w{i}"], expected)


def test_the_server_receives_only_masked_vectors_and_stores_only_their_sum(monkeypatch: Any) -> None:
    received: list[tuple[Hashable, Tensor]] = []
    quantized: dict[Hashable, Tensor] = {}
    receive, mask = SecAggServer.receive_masked, SecAggClient.mask

    def spy_receive(self: SecAggServer, worker_id: Hashable, y: Tensor) -> None:
        received.append((worker_id, y.clone()))
        receive(self, worker_id, y)

    def spy_mask(self: SecAggClient, x: Tensor) -> Tensor:
        quantized[self.worker_id] = x.clone()
        return mask(self, x)

    monkeypatch.setattr(SecAggServer, "receive_masked", spy_receive)
    monkeypatch.setattr(SecAggClient, "mask", spy_mask)
    agg = SecureAggregator(FedAvg(), CONFIG)
    ids = [f"w{i}" for i in range(5)]
    agg.begin_round(global_model(), participants=ids)
    for i, w in enumerate(ids):
        agg.accumulate(model_update(i), weights(5)[i], w)
    assert [w for w, _ in received] == ids
    for w, y in received:
        assert y.dtype == torch.int64 and not torch.equal(y, quantized[w])
        assert ((y - quantized[w]) & MASK32).unique().numel() > 0.9 * y.numel()  # a fresh mask on every coordinate
    # what the wrapper keeps (everything but the inner aggregator): no float tensor, no individual vector
    held = list(_tensors(agg, skip={id(agg.inner)}))
    assert held and all(t.dtype == torch.int64 for t in held)
    assert not any(torch.equal(t, q) for t in held for q in quantized.values())
    assert not any(torch.equal(t, y) for t in held for _, y in received)
    agg.finalize(global_model())


def _tensors(obj: Any, skip: set[int], seen: set[int] | None = None) -> Any:
    seen = set() if seen is None else seen
    if id(obj) in seen or id(obj) in skip:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, skip, seen)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors(value, skip, seen)
    elif type(obj).__module__.startswith("lightning_fed"):
        for value in getattr(obj, "__dict__", {}).values():
            yield from _tensors(value, skip, seen)


# -- refusals and configuration ----------------------------------------------------------------------------------------
class DummyMedian(Aggregator):
    is_sum = False
    name = "dummy_median"

    def begin_round(self, global_tensors: Sequence[Tensor]) -> None: ...
    def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None: ...
    def finalize(self, global_tensors: Sequence[Tensor]) -> list[Tensor]:
        return list(global_tensors)


def test_non_sum_aggregators_are_refused_naming_both_settings() -> None:
    with pytest.raises(
        FederatedConfigError,
        match=r"secure_aggregation=True cannot be combined with aggregation='dummy_median' \(DummyMedian is not a "
        r"weighted sum",
    ):
        SecureAggregator(DummyMedian())
    with pytest.raises(FederatedConfigError, match=r"aggregation='fedmedian' \(FedMedian is not a weighted sum"):
        SecureAggregator(FedMedian())


def test_aggregators_keeping_state_beside_the_sum_need_finalize_from_sum() -> None:
    with pytest.raises(FederatedConfigError, match=r"cannot wrap aggregation='scaffold'.*finalize_from_sum"):
        SecureAggregator(SCAFFOLD())

    class WithSum(FedAvg):
        def accumulate(self, update: Sequence[Tensor], weight: float, worker_id: Hashable) -> None:
            super().accumulate(update, weight, worker_id)

        def finalize_from_sum(self, global_tensors: Sequence[Tensor], sums: list[Tensor], total: float) -> list:
            self.called = (sums, total)
            return list(global_tensors)

    inner = WithSum()
    run_round(SecureAggregator(inner, CONFIG), 3, 0)
    assert inner.called[1] == sum(weights(3)) and inner.called[0][0].shape == (3, 4)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_registered_aggregator_is_wrapped_or_refused_clearly(name: str) -> None:
    inner = AGGREGATORS[name]()
    if not inner.is_sum:
        with pytest.raises(FederatedConfigError, match=rf"aggregation='{name}' \(\w+ is not a weighted sum"):
            SecureAggregator(inner)
    elif name == "scaffold":
        with pytest.raises(FederatedConfigError, match="finalize_from_sum"):
            SecureAggregator(inner)
    else:
        assert len(run_round(SecureAggregator(inner, CONFIG), 3, 1)) == len(SHAPES)


def test_fedavgm_finalizes_through_its_apply() -> None:
    secure = run_round(SecureAggregator(FedAvgM(momentum=0.5), CONFIG), 5, 1)
    plain = run_round(FedAvgM(momentum=0.5), 5, 1)
    assert all((s - p).abs().max() < 1e-5 for s, p in zip(secure, plain))


def test_bad_arguments_and_order() -> None:
    with pytest.raises(FederatedConfigError, match=r"SecureAggregator needs an Aggregator to wrap"):
        SecureAggregator("fedavg")  # type: ignore[arg-type]
    with pytest.raises(FederatedConfigError, match=r"SecureAggregator needs an Aggregator to wrap"):
        SecureAggregator(SecureAggregator(FedAvg()))
    with pytest.raises(FederatedConfigError, match=r"`config=\{'bits': 32\}` is not valid"):
        SecureAggregator(FedAvg(), {"bits": 32})  # type: ignore[arg-type]
    agg = SecureAggregator(FedAvg(), CONFIG)
    with pytest.raises(LightningFedError, match=r"accumulate\(\) before begin_round\(\)"):
        agg.accumulate(model_update(0), 1.0, "a")
    with pytest.raises(LightningFedError, match=r"does not know this round's participants: call set_participants"):
        agg.begin_round(global_model())
    agg.begin_round(global_model(), participants=["a", "b"])
    with pytest.raises(SecureAggregationError, match=r"'zed' is not a participant"):
        agg.accumulate(model_update(0), 1.0, "zed")
    with pytest.raises(LightningFedError, match="no worker contributed"):
        agg.finalize(global_model())


def test_participants_from_set_participants_or_setup() -> None:
    agg = SecureAggregator(FedAvg(), CONFIG)
    agg.setup(["w0", "w1", "w2"])
    assert len(run_round(agg, 3, 0, participants=False)) == 3  # all workers of setup()
    agg.set_participants(["w0", "w1"])
    agg.begin_round(global_model())
    assert agg.num_contributions == 0
    agg.accumulate(model_update(0), 1.0, "w0")
    with pytest.raises(SecureAggregationError, match=r"'w2' is not a participant"):
        agg.accumulate(model_update(2), 1.0, "w2")
    agg.accumulate(model_update(1), 1.0, "w1")
    assert agg.num_contributions == 2 and len(agg.finalize(global_model())) == 3


def test_round_size_checks_threshold_and_overflow() -> None:
    agg = SecureAggregator(FedAvg(), SecureAggregationConfig(bits=32, clip=1000.0, fractional_bits=16))
    agg.check_num_clients(20)
    with pytest.raises(FederatedConfigError, match=r"cannot sum 40 workers' updates in bits=32: .*\[-1000.0, 1000.0\]"):
        agg.check_num_clients(40)
    with pytest.raises(FederatedConfigError, match=r"at least 2 participants per round, got 1"):
        agg.check_num_clients(1)
    with pytest.raises(FederatedConfigError, match=r"cannot sum 40 workers' updates"):
        agg.begin_round(global_model(), participants=[f"w{i}" for i in range(40)])


def test_too_many_dropouts_fail_the_round_clearly() -> None:
    with pytest.raises(SecureAggregationError, match=r"3 of 5 participants dropped out .* at most n - t = 2 dropouts"):
        run_round(SecureAggregator(FedAvg(), CONFIG), 5, 3)


def test_clipping_is_reported() -> None:
    agg = SecureAggregator(FedAvg(), SecureAggregationConfig(bits=64, clip=0.01, seed=0))
    with pytest.warns(UserWarning, match=r"clipped \d+ coordinates .* \[-0.01, 0.01\]"):
        run_round(agg, 3, 0)
    assert agg.last_round_clipped > 0


def test_state_dict_keeps_the_inner_state_and_the_round_counter() -> None:
    agg = SecureAggregator(FedAvgM(momentum=0.5), CONFIG)
    run_round(agg, 3, 0)
    state = agg.state_dict()
    other = SecureAggregator(FedAvgM(momentum=0.5), CONFIG)
    other.load_state_dict(state)
    assert other.state_dict()["round_index"] == 1
    assert torch.equal(run_round(agg, 3, 0)[0], run_round(other, 3, 0)[0])  # same seed, same round: same result
    assert "FedAvgM" in repr(agg) and agg.is_sum


def test_complex_and_integer_tensors_round_trip() -> None:
    agg = SecureAggregator(FedAvg(), SecureAggregationConfig(seed=0, rounding="nearest"))
    glob = [torch.zeros(2, dtype=torch.complex64), torch.tensor(3)]
    agg.begin_round(glob, participants=["a", "b"])
    agg.accumulate(
        [torch.tensor([1 + 2j, -1j], dtype=torch.complex128), torch.tensor(2.0, dtype=torch.float64)], 1, "a"
    )
    agg.accumulate([torch.tensor([3 + 0j, 1j], dtype=torch.complex128), torch.tensor(4.0, dtype=torch.float64)], 1, "b")
    new = agg.finalize(glob)  # FedAvg: the mean update, complex kept, the integer buffer rounded
    assert new[0].dtype == torch.complex64 and torch.allclose(new[0], torch.tensor([2 + 1j, 0j], dtype=torch.complex64))
    assert new[1].dtype == torch.int64 and new[1].item() == 6


def test_a_non_finite_update_is_refused_before_quantization():
    agg = SecureAggregator(FedAvg())
    agg.setup(["a", "b"])
    agg.begin_round([torch.zeros(3)])
    with pytest.raises(LightningFedError, match=r"worker 'a'.*not finite \(NaN or inf\).*cannot quantize"):
        agg.accumulate([torch.tensor([1.0, float("nan"), 0.0])], weight=2, worker_id="a")

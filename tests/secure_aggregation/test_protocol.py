"""The Bonawitz et al. round: the secure sum equals the plain ring sum exactly, with and without dropouts, and each
masked input alone looks uniform."""

from __future__ import annotations

import pytest
import torch

from lightning_fed.secure_aggregation import (
    SecAggServer,
    SecureAggregationConfig,
    SecureAggregationError,
    SecureAggregationRound,
    quantize,
    secure_sum,
)
from lightning_fed.secure_aggregation.quantization import MASK32

ALPHA = 1e-3  # significance level of the uniformity tests
D = 4096  # coordinates per masked vector


def chi_square_p_value(buckets: torch.Tensor, num_buckets: int) -> float:
    """Pearson's chi-square test of ``buckets`` (ints in [0, num_buckets)) against the uniform distribution."""
    counts = torch.bincount(buckets, minlength=num_buckets).double()
    expected = buckets.numel() / num_buckets
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor((num_buckets - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))  # the chi-square survival function


def top_bits(y: torch.Tensor, bits: int, width: int = 4) -> torch.Tensor:
    return (y >> (bits - width)) & ((1 << width) - 1)


def updates(ids: list[str], bits: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Quantized weighted updates of realistic size: small values, so their top bits are all 0 or all 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for w in ids:
        x = torch.randn(D, generator=g, dtype=torch.float64) * 0.05 * int(torch.randint(1, 100, (1,), generator=g))
        out[w] = quantize(x, clip=64.0, fractional_bits=16, bits=bits, generator=g)
    return out


def plain_sum(xs: list[torch.Tensor], bits: int) -> torch.Tensor:
    total = torch.stack(xs).sum(dim=0)
    return total & MASK32 if bits == 32 else total


def config(bits: int, **kwargs: object) -> SecureAggregationConfig:
    return SecureAggregationConfig(bits=bits, clip=64.0, fractional_bits=16, seed=7, **kwargs)


CASES = [(2, 0), (5, 0), (5, 1), (5, 2), (20, 0), (20, 1), (20, 9)]  # (n, dropouts): 0, 1 and n - t (t = n // 2 + 1)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize(("n", "dropouts"), CASES)
def test_secure_sum_equals_the_plain_ring_sum_exactly(n: int, dropouts: int, bits: int) -> None:
    ids = [f"w{i}" for i in range(n)]
    xs = updates(ids, bits)
    dropped = ids[1 : 1 + dropouts]  # dropped after sharing: they never send a masked input
    result = secure_sum(xs, config(bits), dropped=dropped, round_index=3)
    expected = plain_sum([xs[w] for w in ids if w not in dropped], bits)
    assert result.dtype == torch.int64 and torch.equal(result, expected)


@pytest.mark.parametrize(("n", "dropouts"), [(2, 1), (5, 3), (20, 10)])
def test_more_than_n_minus_t_dropouts_is_a_clear_error(n: int, dropouts: int) -> None:
    ids = [f"w{i}" for i in range(n)]
    t = n // 2 + 1
    with pytest.raises(
        SecureAggregationError,
        match=rf"{dropouts} of {n} participants dropped out after sharing their keys and only {n - dropouts} sent a "
        rf"masked update, fewer than the threshold t={t}; .* at most n - t = {n - t} dropouts",
    ):
        secure_sum(updates(ids, 64), config(64), dropped=ids[:dropouts])


def test_an_explicit_threshold_allows_fewer_dropouts() -> None:
    ids = [f"w{i}" for i in range(5)]
    xs = updates(ids, 64)
    assert torch.equal(secure_sum(xs, config(64, threshold=5)), plain_sum(list(xs.values()), 64))
    with pytest.raises(SecureAggregationError, match="fewer than the threshold t=5"):
        secure_sum(xs, config(64, threshold=5), dropped=["w0"])


def test_a_survivor_that_does_not_answer_the_unmasking_request_still_counts() -> None:
    ids = [f"w{i}" for i in range(5)]
    xs = updates(ids, 32)
    protocol = SecureAggregationRound(ids, D, config(32))
    for w in ids[:4]:
        protocol.submit(w, xs[w])
    protocol.drop("w3")  # sent, then went silent: 3 responders, t = 3
    assert protocol.server.survivors == ids[:4] and protocol.server.dropped == ["w4"]
    assert torch.equal(protocol.finish(), plain_sum([xs[w] for w in ids[:4]], 32))


@pytest.mark.parametrize("bits", [32, 64])
def test_each_masked_input_alone_looks_uniform(bits: int) -> None:
    ids = [f"w{i}" for i in range(5)]
    xs = updates(ids, bits)
    protocol = SecureAggregationRound(ids, D, config(bits))
    for w in ids:
        x = xs[w]
        y = protocol.client(w).mask(x)
        # the test can fail: on the unmasked quantized update it rejects uniformity outright
        assert chi_square_p_value(top_bits(x, bits), 16) < 1e-100
        assert chi_square_p_value(top_bits(y, bits), 16) > ALPHA, w
        assert chi_square_p_value(y & 0xFF, 256) > ALPHA, w  # and the low byte


def test_masks_cancel_only_in_the_full_sum() -> None:
    ids = ["a", "b", "c"]
    xs = updates(ids, 64)
    protocol = SecureAggregationRound(ids, D, config(64))
    ys = {w: protocol.client(w).mask(xs[w]) for w in ids}
    partial = plain_sum([ys["a"], ys["b"]], 64)
    assert chi_square_p_value(top_bits(partial, 64), 16) > ALPHA  # a pair's sum is still masked by c's masks


def test_server_takes_masked_int64_vectors_only() -> None:
    ids = ["a", "b", "c"]
    protocol = SecureAggregationRound(ids, 8, config(32))
    server = protocol.server
    with pytest.raises(TypeError, match=r"masked int64 ring vectors of length 8 only, got Tensor torch.float64"):
        server.receive_masked("a", torch.zeros(8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"length 8 only, got Tensor torch.int64 \(9,\)"):
        server.receive_masked("a", torch.zeros(9, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"residues in \[0, 2\*\*32\)"):
        server.receive_masked("a", torch.full((8,), -1, dtype=torch.int64))
    with pytest.raises(TypeError, match="got list"):
        server.receive_masked("a", [0] * 8)  # type: ignore[arg-type]
    protocol.submit("a", torch.zeros(8, dtype=torch.int64))
    with pytest.raises(SecureAggregationError, match=r"masked input from 'a' refused: .* already sent one"):
        protocol.submit("a", torch.zeros(8, dtype=torch.int64))
    with pytest.raises(SecureAggregationError, match=r"'zed' is not a participant"):
        protocol.submit("zed", torch.zeros(8, dtype=torch.int64))
    protocol.drop("c")
    with pytest.raises(SecureAggregationError, match=r"masked input from 'c' refused"):
        protocol.submit("c", torch.zeros(8, dtype=torch.int64))


def test_server_state_is_public_keys_ciphertexts_and_the_running_sum() -> None:
    ids = ["a", "b", "c"]
    xs = updates(ids, 64)
    protocol = SecureAggregationRound(ids, D, config(64))
    for w in ids:
        protocol.submit(w, xs[w])
    tensors = [v for v in vars(protocol.server).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].dtype == torch.int64  # the running sum, nothing per worker
    assert not any(torch.equal(tensors[0], x) for x in xs.values())
    assert isinstance(protocol.server, SecAggServer)


def test_a_client_never_reveals_both_secrets_of_one_worker() -> None:
    ids = ["a", "b", "c"]
    protocol = SecureAggregationRound(ids, 4, config(64))
    client = protocol.client("a")
    client.unmasking_shares(survivors=["a", "b"], dropped=["c"])
    with pytest.raises(SecureAggregationError, match=r"already revealed its share of 'c'"):
        client.unmasking_shares(survivors=["a", "b", "c"], dropped=[])
    with pytest.raises(SecureAggregationError, match="refuses the unmasking request"):
        protocol.client("b").unmasking_shares(survivors=["a", "b"], dropped=["b"])
    with pytest.raises(SecureAggregationError, match="refuses the unmasking request"):
        protocol.client("b").unmasking_shares(survivors=["b"], dropped=["a", "c"])


def test_seeded_rounds_are_reproducible_and_rounds_differ() -> None:
    ids = ["a", "b", "c"]
    x = updates(ids, 64)["a"]
    mask = lambda round_index: SecureAggregationRound(ids, D, config(64), round_index).client("a").mask(x)  # noqa: E731
    assert torch.equal(mask(0), mask(0)) and not torch.equal(mask(0), mask(1))
    unseeded = SecureAggregationConfig(clip=64.0, fractional_bits=16)
    a, b = (SecureAggregationRound(ids, D, unseeded).client("a").mask(x) for _ in range(2))
    assert not torch.equal(a, b)

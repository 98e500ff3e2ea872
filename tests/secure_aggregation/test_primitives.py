"""The building blocks: fixed point in Z_(2^k), the ChaCha20 PRG, X25519 + HKDF, Shamir sharing, the config."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregationError
from lightning_fed.secure_aggregation.keys import KeyPair, open_sealed, pairwise_seed, seal
from lightning_fed.secure_aggregation.prg import SecretSource, prg_ring
from lightning_fed.secure_aggregation.quantization import (
    check_overflow,
    dequantize,
    error_bound,
    max_abs_quantized,
    quantize,
    ring_add_,
)
from lightning_fed.secure_aggregation.shamir import PRIME, reconstruct, reconstruct_bytes, split, split_bytes


# -- quantization ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_quantized_sums_decode_within_the_bound(bits: int, rounding: str) -> None:
    clip, f, n = 8.0, 12, 7
    xs = [torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) * 3 for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros(500, dtype=torch.int64)
    for x in xs:
        q = quantize(x, clip=clip, fractional_bits=f, bits=bits, rounding=rounding, generator=gen)
        if bits == 32:
            assert bool(((q >= 0) & (q < 2**32)).all())
        ring_add_(acc, q, bits)
    decoded = dequantize(acc, fractional_bits=f, bits=bits)
    exact = sum(x.clamp(-clip, clip) for x in xs)
    assert (decoded - exact).abs().max() <= error_bound(n, f, rounding)


def test_stochastic_rounding_is_seeded_and_unbiased() -> None:
    x = torch.full((20000,), 0.3, dtype=torch.float64)
    a = quantize(x, clip=1.0, fractional_bits=0, bits=64, generator=torch.Generator().manual_seed(1))
    b = quantize(x, clip=1.0, fractional_bits=0, bits=64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.tolist()) == {0, 1}
    assert abs(a.double().mean().item() - 0.3) < 0.02
    assert quantize(x, clip=1.0, fractional_bits=0, bits=64, rounding="nearest").unique().tolist() == [0]


def test_clip_and_negative_values_wrap_as_twos_complement() -> None:
    q = quantize(torch.tensor([-3.0, 5.0, -0.5]), clip=2.0, fractional_bits=1, bits=32, rounding="nearest")
    assert q.tolist() == [2**32 - 4, 4, 2**32 - 1]
    assert dequantize(q, fractional_bits=1, bits=32).tolist() == [-2.0, 2.0, -0.5]


def test_overflow_bound_names_workers_and_clip() -> None:
    assert max_abs_quantized(1.5, 2) == 6
    check_overflow(2**31 // 6 - 1, 1.5, 2, 32)  # fits
    with pytest.raises(FederatedConfigError, match=r"cannot sum 20 workers' updates in bits=32.*\[-1000.0, 1000.0\]"):
        check_overflow(20, 1000.0, 20, 32)
    with pytest.raises(FederatedConfigError, match=r"20 \* 1048576000 = 20971520000, beyond the 32-bit signed range"):
        check_overflow(20, 1000.0, 20, 32)
    check_overflow(20, 1000.0, 20, 64)


# -- PRG, keys, Shamir -------------------------------------------------------------------------------------------------
def test_prg_is_deterministic_uniform_and_seed_dependent() -> None:
    a, b = prg_ring(b"a" * 32, 1000, 64), prg_ring(b"b" * 32, 1000, 64)
    assert torch.equal(a, prg_ring(b"a" * 32, 1000, 64)) and not torch.equal(a, b)
    assert (a < 0).any() and (a > 0).any()  # the whole int64 range: Z_(2^64)
    c = prg_ring(b"a" * 32, 1000, 32)
    assert bool(((c >= 0) & (c < 2**32)).all()) and c.max() > 2**31
    assert prg_ring(b"a" * 32, 0, 32).shape == (0,)
    with pytest.raises(ValueError, match="32 bytes"):
        prg_ring(b"short", 4, 64)


def test_key_agreement_is_symmetric_and_shares_are_authenticated() -> None:
    source = SecretSource(seed=3, context=b"t")
    u, v, w = (KeyPair.generate(source.token(32)) for _ in range(3))
    assert pairwise_seed(u.private_bytes, v.public_bytes, b"c") == pairwise_seed(v.private_bytes, u.public_bytes, b"c")
    assert pairwise_seed(u.private_bytes, v.public_bytes, b"c") != pairwise_seed(u.private_bytes, w.public_bytes, b"c")
    assert pairwise_seed(u.private_bytes, v.public_bytes, b"c") != pairwise_seed(u.private_bytes, v.public_bytes, b"d")
    box = seal(u.private_bytes, v.public_bytes, b"share", b"1->2")
    assert b"share" not in box
    assert open_sealed(v.private_bytes, u.public_bytes, box, b"1->2") == b"share"
    with pytest.raises(SecureAggregationError, match="failed authentication"):
        open_sealed(w.private_bytes, u.public_bytes, box, b"1->2")
    with pytest.raises(SecureAggregationError, match="failed authentication"):
        open_sealed(v.private_bytes, u.public_bytes, box, b"2->1")
    assert "private" not in repr(u) and u.private_bytes.hex() not in repr(u)


def test_shamir_any_t_shares_rebuild_fewer_do_not() -> None:
    source = SecretSource(seed=0)
    secret = 2**255 + 12345
    shares = split(secret, num_shares=7, threshold=4, source=source)
    for subset in (shares[:4], shares[3:], shares[::2], shares):
        assert reconstruct(subset, threshold=4) == secret
    assert reconstruct(shares[:3] + shares[:1], threshold=3) != secret  # 3 shares of a degree-3 polynomial: wrong
    with pytest.raises(SecureAggregationError, match="from 3 distinct shares: the threshold is 4"):
        reconstruct(shares[:3] + shares[:1], threshold=4)
    key = bytes(range(32))
    assert reconstruct_bytes(split_bytes(key, 3, 2, source)[1:], 2, 32) == key
    assert all(0 <= s.y < PRIME for s in shares) and str(secret) not in repr(shares)
    with pytest.raises(ValueError, match="threshold"):
        split(1, num_shares=2, threshold=3, source=source)


def test_secret_source_seeded_is_reproducible_os_is_not() -> None:
    a, b = SecretSource(seed=5, context=b"x"), SecretSource(seed=5, context=b"x")
    assert [a.below(1000) for _ in range(5)] == [b.below(1000) for _ in range(5)]
    assert SecretSource(seed=5, context=b"y").token(16) != SecretSource(seed=5, context=b"x").token(16)
    assert SecretSource().token(16) != SecretSource().token(16)
    assert all(0 <= SecretSource().below(7) < 7 for _ in range(20))


# -- configuration -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 16}, r"`bits=16` is not valid: .*Z_\(2\^k\) for k in \{32, 64\}; pass bits=32 or bits=64"),
        ({"bits": True}, r"`bits=True` is not valid"),
        ({"threshold": 0}, r"`threshold=0` is not valid: pass an integer >= 1"),
        ({"threshold": 2.5}, r"`threshold=2.5` is not valid"),
        ({"clip": -1.0}, r"`clip=-1.0` is not valid: pass a finite number > 0"),
        ({"clip": math.inf}, r"`clip=inf` is not valid"),
        ({"fractional_bits": -1}, r"`fractional_bits=-1` is not valid for bits=64: pass an integer in \[0, 62\]"),
        ({"clip": 2.0**40, "fractional_bits": 20}, r"scales updates beyond 2\*\*53"),
        ({"bits": 32}, r"cannot sum 2 workers' updates in bits=32"),  # the 64-bit defaults do not fit 32 bits
        ({"rounding": "up"}, r"`rounding='up'` is not valid: choose one of \('stochastic', 'nearest'\)"),
        ({"seed": -3}, r"`seed=-3` is not valid"),
    ],
)
def test_bad_config_values(kwargs: dict, match: str) -> None:
    with pytest.raises(FederatedConfigError, match=match):
        SecureAggregationConfig(**kwargs)


def test_threshold_range_depends_on_the_round() -> None:
    config = SecureAggregationConfig()
    assert [config.threshold_for(n) for n in (2, 3, 5, 20)] == [2, 2, 3, 11]
    assert SecureAggregationConfig(threshold=4).threshold_for(5) == 4
    with pytest.raises(FederatedConfigError, match=r"`threshold=6` is out of range for 5 participants: .*\[3, 5\]"):
        SecureAggregationConfig(threshold=6).threshold_for(5)
    with pytest.raises(FederatedConfigError, match=r"`threshold=2` is out of range for 5 participants"):
        SecureAggregationConfig(threshold=2).threshold_for(5)
    with pytest.raises(FederatedConfigError, match=r"at least 2 participants per round, got 1"):
        config.threshold_for(1)

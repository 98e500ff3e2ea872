"""DPConfig: defaults, the max_grad_norm alias, and every check naming the argument, the value and the fix."""

from __future__ import annotations

import pytest

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import DPConfig


def test_defaults_and_alias():
    cfg = DPConfig(noise_multiplier=1.0, clip_norm=2)
    assert (cfg.level, cfg.clip_norm, cfg.max_grad_norm, cfg.accountant, cfg.delta) == ("client", 2.0, 2.0, "rdp", 1e-5)
    assert DPConfig(level="sample", noise_multiplier=1.0, max_grad_norm=0.5).clip_norm == 0.5
    assert DPConfig(level="sample", noise_multiplier=1.0, clip_norm=0.5, max_grad_norm=0.5).clip_norm == 0.5
    assert DPConfig(target_epsilon=3.0, num_rounds=10, clip_norm=1.0).noise_multiplier is None
    assert cfg.replace(clip_norm=3.0).clip_norm == 3.0
    assert cfg.replace(level="sample").level == "sample"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": "user"}, r"`level='user'` is not valid: choose one of \['client', 'sample'\]"),
        ({"accountant": "gdp"}, r"`accountant='gdp'` is not valid: choose one of \['rdp', 'prv'\]"),
        ({"noise": "local"}, r"`noise='local'` is not valid"),
        ({"weighting": "samples"}, r"`weighting='samples'` is not valid"),
        ({"loss_reduction": "none"}, r"`loss_reduction='none'` is not valid"),
        ({"clip_norm": None}, r"needs a clipping bound: pass `clip_norm=`"),
        ({"clip_norm": 0.0}, r"`clip_norm=0.0` is not valid: pass a number > 0"),
        ({"clip_norm": None, "max_grad_norm": -1}, r"`max_grad_norm=-1` is not valid"),
        ({"max_grad_norm": 2.0}, r"`clip_norm=1.0` and `max_grad_norm=2.0`: they name the same bound"),
        ({"noise_multiplier": -0.5}, r"`noise_multiplier=-0.5` is not valid: pass a number >= 0"),
        ({"noise_multiplier": None}, r"needs `noise_multiplier=` \(e.g. 1.0\), or `target_epsilon=`"),
        (
            {"noise_multiplier": None, "target_epsilon": 2.0},
            r"`target_epsilon=2.0` without `noise_multiplier`.*`num_rounds=`",
        ),
        ({"target_epsilon": 0}, r"`target_epsilon=0` is not valid"),
        ({"noise_multiplier": 0.0, "target_epsilon": 1.0}, r"`noise_multiplier=0` spends an infinite epsilon"),
        ({"num_rounds": 0}, r"`num_rounds=0` is not valid: pass an integer >= 1"),
        ({"delta": 0.0}, r"`delta=0.0` is not valid: pass a probability in \(0, 1\)"),
        ({"delta": 1.5}, r"`delta=1.5` is not valid"),
        ({"weighting": "capped"}, r"`weight_cap=None` is not valid with weighting='capped'"),
        ({"weight_cap": 10}, r"`weight_cap=10` only applies to `weighting='capped'`"),
        (
            {"weighting": "capped", "weight_cap": 10, "noise": "distributed"},
            r"`weighting='capped'` cannot be used with `noise='distributed'`",
        ),
        ({"target_quantile": 1.0}, r"`target_quantile=1.0` is not valid: pass a fraction in \(0, 1\)"),
        ({"clip_learning_rate": 0}, r"`clip_learning_rate=0` is not valid"),
        ({"clipped_count_stddev": -1.0}, r"`clipped_count_stddev=-1.0` is not valid"),
        ({"seed": -3}, r"`seed=-3` is not valid"),
        (
            {"level": "sample", "adaptive_clipping": True},
            r"`adaptive_clipping=True` is a client-level option and `level='sample'`",
        ),
        ({"level": "sample", "noise": "distributed"}, r"`noise='distributed'` is a client-level option"),
    ],
)
def test_errors_name_argument_value_and_fix(kwargs, match):
    args = {"noise_multiplier": 1.0, "clip_norm": 1.0, **kwargs}
    with pytest.raises(FederatedConfigError, match=match):
        DPConfig(**args)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError, match="delta"):
        DPConfig(noise_multiplier=1.0, clip_norm=1.0, delta=2)

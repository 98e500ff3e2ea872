"""The accountant adapter reports Opacus' own epsilon for the same history, survives state_dict, and names the extra
to install when Opacus is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.privacy.dp import PrivacyAccountant, calibrate_noise_multiplier
from lightning_fed.privacy.dp import accountant as accountant_module

opacus = pytest.importorskip("opacus")
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

# a varied history: a change of noise multiplier and of sampling rate, as resumed or re-planned runs produce
STEPS = [(1.1, 0.01)] * 40 + [(1.5, 0.01)] * 25 + [(1.5, 0.02)] * 10 + [(1.1, 0.01)] * 5
OPACUS = {"rdp": RDPAccountant, "prv": PRVAccountant}


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_epsilon_equals_opacus_on_the_same_history(mechanism):
    ours, theirs = PrivacyAccountant(mechanism), OPACUS[mechanism]()
    assert ours.epsilon(1e-5) == 0.0
    for i, (z, q) in enumerate(STEPS):
        ours.step(noise_multiplier=z, sample_rate=q)
        theirs.step(noise_multiplier=z, sample_rate=q)
        if i in (0, 39, len(STEPS) - 1) and (mechanism == "rdp" or i == len(STEPS) - 1):  # PRV is slower: once
            assert ours.history == theirs.history
            assert ours.epsilon(1e-5) == theirs.get_epsilon(delta=1e-5)
    assert ours.steps == len(STEPS)
    assert ours.epsilon(1e-6) == theirs.get_epsilon(delta=1e-6) > ours.epsilon(1e-5)


def test_num_steps_and_epsilon_after():
    acc = PrivacyAccountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=10)
    acc.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=0)  # no-op
    ahead = acc.epsilon_after(1e-5, noise_multiplier=1.0, sample_rate=0.1, num_steps=5)
    assert acc.history == [(1.0, 0.1, 10)]
    acc.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=5)
    assert acc.epsilon(1e-5) == ahead
    left = acc.max_steps(1e-5, 6.0, noise_multiplier=1.0, sample_rate=0.1)
    assert acc.epsilon_after(1e-5, noise_multiplier=1.0, sample_rate=0.1, num_steps=left) <= 6.0
    assert acc.epsilon_after(1e-5, noise_multiplier=1.0, sample_rate=0.1, num_steps=left + 1) > 6.0
    assert acc.max_steps(1e-5, 0.01, noise_multiplier=1.0, sample_rate=0.1) == 0
    assert left > 3 and acc.max_steps(1e-5, 6.0, noise_multiplier=1.0, sample_rate=0.1, limit=3) == 3
    with pytest.raises(ValueError, match="sample_rate must be in"):
        acc.step(noise_multiplier=1.0, sample_rate=1.5)


def test_state_dict_round_trip_continues_the_same_epsilon_and_loads_into_opacus():
    acc = PrivacyAccountant("rdp")
    for z, q in STEPS[:50]:
        acc.step(noise_multiplier=z, sample_rate=q)
    state = acc.state_dict()
    resumed = PrivacyAccountant("rdp")
    resumed.load_state_dict(state)
    assert resumed.epsilon(1e-5) == acc.epsilon(1e-5)
    for z, q in STEPS[50:]:
        acc.step(noise_multiplier=z, sample_rate=q)
        resumed.step(noise_multiplier=z, sample_rate=q)
    assert resumed.history == acc.history and resumed.epsilon(1e-5) == acc.epsilon(1e-5)
    theirs = RDPAccountant()
    theirs.load_state_dict(acc.state_dict())  # the same format as Opacus' own
    assert theirs.get_epsilon(delta=1e-5) == acc.epsilon(1e-5)
    with pytest.raises(
        FederatedConfigError, match="checkpoint's privacy accountant is 'rdp' but this run uses `accountant='prv'`"
    ):
        PrivacyAccountant("prv").load_state_dict(state)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibrated_noise_multiplier_is_opacus_get_noise_multiplier():
    z = calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.1, steps=50)
    assert z == get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.1, steps=50, accountant="rdp")
    acc = PrivacyAccountant("rdp")
    acc.step(noise_multiplier=z, sample_rate=0.1, num_steps=50)
    assert 2.99 <= acc.epsilon(1e-5) <= 3.0
    with pytest.raises(FederatedConfigError, match="`target_epsilon=1e-09` cannot be reached"):
        calibrate_noise_multiplier(target_epsilon=1e-9, delta=1e-5, sample_rate=1.0, steps=10)


def test_bad_mechanism():
    with pytest.raises(FederatedConfigError, match="`accountant='gdp'` is not valid: choose 'rdp' or 'prv'"):
        PrivacyAccountant("gdp")


def test_missing_opacus_names_the_extra(monkeypatch):
    def no_opacus(name, *args, **kwargs):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(accountant_module.importlib, "import_module", no_opacus)
    acc = PrivacyAccountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1)  # history needs no Opacus
    with pytest.raises(ImportError, match=r"pip install 'lightning-fed\[privacy\]'"):
        acc.epsilon(1e-5)
    with pytest.raises(accountant_module.OpacusNotInstalledError, match="calibrating the noise multiplier"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=5)


def test_importing_lightning_fed_does_not_import_opacus():
    code = "import sys, lightning_fed, lightning_fed.privacy.dp; print('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The reference LightningModule refuses a bad option by name, with the values it accepts."""

from __future__ import annotations

import pytest

from lightning_fed.models import MNISTClassifier


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "rmsprop"}, r"`optimizer='rmsprop'` is not valid: choose 'sgd' or 'adam'"),
        ({"architecture": "resnet"}, r"`architecture='resnet'` is not valid: choose one of \['dp_cnn', 'mcmahan_2nn'"),
    ],
)
def test_a_bad_option_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTClassifier(**kwargs)

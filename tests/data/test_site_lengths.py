"""The sample counts sites report in their hello are checked before the server plans (and allocates) from them."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_fed.data.sites import MAX_SITE_SAMPLES, SiteLoader
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.workers import VirtualWorker


class _FakeSite(VirtualWorker):
    """A site that answers hello with whatever lengths it is given (an honest, broken or malicious site)."""

    remote = True

    def __init__(self, worker_id: str, length: Any) -> None:
        super().__init__(id=worker_id)
        self.length = length

    def hello(self) -> dict[str, Any]:
        return {"lengths": {"mnist-train": self.length}}


def test_honest_lengths_are_planned():
    loader = SiteLoader([_FakeSite("site-ok-a", 20), _FakeSite("site-ok-b", 7)], "mnist-train", batch_size=4)
    assert [len(loader.federated_dataset[w]) for w in ("site-ok-a", "site-ok-b")] == [20, 7]
    assert len(list(loader.worker_batches("site-ok-b", 0))) == 2


@pytest.mark.parametrize("length", [MAX_SITE_SAMPLES + 1, 2**62, 0, -5, "12", 3.5, True, None])
def test_a_site_reporting_an_impossible_length_is_refused_naming_it(length):
    with pytest.raises(FederatedConfigError, match=r"site 'site-bad' reports .* samples in dataset 'mnist-train'"):
        SiteLoader([_FakeSite("site-ok", 10), _FakeSite("site-bad", length)], "mnist-train")

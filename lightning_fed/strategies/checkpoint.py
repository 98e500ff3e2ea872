"""What a federated checkpoint holds and how a resume checks it: the federation's fingerprint, and each worker's own
state sealed for that worker.

The server's part of a checkpoint (round counters, the server-side aggregator state, failures, statistics, RNG) is
in the clear. What is a worker's own (optimizer state, schedule, SCAFFOLD's ``c_i``, its local model in the middle of
a round) is sealed for it (:mod:`lightning_fed.workers.sealing`) and opened only by that worker, in the federation it
was sealed for. The **fingerprint** names that federation: worker ids, mode, aggregation, secure aggregation and
differential privacy settings. Resuming with any of them changed is an error naming both values; a checkpoint with no
federated state (a plain Lightning one) resumes nothing: ``FederatedStrategy(accept_plain_checkpoint=True)`` takes
it as the model to start from.

Example:
    >>> from lightning_fed.aggregation import FedAvg
    >>> fp = fingerprint(["b", "a"], "fedavg", FedAvg())
    >>> fp["workers"], fp["aggregation"], fp["secure_aggregation"], fp["privacy"]
    (['a', 'b'], 'FedAvg()', None, None)
    >>> check_fingerprint(fp, fingerprint(["a", "c"], "fedavg", FedAvg()))
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.CheckpointMismatchError: this checkpoint comes from another federation: the workers
    differ (checkpoint: ['a', 'b']; this run: ['a', 'c'])...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_fed.aggregation import Aggregator
from lightning_fed.aggregation.wrapper import aggregator_chain
from lightning_fed.exceptions import CheckpointMismatchError
from lightning_fed.privacy.dp import find_dp
from lightning_fed.secure_aggregation import SecureAggregator
from lightning_fed.workers.sealing import KeyFiles, seal, unseal

_FIELDS = {
    "workers": "workers",
    "mode": "mode",
    "aggregation": "aggregation",
    "secure_aggregation": "secure aggregation",
    "privacy": "differential privacy settings",
}


def fingerprint(worker_ids: Iterable[Hashable], mode: str, aggregator: Aggregator) -> dict[str, Any]:
    """The federation a checkpoint belongs to: sorted worker ids, the mode, the inner aggregation, the secure
    aggregation and DP configurations (their ``repr``; ``None`` when off)."""
    chain = list(aggregator_chain(aggregator))
    secure = next((a for a in chain if isinstance(a, SecureAggregator)), None)
    dp = find_dp(aggregator)
    return {
        "workers": sorted(str(w) for w in worker_ids),
        "mode": mode,
        "aggregation": repr(chain[-1]),
        "secure_aggregation": None if secure is None else repr(getattr(secure, "config", secure)),
        "privacy": None if dp is None else repr(getattr(dp, "config", dp)),
    }


def digest(fp: dict[str, Any]) -> str:
    """A short, stable digest of a fingerprint (what a worker's sealed state is bound to)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:32]


def check_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming the first setting whose saved and current values differ."""
    if saved is None:
        raise CheckpointMismatchError(
            "this checkpoint has no federation fingerprint: it was written by an older lightning_fed, whose "
            "checkpoints also carried the workers' optimizer state in the clear. Resume it with the version that "
            "wrote it, or start from its weights: FederatedStrategy(accept_plain_checkpoint=True)."
        )
    for key, name in _FIELDS.items():
        if saved.get(key) != current.get(key):
            raise CheckpointMismatchError(
                f"this checkpoint comes from another federation: the {name} differ (checkpoint: {saved.get(key)!r}; "
                f"this run: {current.get(key)!r}). Resume with the same {name}, or start a new run from its weights: "
                "load them with LightningModule.load_from_checkpoint(...) and call fit() without ckpt_path."
            )


def _context(worker_id: Hashable, fp_digest: str) -> str:
    return f"lightning_fed worker state|{type(worker_id).__name__}:{worker_id}|{fp_digest}"


def seal_worker_states(
    states: dict[Hashable, dict[str, Any]], fp_digest: str, keys: KeyFiles | None = None
) -> dict[Hashable, Tensor]:
    """Each worker's state sealed with its own key, bound to the federation's fingerprint."""
    keys = keys if keys is not None else KeyFiles()
    return {w: seal(state, keys.key(w), _context(w, fp_digest)) for w, state in states.items()}


def open_worker_states(
    sealed: dict[Hashable, Tensor], fp_digest: str, keys: KeyFiles | None = None
) -> dict[Hashable, dict[str, Any]]:
    """Undo :func:`seal_worker_states` (each worker opens its own)."""
    keys = keys if keys is not None else KeyFiles()
    return {w: unseal(blob, keys.key(w), _context(w, fp_digest)) for w, blob in sealed.items()}


def placed_on(state: Any, device: torch.device) -> Any:
    """A checkpoint's federated state with its floating-point tensors (the round's partial sums and updates, local
    models, the server's and workers' optimizer moments) and the devices it recorded on ``device``, the module's.
    Integer and byte tensors (sealed worker states, RNG states, ring values) and optimizers' ``step`` counts stay where
    they are. So a run saved on a GPU resumes on the CPU, and one saved on the CPU resumes on a GPU.

    Example:
        >>> import torch
        >>> state = {"sums": [torch.ones(2)], "rng": torch.zeros(3, dtype=torch.uint8), "at": torch.device("cpu"),
        ...          "optimizer": {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}}
        >>> moved = placed_on(state, torch.device("meta"))
        >>> moved["sums"][0].device, moved["rng"].device, moved["at"]
        (device(type='meta'), device(type='cpu'), device(type='meta'))
        >>> moved["optimizer"]["step"].device, moved["optimizer"]["exp_avg"].device
        (device(type='cpu'), device(type='meta'))
    """
    if isinstance(state, Tensor):
        return state.to(device) if state.is_floating_point() or state.is_complex() else state
    if isinstance(state, torch.device):
        return device
    if isinstance(state, dict):
        return {k: v if k == "step" else placed_on(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [placed_on(v, device) for v in state]
    if isinstance(state, tuple):
        items = [placed_on(v, device) for v in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state

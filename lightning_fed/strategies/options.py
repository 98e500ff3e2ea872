"""The checks of ``FederatedStrategy``'s arguments: each bad value gets an error naming it and the fix.

Example:
    >>> check_flag("vectorize", True)
    >>> check_flag("vectorize", "no")
    Traceback (most recent call last):
    ...
    lightning_fed.exceptions.FederatedConfigError: `vectorize='no'` is not valid: pass True or False.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_fed.backends.fused import LOCAL_LOOPS
from lightning_fed.backends.threads import check_num_threads
from lightning_fed.exceptions import FederatedConfigError
from lightning_fed.secure_aggregation import SecureAggregationConfig

MODES = {"fedavg": "fedavg", "follow": "follow", "seed": "follow"}


def check_flag(name: str, value: Any) -> None:
    """Booleans accept booleans only (a string ``"false"`` is not False)."""
    if not isinstance(value, bool):
        raise FederatedConfigError(f"`{name}={value!r}` is not valid: pass True or False.")


def check_vectorize(value: Any) -> None:
    """``vectorize`` is True, False or ``"auto"`` (not 1, not ``"yes"``).

    Example:
        >>> check_vectorize("auto")
        >>> check_vectorize(1)
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `vectorize=1` is not valid: pass True or False, or 'auto' ...
    """
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return
    raise FederatedConfigError(
        f"`vectorize={value!r}` is not valid: pass True or False, or 'auto' (True: each round's workers train "
        "together under torch.vmap; False: one after another; 'auto': whichever a short measurement at the first "
        "round finds faster)."
    )


def check_count(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FederatedConfigError(
            f"`{name}={value!r}` is not valid: pass an integer >= 1" + (" or None." if allow_none else ".")
        )


def check_options(
    *,
    mode: str,
    local_epochs: int | None,
    local_steps: int | None,
    seed: int | None,
    tolerate_failures: bool,
    reset_optimizer_state: bool,
    vectorize: bool | str,
    simulates_failures: bool,
    accept_plain_checkpoint: bool = False,
    local_loop: str = "auto",
    num_threads: Any = "auto",
    parallel_workers: int = 1,
) -> str:
    """Check the strategy's own arguments together; returns the canonical mode (``"fedavg"`` or ``"follow"``)."""
    if mode not in MODES:
        raise FederatedConfigError(f"`mode={mode!r}` is not valid: choose 'fedavg' or 'follow' (alias 'seed').")
    check_count("local_epochs", local_epochs, allow_none=True)
    check_count("local_steps", local_steps, allow_none=True)
    if local_epochs is not None and local_steps is not None:
        raise FederatedConfigError(
            f"`local_epochs={local_epochs}` and `local_steps={local_steps}` both set a worker's work per round: pass "
            "one (local_steps counts batches, local_epochs passes over the worker's shard)."
        )
    bad_seed = isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63
    if seed is not None and bad_seed:
        raise FederatedConfigError(f"`seed={seed!r}` is not valid: pass an integer in [0, 2**63) or None.")
    for name, value in (
        ("tolerate_failures", tolerate_failures),
        ("reset_optimizer_state", reset_optimizer_state),
        ("accept_plain_checkpoint", accept_plain_checkpoint),
    ):
        check_flag(name, value)
    check_vectorize(vectorize)
    if local_loop not in LOCAL_LOOPS:
        raise FederatedConfigError(
            f"`local_loop={local_loop!r}` is not valid: choose 'auto' (fuse each worker's local batches into one "
            "Lightning step when nothing needs single batches), 'steps' (one Lightning step per batch) or 'fused'."
        )
    check_num_threads(num_threads)
    follow = MODES[mode] == "follow"
    if follow and simulates_failures:
        raise FederatedConfigError(
            "`dropout_rate`, `deadline_steps` and `byzantine` simulate failures in federated rounds: use them with "
            "mode='fedavg', not mode='follow'."
        )
    if vectorize is True and follow:  # "auto" simply chooses the sequential path where vectorizing cannot run
        raise FederatedConfigError(
            "`vectorize=True` trains a round's workers together: it needs mode='fedavg', got mode='follow' (where "
            "one model follows the batches one after another)."
        )
    if vectorize is True and tolerate_failures:
        raise FederatedConfigError(
            "`vectorize=True` cannot tell which worker's training_step raised, so it cannot be combined with "
            "`tolerate_failures=True`: pass one of them."
        )
    check_parallel_workers(parallel_workers, mode=MODES[mode], vectorize=vectorize, local_loop=local_loop)
    return MODES[mode]


def check_parallel_workers(value: Any, *, mode: str, vectorize: bool | str, local_loop: str) -> None:
    """``parallel_workers`` is an integer >= 1, and above 1 only with what runs workers in threads.

    Example:
        >>> check_parallel_workers(2, mode="fedavg", vectorize=False, local_loop="auto")
        >>> check_parallel_workers(2, mode="fedavg", vectorize=True, local_loop="auto")
        Traceback (most recent call last):
        ...
        lightning_fed.exceptions.FederatedConfigError: `parallel_workers=2` and `vectorize=True` are two ways ...
    """
    check_count("parallel_workers", value)
    if value == 1:
        return
    if mode != "fedavg":
        raise FederatedConfigError(
            f"`parallel_workers={value}` trains a round's workers at once: it needs mode='fedavg', got mode={mode!r} "
            "(where one model follows the batches one after another). Pass parallel_workers=1."
        )
    if vectorize is not False:
        raise FederatedConfigError(
            f"`parallel_workers={value}` and `vectorize={vectorize!r}` are two ways to train a round's workers at "
            "once (threads, or one batched computation; 'auto' measures the batched one against one worker at a "
            "time): pass vectorize=False to use threads, or parallel_workers=1."
        )
    if local_loop == "steps":
        raise FederatedConfigError(
            f"`parallel_workers={value}` runs each worker's local batches as one tight loop in its thread, but "
            "`local_loop='steps'` asks for one Lightning step per batch: pass local_loop='auto', or "
            "parallel_workers=1."
        )


def check_secure_aggregation(value: Any) -> None:
    """``secure_aggregation`` is a bool or a :class:`~lightning_fed.secure_aggregation.SecureAggregationConfig`."""
    if value is not False and not isinstance(value, (bool, SecureAggregationConfig)):
        raise FederatedConfigError(
            f"`secure_aggregation={value!r}` is not valid: pass True, False or a SecureAggregationConfig(...)."
        )


def check_trainer_options(trainer: Any, mode: str) -> None:
    """Refuse, before a fit sets anything up, what its ``Trainer`` and module ask that the strategy cannot run, naming
    the fix: manual optimization with rounds, and ``overfit_batches``."""
    if not trainer.training:
        return
    if mode == "fedavg" and not trainer.lightning_module.automatic_optimization:
        raise FederatedConfigError(
            "FederatedStrategy(mode='fedavg') needs `automatic_optimization=True` in your LightningModule (it "
            "steps each worker's optimizer itself); use mode='follow' for manual optimization."
        )
    overfit = trainer.overfit_batches
    if overfit > 0:
        raise FederatedConfigError(
            f"`Trainer(overfit_batches={overfit!r})` rebuilds the train dataloader as a torch DataLoader with a "
            "sequential sampler, and a federated train loader (pointers to batches at the workers) is not one. To "
            f"train on fewer batches, pass Trainer(limit_train_batches={overfit!r}) (that share of every worker's "
            "local work each round) or FederatedStrategy(local_steps=...) (each worker's batches a round), with "
            "shuffle=False in the FederatedDataModule for the same batches every round."
        )


def check_process_options(mode: str, vectorize: bool | str, where: str, parallel_workers: int = 1) -> None:
    """Refuse what cannot run over several processes (``where`` says how many): follow mode, vectorized workers and
    workers in threads."""
    if mode != "fedavg":
        raise FederatedConfigError(
            f"FederatedStrategy(mode={mode!r}) moves one model from worker to worker, one after another: it "
            f"runs in one process, and got {where}. Pass devices=1, num_nodes=1, or mode='fedavg' (rounds, "
            "whose workers can train in parallel processes)."
        )
    if vectorize is True:  # "auto" over several processes: each trains its workers sequentially
        raise FederatedConfigError(
            f"FederatedStrategy(vectorize=True) trains a round's workers together in one process, and got {where}: "
            "pass vectorize=False to spread the workers over processes, or devices=1, num_nodes=1."
        )
    if parallel_workers > 1:
        raise FederatedConfigError(
            f"FederatedStrategy(parallel_workers={parallel_workers}) trains a round's workers in threads of one "
            f"process, and got {where}: pass parallel_workers=1 to spread the workers over processes, or devices=1, "
            "num_nodes=1."
        )

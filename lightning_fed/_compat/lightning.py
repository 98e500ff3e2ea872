"""Every private (underscore) Lightning API lightning_fed uses, in one module.

Lightning keeps its launchers, process-group helpers and some loop internals private, so they may change in any
release. lightning_fed names them here and nowhere else, checks the installed Lightning version at import, and a
test asserts that each name in :data:`PRIVATE_NAMES` still exists, so a Lightning upgrade fails loudly in one place
instead of misbehaving silently.

Example:
    >>> SUPPORTED
    ('2.4', '2.7')
    >>> check_version("2.6.6")
    >>> check_version("2.7.0")
    Traceback (most recent call last):
    ...
    ImportError: lightning_fed supports lightning >= 2.4, < 2.7; the installed lightning is 2.7.0. ...
"""

from __future__ import annotations

import importlib
from typing import Any

import lightning

SUPPORTED = ("2.4", "2.7")  # [lower, upper): keep in step with pyproject.toml


def release_of(version: str) -> tuple[int, int]:
    major, minor = [*version.split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_version(version: str) -> None:
    """Refuse a Lightning release outside :data:`SUPPORTED`, naming the installed and the supported versions."""
    low, high = SUPPORTED
    if not release_of(low) <= release_of(version) < release_of(high):
        raise ImportError(
            f"lightning_fed supports lightning >= {low}, < {high}; the installed lightning is {version}. Install a "
            f'supported release (pip install "lightning>={low},<{high}") or a lightning_fed release that supports '
            f"{version}."
        )


check_version(lightning.__version__)

# (module, attribute) of every private Lightning name used below; tests/_compat asserts that each exists.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("lightning.fabric.utilities.distributed", "_distributed_is_initialized"),
    ("lightning.fabric.utilities.distributed", "_get_default_process_group_backend_for_device"),
    ("lightning.fabric.utilities.distributed", "_init_dist_connection"),
    ("lightning.fabric.utilities.distributed", "_sync_ddp_if_available"),
    ("lightning.pytorch.overrides.distributed", "_sync_module_states"),
    ("lightning.pytorch.strategies.launchers", "_MultiProcessingLauncher"),
    ("lightning.pytorch.strategies.launchers", "_SubprocessScriptLauncher"),
    ("lightning.pytorch.tuner.lr_finder", "_LRCallback"),
)
# private attributes read or written on Lightning objects: (class path, attribute; a dotted one from an instance)
PRIVATE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.core.module.LightningModule", "_trainer"),
    ("lightning.pytorch.trainer.trainer.Trainer", "_results"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_every_n_train_steps"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_train_time_interval"),
    ("lightning.pytorch.trainer.trainer.Trainer", "fit_loop._combined_loader"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_find_last_checkpoints"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_ModelCheckpoint__resolve_ckpt_dir"),
)


def _private(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


from lightning.fabric.utilities.distributed import (  # noqa: E402
    _distributed_is_initialized as distributed_is_initialized,
)
from lightning.fabric.utilities.distributed import (  # noqa: E402
    _get_default_process_group_backend_for_device as default_process_group_backend,
)
from lightning.fabric.utilities.distributed import _init_dist_connection as init_dist_connection  # noqa: E402
from lightning.fabric.utilities.distributed import _sync_ddp_if_available as sync_ddp_if_available  # noqa: E402
from lightning.pytorch.overrides.distributed import _sync_module_states as sync_module_states  # noqa: E402
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher as MultiProcessingLauncher  # noqa: E402
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher as SubprocessScriptLauncher  # noqa: E402


def replays_batch_on_resume(trainer: Any) -> bool:
    """Whether resuming from a checkpoint saved now re-runs the current training batch: Lightning < 2.5 does so for a
    checkpoint saved in ``on_train_batch_end`` (``ModelCheckpoint(every_n_train_steps=...)``), even at an epoch's
    last batch; Lightning 2.5 and later count that batch as done."""
    if release_of(lightning.__version__) >= (2, 5):
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return progress.completed < progress.processed


def trainer_of(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or ``None`` (``module.trainer`` raises when there is none)."""
    return getattr(module, "_trainer", None) if module is not None else None


def set_logging_batch(trainer: Any, batch: Any) -> None:
    """Have ``self.log`` weigh the values a ``training_step`` logs by ``batch``'s size, as Lightning's loop does at
    each batch's start (a fused local loop runs several batches inside one Lightning step)."""
    results = getattr(trainer, "_results", None)
    if results is not None:
        results.batch = batch
        results.batch_size = None


def saves_within_epochs(checkpoint: Any) -> bool:
    """Whether a ``ModelCheckpoint`` saves every n training steps or every time interval (not only at epochs' ends)."""
    return (
        bool(getattr(checkpoint, "_every_n_train_steps", 0))
        or getattr(checkpoint, "_train_time_interval", None) is not None
    )


def lift_max_steps(trainer: Any) -> None:
    """No step limit for ``trainer``'s fit (``fast_dev_run`` sets ``max_steps`` on the fit loop's epoch loop, which
    has no public setter; its ``max_epochs=1`` still ends the fit after one epoch)."""
    trainer.fit_loop.epoch_loop.max_steps = -1


def set_up_train_data_again(trainer: Any) -> None:
    """Where Lightning has set ``trainer``'s train data up already in this fit (inside the strategy's ``setup``, for
    ``trainer.estimated_stepping_batches``), have it do so again at the fit loop's start, through the strategy as it
    is then, as Lightning's tuner does after ``lr_find``."""
    if trainer.train_dataloader is not None:
        trainer.fit_loop._combined_loader = None


def tuner_running(trainer: Any) -> str | None:
    """``"lr_find"`` while Lightning's learning-rate finder runs its range test in ``trainer``, else ``None``."""
    lr_callback = _private("lightning.pytorch.tuner.lr_finder", "_LRCallback")
    if any(isinstance(c, lr_callback) for c in getattr(trainer, "callbacks", ())):
        return "lr_find"
    return None


__all__ = [
    "PRIVATE_ATTRIBUTES",
    "PRIVATE_NAMES",
    "SUPPORTED",
    "MultiProcessingLauncher",
    "SubprocessScriptLauncher",
    "check_version",
    "default_process_group_backend",
    "distributed_is_initialized",
    "init_dist_connection",
    "last_checkpoint_candidates",
    "lift_max_steps",
    "replays_batch_on_resume",
    "set_up_train_data_again",
    "sync_ddp_if_available",
    "sync_module_states",
    "trainer_of",
    "tuner_running",
]


def last_checkpoint_candidates(trainer: Any) -> tuple[list[str], list[str]] | None:
    """Where Lightning looks for ``ckpt_path="last"``: each ``ModelCheckpoint``'s folder, and the files it would take
    (the last checkpoints, and a callback's on-exception ``ckpt_path``); ``None`` where this Lightning has no such
    lookup (let it decide)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    folders: list[str] = []
    found: list[str] = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        find = getattr(callback, "_find_last_checkpoints", None)
        if find is None:
            return None
        resolve = getattr(callback, "_ModelCheckpoint__resolve_ckpt_dir", None)
        folders.append(str(callback.dirpath or (resolve(trainer) if resolve else "Lightning's default folder")))
        found += list(find(trainer))
    found += [path for callback in trainer.callbacks if isinstance(path := getattr(callback, "ckpt_path", None), str)]
    return folders, found

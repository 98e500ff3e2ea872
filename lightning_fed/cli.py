"""``lightning-fed``: LightningCLI for federated runs (``lightning-fed fit --config ...``, ``python -m lightning_fed``).

Any LightningModule and LightningDataModule can be named in the config (``class_path``); the Trainer's strategy is
``federated`` by default, and ``--trainer.strategy lightning_fed.FederatedStrategy --trainer.strategy.mode follow``
(or a ``strategy:`` block in YAML) sets its arguments. A user's own ``LightningCLI`` works the same way once
``lightning_fed`` is imported.

The workers are private by default (the strict data-access policy: their data never leaves them through ``.get()``).
``--policy open`` (or ``policy: open`` at the top of a config) opts out for data that is not private, with a
warning: it sets the federated datamodule's ``policy`` (the same as ``--data.policy open``).

:func:`main` is the console script: it returns the process exit status: 0 on success; 2 on a bad argument (one the
parser refuses, as argparse does, or one a class refuses before the subcommand runs: a one-line
``lightning-fed: error: ...``); 1 with that one line for a configuration error found while running (data files
missing, ``--ckpt_path last`` with no checkpoint); 1 with a traceback for any other failure.
:func:`run` returns the :class:`FederatedCLI` object instead, for programs and tests.

Example:
    >>> from lightning_fed.cli import main
    >>> main(["fit", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

import lightning_fed  # noqa: F401  (registers the "federated" strategies)
from lightning_fed._compat.lightning import last_checkpoint_candidates
from lightning_fed.exceptions import FederatedConfigError


class BadArgumentError(FederatedConfigError):
    """A configuration error found before the subcommand ran (a class refused its arguments): exit status 2."""


class FederatedCLI(LightningCLI):
    """LightningCLI with ``strategy="federated"`` as the Trainer default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        trainer_defaults = {"strategy": "federated", "devices": 1, **kwargs.pop("trainer_defaults", {})}
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "lightning-fed"})  # also under `python -m lightning_fed`
        super().__init__(*args, trainer_defaults=trainer_defaults, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """``--policy strict|open``: the workers' data-access policy (see the module docstring)."""
        parser.add_argument(
            "--policy",
            type=Literal["strict", "open"] | None,
            default=None,
            help="the workers' data-access policy: 'strict' (what they have by default: their data never leaves "
            "them; model updates and scalar metrics do, audited) or 'open' (their data may leave, audited; for data "
            "that is not private, warns once). Sets the federated datamodule's `policy` (--data.policy).",
        )
        for action in parser._actions:  # Lightning's help says 'Default: "auto"'; ours are federated and 1
            if action.dest in ("trainer.strategy", "trainer.devices") and action.help:
                action.help = re.sub(r"\s*Default: ``[^`]*``\.", "", action.help)

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        with _bad_arguments(config):
            apply_cli_policy(config)

    def instantiate_classes(self) -> None:
        """Build the classes; a configuration error from a constructor is a :class:`BadArgumentError`."""
        with _bad_arguments(self._subcommand_config()):
            super().instantiate_classes()

    def before_validate(self) -> None:
        self._check_ckpt_path("validate")

    def before_test(self) -> None:
        self._check_ckpt_path("test")

    def before_predict(self) -> None:
        self._check_ckpt_path("predict")

    def _check_ckpt_path(self, subcommand: str) -> None:
        if self.config_init[subcommand].get("ckpt_path") == "last":
            check_last_checkpoint(self.trainer, subcommand)

    def _subcommand_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config


@contextmanager
def _bad_arguments(config: Any) -> Iterator[None]:
    """Turn a configuration error (also one jsonargparse wrapped) into a :class:`BadArgumentError` naming the flag."""
    try:
        yield
    except BadArgumentError:
        raise
    except Exception as err:
        cause = _configuration_error(err)
        if cause is not None:
            raise BadArgumentError(_name_the_flag(str(cause), config)) from err
        strategy = _get(config, "trainer", "strategy")
        if isinstance(err, ValueError) and isinstance(strategy, str) and "invalid strategy name" in str(err):
            from lightning.pytorch.strategies import StrategyRegistry

            names = sorted(StrategyRegistry.available_strategies(), key=lambda n: (not n.startswith("fed"), n))
            raise BadArgumentError(
                f"--trainer.strategy: `{strategy}` is not a strategy name: pass one of {', '.join(names)}, or a class "
                "path such as lightning_fed.FederatedStrategy."
            ) from err
        raise


def _get(config: Any, *keys: str) -> Any:
    for key in keys:
        try:
            config = config.get(key) if config is not None else None
        except (AttributeError, KeyError, TypeError):
            return None
    return config


def _name_the_flag(message: str, config: Any) -> str:
    """``--data.batch_size: `batch_size=-5` is not valid...``: prefix the flag that set the argument a message names."""
    match = re.match(r"`(\w+)=", message)
    if match is None:
        return message
    name = match.group(1)
    for group in (("data",), ("model",), ("trainer", "strategy")):
        init_args = _get(config, *group, "init_args")
        if init_args is not None and name in init_args:
            return f"--{'.'.join(group)}.{name}: {message}"
    return message


def check_last_checkpoint(trainer: Trainer, subcommand: str) -> None:
    """Refuse ``--ckpt_path last`` when no last checkpoint exists: Lightning would only warn and run the untrained
    model. Looks where Lightning looks: each ``ModelCheckpoint``'s folder (and on-exception checkpoints)."""
    candidates = last_checkpoint_candidates(trainer)
    if candidates is None:  # another Lightning version: let it decide
        return
    folders, found = candidates
    if any(get_filesystem(path).exists(path) for path in found):
        return
    where = f"in {', '.join(repr(f) for f in folders)}" if folders else "(the Trainer has no ModelCheckpoint callback)"
    raise FederatedConfigError(
        f"`--ckpt_path last`: there is no last checkpoint (last.ckpt) {where}, so `{subcommand}` would run an "
        f"untrained model. Run `lightning-fed fit` with the same config first (its ModelCheckpoint(save_last=True) "
        "saves last.ckpt there), or pass a checkpoint file: --ckpt_path path/to/file.ckpt."
    )


def apply_cli_policy(config: Any) -> None:
    """Copy the top-level ``policy`` of a parsed config into the datamodule's ``init_args.policy``; an error when the
    datamodule takes no ``policy`` or already has another one."""
    policy = config.get("policy")
    if policy is None:
        return
    data = config.get("data")
    class_path = getattr(data, "class_path", None) if data is not None else None
    init_args = getattr(data, "init_args", None) if data is not None else None
    takes_policy = class_path is not None and "policy" in _init_parameters(class_path)
    if not takes_policy or init_args is None:
        raise FederatedConfigError(
            f"`--policy={policy}` sets the workers' policy of a federated datamodule, but the datamodule "
            f"({class_path or 'none given'}) takes no `policy` argument: use lightning_fed.data.FederatedDataModule "
            "(wrapping yours: --data lightning_fed.data.FederatedDataModule --data.datamodule ...) or "
            "lightning_fed.datasets.FederatedMNISTDataModule, or leave --policy out."
        )
    given = init_args.get("policy")
    if given is not None and given != policy:
        raise FederatedConfigError(
            f"`--policy={policy}` and `--data.policy={given}` disagree: give the workers' policy once (either one)."
        )
    init_args["policy"] = policy


def _init_parameters(class_path: str) -> set[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
        return set(inspect.signature(cls.__init__).parameters)
    except (ImportError, AttributeError, TypeError, ValueError):
        return set()


def run(args: list[str] | None = None) -> FederatedCLI:
    """Parse ``args`` (default: ``sys.argv[1:]``), run the subcommand, and return the CLI object."""
    if list(sys.argv[1:] if args is None else args)[:1] == ["worker"]:
        raise FederatedConfigError("`worker` is a program of its own: call lightning_fed.cli.main(['worker', ...]).")
    return FederatedCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
    )


def main(args: list[str] | None = None) -> int:
    """The console script ``lightning-fed``: run the CLI and return the exit status (0 on success).

    ``lightning-fed worker ...`` runs a site's worker instead (:mod:`lightning_fed.transport.worker_main`).

    A configuration error (Lightning's ``MisconfigurationException``, which every
    :class:`~lightning_fed.exceptions.FederatedConfigError` is, also when the argument parser wrapped it while building
    a class) prints ``lightning-fed: error: <message>`` on stderr and returns 2 when a class refused its arguments
    before the subcommand ran (:class:`BadArgumentError`), else 1; any other exception propagates with its traceback
    (Python then exits with 1).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["worker"]:  # the program a site runs: `lightning-fed worker --id alice ...`
        from lightning_fed.transport.worker_main import main as worker_main

        return worker_main(argv[1:])
    try:
        run(args)
    except BadArgumentError as err:
        print(f"lightning-fed: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        cause = _configuration_error(err)
        if cause is None:
            raise
        print(f"lightning-fed: error: {cause}", file=sys.stderr)
        return 1
    return 0


def _configuration_error(err: BaseException) -> MisconfigurationException | None:
    """The configuration error behind ``err``: itself, or the one jsonargparse wrapped while it built a class."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        if isinstance(current, MisconfigurationException):
            return current
        seen.add(id(current))
        pending += [current.__cause__, current.__context__, *_union_errors(current)]
    return None


def _union_errors(err: BaseException) -> list[BaseException]:
    """jsonargparse reports a value that no type of a ``Union`` accepts as one ``ValueError`` chained to the first
    type's error only (for ``Union[str, Strategy]``: "Expected a str"); the others are in the frame that raised it."""
    found: list[BaseException] = []
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "raise_union_unexpected_value":
            found += [e for e in tb.tb_frame.f_locals.get("exceptions", ()) if isinstance(e, BaseException)]
        tb = tb.tb_next
    return found


# -- argparse types for scripts (the examples): a bad value exits 2 with the usage, naming the flag and the value ----
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows each option's default (not ``None`` or ``False``: the help says)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _number(convert: Callable[[str], Any], ok: Callable[[Any], bool], allowed: str) -> Callable[[str], Any]:
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}: pass {allowed}.") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not valid: pass {allowed}.")
        return value

    parse.__name__ = allowed
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
seed_int = _number(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a number > 0")
non_negative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
probability = _number(float, lambda v: 0 < v < 1, "a probability in (0, 1), e.g. 1e-5")
fraction = _number(float, lambda v: 0 < v <= 1, "a fraction in (0, 1] (1.0 is all)")


def writable_folder(text: str) -> str:
    """A folder that exists and can be written to, or can be made: its nearest existing parent takes a new folder."""
    path = Path(text).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    why = f"{str(parent)!r} is not a folder" if not parent.is_dir() else ""
    if not why:
        try:
            tempfile.TemporaryDirectory(dir=parent).cleanup()
        except OSError as err:
            why = f"a folder cannot be made in {str(parent)!r} ({err.strerror or err})"
    if why:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {why}. Pass a folder you can write to.")
    return text


if __name__ == "__main__":
    sys.exit(main())

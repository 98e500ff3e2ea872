"""``lightning-fed``: LightningCLI for federated runs (``lightning-fed fit --config ...``, ``python -m lightning_fed``).

Any LightningModule and LightningDataModule can be named in the config (``class_path``); the Trainer's strategy is
``federated`` by default, and ``--trainer.strategy lightning_fed.FederatedStrategy --trainer.strategy.mode follow``
(or a ``strategy:`` block in YAML) sets its arguments. A user's own ``LightningCLI`` works the same way once
``lightning_fed`` is imported.

The workers are private by default (the strict data-access policy: their data never leaves them through ``.get()``).
``--policy open`` (or ``policy: open`` at the top of a config) opts out for data that is not private, with a
warning: it sets the federated datamodule's ``policy`` (the same as ``--data.policy open``).

:func:`main` is the console script: it returns the process exit status: 0 on success; 1 with a one-line
``lightning-fed: error: ...`` for a configuration error, 1 with a traceback for any other failure; argument errors
exit with 2, as argparse does.
:func:`run` returns the :class:`FederatedCLI` object instead, for programs and tests.

Example:
    >>> from lightning_fed.cli import main
    >>> main(["fit", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Literal

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import lightning_fed  # noqa: F401  (registers the "federated" strategies)
from lightning_fed.exceptions import FederatedConfigError


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

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_cli_policy(config)


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
    a class) prints ``lightning-fed: error: <message>`` on stderr and returns 1; any other exception propagates with
    its traceback (Python then exits with 1).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["worker"]:  # the program a site runs: `lightning-fed worker --id alice ...`
        from lightning_fed.transport.worker_main import main as worker_main

        return worker_main(argv[1:])
    try:
        run(args)
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
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MisconfigurationException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())

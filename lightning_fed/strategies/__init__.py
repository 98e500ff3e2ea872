"""The Lightning strategy, registered as ``"federated"`` (and ``"fedavg"``, ``"federated_follow"``) on import."""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_fed.strategies.federated import FederatedStrategy

FederatedStrategy.register_strategies(StrategyRegistry)

__all__ = ["FederatedStrategy"]

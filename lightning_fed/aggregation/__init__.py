"""Aggregation: a pure functional core and one aggregator class per file."""

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.fedavg import FedAvg

AGGREGATORS: dict[str, type[Aggregator]] = {"fedavg": FedAvg}

__all__ = ["AGGREGATORS", "Aggregator", "FedAvg"]

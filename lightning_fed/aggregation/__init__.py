"""Aggregation: a pure functional core and one aggregator class per file.

``AGGREGATORS`` maps the names ``FederatedStrategy(aggregation=...)`` accepts to their classes (built with their
defaults; pass an instance for other hyper-parameters).

Example:
    >>> sorted(AGGREGATORS)  # doctest: +NORMALIZE_WHITESPACE
    ['fedadagrad', 'fedadam', 'fedavg', 'fedavgm', 'fedmedian', 'fedprox', 'fedtrimmedavg', 'fedyogi', 'krum',
     'scaffold']
    >>> AGGREGATORS["fedmedian"].is_sum, AGGREGATORS["fedadam"].is_sum
    (False, True)
"""

from lightning_fed.aggregation.base import Aggregator
from lightning_fed.aggregation.fedadagrad import FedAdagrad
from lightning_fed.aggregation.fedadam import FedAdam
from lightning_fed.aggregation.fedavg import FedAvg
from lightning_fed.aggregation.fedavgm import FedAvgM
from lightning_fed.aggregation.fedmedian import FedMedian
from lightning_fed.aggregation.fedopt import FedOpt
from lightning_fed.aggregation.fedprox import FedProx
from lightning_fed.aggregation.fedtrimmedavg import FedTrimmedAvg
from lightning_fed.aggregation.fedyogi import FedYogi
from lightning_fed.aggregation.krum import Krum
from lightning_fed.aggregation.robust import RobustAggregator
from lightning_fed.aggregation.scaffold import SCAFFOLD

AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, SCAFFOLD, FedMedian, FedTrimmedAvg, Krum)
}

__all__ = [
    "AGGREGATORS",
    "SCAFFOLD",
    "Aggregator",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "RobustAggregator",
]

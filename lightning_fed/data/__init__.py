"""Federated data: partitioners, ``federate``, the federated dataset and loader, and the Lightning DataModule."""

from lightning_fed.data.base_dataset import BaseDataset
from lightning_fed.data.datamodule import FederatedDataModule, PartitionStats
from lightning_fed.data.federated import DatasetPointer, FederatedDataset, dataset_labels, federate
from lightning_fed.data.loader import FederatedDataLoader

__all__ = [
    "BaseDataset",
    "DatasetPointer",
    "FederatedDataLoader",
    "FederatedDataModule",
    "FederatedDataset",
    "PartitionStats",
    "dataset_labels",
    "federate",
]

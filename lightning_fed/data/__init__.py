"""Federated data: partitioners, ``federate``, the federated dataset and loader, and the Lightning DataModule."""

from lightning_fed.data.federated import DatasetPointer, FederatedDataset, dataset_labels, federate
from lightning_fed.data.loader import FederatedDataLoader

__all__ = ["DatasetPointer", "FederatedDataLoader", "FederatedDataset", "dataset_labels", "federate"]

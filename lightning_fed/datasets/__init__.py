"""Data sets packaged as LightningDataModules."""

from lightning_fed.datasets.federated_mnist import FederatedMNISTDataModule
from lightning_fed.datasets.mnist import MNIST_FILES, MNIST_MEAN, MNIST_STD, MNISTDataModule

__all__ = ["MNIST_FILES", "MNIST_MEAN", "MNIST_STD", "FederatedMNISTDataModule", "MNISTDataModule"]

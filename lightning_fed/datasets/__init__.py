"""Data sets packaged as LightningDataModules."""

from lightning_fed.datasets.mnist import MNIST_FILES, MNIST_MEAN, MNIST_STD, MNISTDataModule

__all__ = ["MNIST_FILES", "MNIST_MEAN", "MNIST_STD", "MNISTDataModule"]

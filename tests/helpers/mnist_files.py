"""Write tiny, valid MNIST IDX files so tests can run torchvision's real MNIST loader offline.

The files have the official names and layout (``<root>/MNIST/raw/train-images-idx3-ubyte.gz`` ...), so
``torchvision.datasets.MNIST(root)`` reads them exactly as it reads the real data set. Labels cycle through
0..9 so every class appears; each image is low noise plus a bright 4 x 4 block whose position depends on the
label, so a small model can learn something from them.

Example:
    >>> import tempfile
    >>> from torchvision.datasets import MNIST
    >>> with tempfile.TemporaryDirectory() as root:
    ...     raw = write_mnist_raw(root, num_train=20, num_test=10, gz=False)
    ...     train = MNIST(root, train=True)
    ...     print(raw.name, len(train), train.targets[:12].tolist())
    raw 20 [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIZE = 28
BLOCK_SIZE = 4


def label_block_origin(label: int) -> tuple[int, int]:
    """Return the (row, column) of the top-left corner of the bright block drawn for ``label``."""
    return 4 + (label // 5) * 14, 2 + (label % 5) * 5


def make_mnist_arrays(num: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 arrays of shape ``(num, 28, 28)`` and ``(num,)``, labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(num) % 10).astype(np.uint8)
    images = rng.integers(0, 64, size=(num, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = label_block_origin(int(label))
        block = rng.integers(200, 256, size=(BLOCK_SIZE, BLOCK_SIZE), dtype=np.uint8)
        images[i, row : row + BLOCK_SIZE, col : col + BLOCK_SIZE] = block
    return images, labels


def idx_images_bytes(images: np.ndarray) -> bytes:
    """Encode uint8 images of shape ``(N, rows, cols)`` as an IDX3 file (magic 2051, big-endian header)."""
    n, rows, cols = images.shape
    return struct.pack(">iiii", IMAGE_MAGIC, n, rows, cols) + np.ascontiguousarray(images, dtype=np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    """Encode uint8 labels of shape ``(N,)`` as an IDX1 file (magic 2049, big-endian header)."""
    return struct.pack(">ii", LABEL_MAGIC, len(labels)) + np.ascontiguousarray(labels, dtype=np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> None:
    if gz:
        # mtime=0 makes the archive bytes depend only on the payload.
        with open(path.with_name(path.name + ".gz"), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_raw(
    root: str | os.PathLike[str],
    num_train: int = 64,
    num_test: int = 32,
    *,
    seed: int = 0,
    gz: bool = True,
) -> Path:
    """Write the four MNIST IDX files into ``<root>/MNIST/raw/`` and return that folder.

    Args:
        root: the data root, as passed to ``torchvision.datasets.MNIST`` or ``MNISTDataModule``.
        num_train: number of training images.
        num_test: number of test images.
        seed: seed of the random pixels; the test split uses ``seed + 1`` so it differs from the training split.
        gz: write the official ``.gz`` files (what a download leaves) rather than the extracted ones.
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, num, split_seed in (("train", num_train, seed), ("t10k", num_test, seed + 1)):
        images, labels = make_mnist_arrays(num, seed=split_seed)
        _write(raw / f"{prefix}-images-idx3-ubyte", idx_images_bytes(images), gz)
        _write(raw / f"{prefix}-labels-idx1-ubyte", idx_labels_bytes(labels), gz)
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of uint8 (gzipped if its name ends in ``.gz``) back into an array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">ii", data[:8])
    if magic == LABEL_MAGIC:
        return np.frombuffer(data, dtype=np.uint8, offset=8).copy()
    if magic != IMAGE_MAGIC:
        raise ValueError(f"{path}: magic {magic} is not an MNIST IDX magic ({IMAGE_MAGIC} or {LABEL_MAGIC})")
    rows, cols = struct.unpack(">ii", data[8:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()

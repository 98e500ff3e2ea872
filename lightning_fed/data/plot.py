"""Showing a partition: :class:`PartitionStats` (the counts, as data) and a label-by-worker heatmap, drawn with
matplotlib (the optional ``plot`` extra).

matplotlib is imported only when a picture is drawn, on a bare :class:`matplotlib.figure.Figure` (no pyplot, so no
global state and no GUI backend). Without matplotlib, :func:`save_label_heatmap` logs one info line and returns
``None``.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_label_heatmap(np.array([[5, 0], [1, 4]]), ["a", "b"], Path(tmp) / "heat.png")
    ...     path.read_bytes()[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

if TYPE_CHECKING:
    from lightning_fed.data.federated import FederatedDataset

_ANNOTATE_MAX_CELLS = 400  # write the count in each cell up to this many cells


@dataclass(frozen=True)
class PartitionStats:
    """What the partition gave each worker: samples and, when labels are known, samples per label.

    Attributes:
        partition: the partitioner's name.
        seed: the seed it ran with.
        samples: samples per worker id, in worker order.
        label_counts: per worker id, the count of each label ``0..num_classes-1``; ``None`` without labels.
        num_classes: the number of labels, or ``None``.

    Example:
        >>> stats = PartitionStats("iid", 0, {"a": 3, "b": 2}, {"a": [2, 1], "b": [0, 2]}, 2)
        >>> stats.histogram.tolist()
        [[2, 1], [0, 2]]
    """

    partition: str
    seed: int
    samples: dict[Hashable, int]
    label_counts: dict[Hashable, list[int]] | None
    num_classes: int | None

    @property
    def histogram(self) -> np.ndarray | None:
        """``label_counts`` as a (workers x classes) array, rows in worker order."""
        return None if self.label_counts is None else np.array(list(self.label_counts.values()), dtype=np.int64)

    def save_heatmap(self, path: str | os.PathLike[str]) -> Path | None:
        """Save the label-by-worker heatmap at ``path`` (without labels: one column of sample counts)."""
        histogram = self.histogram
        if histogram is None:
            histogram = np.array([[n] for n in self.samples.values()], dtype=np.int64)
        title = f"partition {self.partition!r} (seed={self.seed})" + ("" if self.label_counts else ", no labels")
        return save_label_heatmap(histogram, list(self.samples), path, title=title)

    @classmethod
    def of(cls, fed: FederatedDataset, partition: str, seed: int) -> PartitionStats:
        hist = fed.label_histogram
        counts = None if hist is None else {w: hist[k].tolist() for k, w in enumerate(fed.worker_ids)}
        return cls(partition, seed, fed.lengths, counts, fed.num_classes)


def save_label_heatmap(
    histogram: np.ndarray,
    worker_ids: Sequence[Hashable],
    path: str | os.PathLike[str],
    *,
    title: str = "samples per label and worker",
    class_names: Sequence[str] | None = None,
) -> Path | None:
    """Save a heatmap of ``histogram`` (workers x classes counts) as an image at ``path`` (PNG by its suffix).

    Returns the path written, or ``None`` when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        rank_zero_info(
            "matplotlib is not installed: the partition heatmap is skipped (pip install 'lightning-fed[plot]')."
        )
        return None
    counts = np.asarray(histogram)
    num_workers, num_classes = counts.shape
    width = min(3.0 + 0.45 * num_classes, 24.0)
    height = min(1.5 + 0.3 * num_workers, 24.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_title(title)
    ax.set_xlabel("label")
    ax.set_ylabel("worker")
    if num_classes <= 50:
        ax.set_xticks(range(num_classes), labels=list(class_names or range(num_classes)))
    if num_workers <= 50:
        ax.set_yticks(range(num_workers), labels=[str(w) for w in worker_ids])
    if counts.size <= _ANNOTATE_MAX_CELLS:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), value in np.ndenumerate(counts):
            color = "black" if value > threshold else "white"
            ax.text(col, row, str(int(value)), ha="center", va="center", fontsize=7, color=color)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    return target

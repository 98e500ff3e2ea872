"""Info lines and warnings of the Lightning-free layers, printed once per federation (by process 0).

Lightning's ``rank_zero_info``/``rank_zero_warn`` need Lightning; ``rounds/`` and ``backends/`` do not import it, so
they report through here. The strategy tells this module its process rank when the processes start.

Example:
    >>> set_rank(1); info("not printed by process 1"); set_rank(0)
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("lightning_fed")
_rank = 0


def set_rank(rank: int) -> None:
    """The process rank: only process 0 reports."""
    global _rank
    _rank = int(rank)


def info(message: str) -> None:
    if _rank == 0:
        log.info(message)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    if _rank == 0:
        warnings.warn(message, category, stacklevel=2)


def listed(items: list[str], limit: int = 10) -> str:
    """``items`` joined with commas, the first ``limit`` of a longer list and how many more (a 1,000-worker summary
    stays one readable line).

    Example:
        >>> listed(["a", "b"]), listed([f"w{i}" for i in range(30)], limit=3)
        ('a, b', 'w0, w1, w2, ... and 27 more')
    """
    return ", ".join(clipped(items, limit))


def clipped(rows: list[str], max_rows: int | None, more: str = "") -> list[str]:
    """``rows``, or the first ``max_rows`` of them and one line saying how many ``more`` there are (a table of 1,000
    workers printed at every fit would bury the log).

    Example:
        >>> clipped(["a", "b", "c"], 2, "workers")
        ['a', 'b', '... and 1 more workers']
        >>> clipped(["a", "b"], None, "workers")
        ['a', 'b']
    """
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return [*rows[:max_rows], f"... and {len(rows) - max_rows} more" + (f" {more}" if more else "")]

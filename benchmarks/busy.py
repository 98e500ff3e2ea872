"""A second CPU-bound job for the "under load" measurements: a torch matmul loop on N threads for S seconds.

Run it beside a benchmark to see how each contender copes with a busy machine (issue 20's "with a second CPU-bound
job running")::

    .venv/bin/python benchmarks/busy.py --threads 2 --seconds 300 &   # start it, wait a few seconds, then
    .venv-flower/bin/python benchmarks/flower.py --data-root data --workloads B --contenders flower lightning_fed

It prints one JSON line when it stops: ``{"benchmark": "busy", "threads": 2, "seconds": 300.0, "matmuls": ...}``.
It stops by itself after ``--seconds``, or at SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def busy_loop(threads: int, seconds: float, size: int = 256, stop: Callable[[], bool] = lambda: False) -> int:
    """Multiply two ``size`` x ``size`` matrices on ``threads`` torch threads until ``seconds`` pass or ``stop()``.

    Returns how many products it computed.

    >>> busy_loop(threads=1, seconds=0.01, size=8) > 0
    True
    """
    torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline and not stop():
        torch.mm(a, b, out=out)
        count += 1
    return count


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=_positive(int), default=2, help="torch threads of the loop (default 2)")
    parser.add_argument("--seconds", type=_positive(float), default=300.0, help="how long it runs (default 300)")
    parser.add_argument("--size", type=_positive(int), default=256, help="matrix side (default 256)")
    args = parser.parse_args(argv)
    # SIGTERM and Ctrl-C end the loop at the next product, so `kill %1` still prints the JSON line
    stopped: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopped.append(signum))
    start = time.monotonic()
    count = busy_loop(args.threads, args.seconds, args.size, stop=lambda: bool(stopped))
    elapsed = time.monotonic() - start
    print(json.dumps({"benchmark": "busy", "threads": args.threads, "seconds": round(elapsed, 1), "matmuls": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

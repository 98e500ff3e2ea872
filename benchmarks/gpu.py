"""One run for a machine with a GPU (issue 20, "GPU ready"): four parts, one table, under 8 minutes.

1. **CUDA tests**: ``pytest -m cuda`` over the test files that carry the ``cuda`` marker.
2. **Vectorized vs sequential workers**: ``FederatedStrategy(vectorize=True)`` against ``FederatedStrategy()`` with
   K = 10, 100 and 1,000 clients a round (all clients take part), McMahan et al.'s 2NN, 60 images a client, batch 10,
   one local epoch, 2 rounds; time of the last round (``benchmarks/vectorized.py``'s ``fit_strategy``).
3. **The seed CNN's FedAvg step against centralized Lightning**: one worker holding all the samples, one FedAvg
   round, against a plain ``Trainer`` over the same samples, ms per step (``benchmarks/overhead.py``'s pieces).
4. **Secure aggregation's masking with the model on the GPU**: quantizing and masking one seed-CNN-sized update
   (1,199,882 coordinates, 10 participants, 64-bit ring) with the update on the GPU against the update on the CPU.
   The library draws its masks on the CPU (ChaCha20 from ``cryptography``), so the GPU row pays the copy to the host;
   a second row times the masks' ring addition on each device.

Data are synthetic MNIST-shaped images (the GPU machine has no internet and may lack the MNIST files): these are
speed numbers, not accuracies. Each part has a time budget (printed first); a part that would exceed its budget is cut
down (fewer rounds or repeats, or a case left out), and the table says so. With ``--dry-run`` the CPU stands in for
the GPU at tiny sizes (K = 2, 4, 8), every part runs end to end and nothing is written unless ``--write-docs``.

    bash benchmarks/gpu.sh                      # on a machine with CUDA: writes the table into docs/benchmarks.md
    bash benchmarks/gpu.sh --dry-run            # anywhere: the CPU-side checks, a few seconds to a minute
    python benchmarks/gpu.py --apply gpu_section.md   # put a section a GPU machine returned into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks import overhead, vectorized  # noqa: E402
from benchmarks.common import format_table, interleaved, machine_info, mnist_like, print_json_line  # noqa: E402
from benchmarks.secure_aggregation import _RoundClock  # noqa: E402
from lightning_fed import FederatedDataModule, FederatedStrategy  # noqa: E402
from lightning_fed.models import MNISTClassifier  # noqa: E402
from lightning_fed.secure_aggregation import SecureAggregationConfig, SecureAggregationRound, quantize  # noqa: E402
from lightning_fed.secure_aggregation.prg import prg_ring  # noqa: E402
from lightning_fed.secure_aggregation.quantization import ring_add_  # noqa: E402

NO_CUDA = "no CUDA device: run with --dry-run for the CPU-side checks"
LIMIT_S = 480  # issue 20: the whole script in under 8 minutes on one GPU
BEGIN = "<!-- benchmarks/gpu.sh: begin (generated; a rerun replaces everything down to the end marker) -->"
END = "<!-- benchmarks/gpu.sh: end -->"
DOCS = ROOT / "docs" / "benchmarks.md"
PARTS = ("cuda_tests", "vectorized", "fedavg", "secagg")
SEED_CNN_NUMEL = 1_199_882  # MNISTClassifier()'s parameters


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU run's sizes, or the dry run's tiny ones."""

    device: str
    clients: tuple[int, ...]
    samples_per_client: int
    batch_size: int
    rounds: int
    fedavg_samples: int
    fedavg_repeats: int
    secagg_numel: int
    secagg_participants: int
    secagg_repeats: int
    budgets: dict[str, float]


BUDGETS = {"cuda_tests": 120.0, "vectorized": 210.0, "fedavg": 60.0, "secagg": 30.0}  # 420 s + start-up < 480 s
GPU = Sizes("cuda", (10, 100, 1000), 60, 10, 2, 12800, 3, SEED_CNN_NUMEL, 10, 5, BUDGETS)
DRY = Sizes("cpu", (2, 4, 8), 20, 10, 2, 192, 1, 65536, 3, 2, BUDGETS)


@dataclasses.dataclass
class Row:
    """One line of the table: a baseline and a contender, their values in ``unit``, and a note."""

    part: str
    setting: str
    baseline: str = ""
    baseline_value: float | None = None
    contender: str = ""
    contender_value: float | None = None
    unit: str = ""
    note: str = ""
    failed: bool = False

    @property
    def ratio(self) -> float | None:
        if self.baseline_value and self.contender_value is not None:
            return self.contender_value / self.baseline_value
        return None

    def cells(self) -> list[Any]:
        def cell(name: str, value: float | None) -> str:
            return f"{name} {_number(value)} {self.unit}".strip() if value is not None else (name or "—")

        return [self.part, self.setting, cell(self.baseline, self.baseline_value),
                cell(self.contender, self.contender_value), self.ratio, self.note]  # fmt: skip


HEADERS = ["part", "setting", "baseline", "contender", "contender / baseline", "note"]


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


# -- pure helpers (tested) -------------------------------------------------------------------------------------------
def plan_rounds(per_round_s: float | None, rounds: int, left_s: float) -> tuple[int, str]:
    """How many of ``rounds`` rounds fit in ``left_s`` seconds at an estimated ``per_round_s`` (``None``: unknown,
    run them all); ``(0, why)`` when not even one fits. The note says what was cut.

    >>> plan_rounds(10.0, 2, 25.0), plan_rounds(10.0, 2, 15.0)[0], plan_rounds(10.0, 2, 5.0)[0], plan_rounds(None, 2, 0)
    ((2, ''), 1, 0, (2, ''))
    """
    if per_round_s is None:
        return rounds, ""
    for r in range(rounds, 0, -1):
        if per_round_s * r <= left_s:
            cut = "" if r == rounds else f"cut to {r} round(s): est. {per_round_s * rounds:.0f} s > {left_s:.0f} s left"
            return r, cut
    return 0, f"not run: est. {per_round_s:.0f} s a round > {left_s:.0f} s left in the part's budget"


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts on pytest's summary line (the last line naming any), ``error`` for ``errors``.

    >>> pytest_counts("x\\n1 passed, 5 skipped, 136 deselected in 8.02s")
    {'passed': 1, 'skipped': 5, 'deselected': 136}
    """
    for line in reversed(output.strip().splitlines()):
        found = _COUNT.findall(line)
        if found:
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found}
    return {}


_CUDA_MARK = re.compile(
    r"^\s*(@pytest\.mark\.cuda\b|pytestmark\b.*\bpytest\.mark\.cuda\b|[^#\n]*\bmarks=\[?[^\]\n]*\bpytest\.mark\.cuda\b)",
    re.MULTILINE,
)


def cuda_test_files(tests: Path) -> list[str]:
    """The test files (relative to the repository) that mark tests ``cuda`` (a ``@pytest.mark.cuda`` line, a
    ``pytestmark`` naming it, or a ``pytest.param(..., marks=[pytest.mark.cuda, ...])``), found without importing
    them."""
    return sorted(
        str(path.relative_to(tests.parent))
        for path in tests.rglob("test_*.py")
        if _CUDA_MARK.search(path.read_text(encoding="utf-8"))
    )


def replace_section(text: str, block: str, where: str = "docs/benchmarks.md") -> str:
    """``text`` with everything from the begin marker to the end marker replaced by ``block`` (markers kept)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(
            f"{where} has no generated GPU section: add the two lines {BEGIN!r} and {END!r} (in this order) under its "
            "'## GPU' heading, then rerun."
        )
    return text[:start] + BEGIN + "\n" + block.strip("\n") + "\n" + text[end:]


# -- timing on a device ----------------------------------------------------------------------------------------------
def _sync() -> None:
    """Wait for the GPU's queued work, so a wall-clock reading includes it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class RoundClock(_RoundClock):
    """Seconds per whole round (one training epoch is one round), the GPU's queued work included; a round that
    ``Trainer(max_time=...)`` cut short is not counted (``stopped`` says it happened)."""

    stopped = False

    def on_train_epoch_start(self, *args: Any) -> None:
        _sync()
        super().on_train_epoch_start(*args)

    def on_train_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        _sync()
        if trainer.should_stop:
            self.stopped = True
        else:
            super().on_train_epoch_end(trainer, *args)


class StepClock(overhead._StepClock):
    """Seconds per step from the first batch's start to the last batch's end; a CUDA synchronize ends each step."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        _sync()
        super().on_train_batch_start(trainer, *args)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        _sync()
        super().on_train_batch_end(trainer, *args)


def _seconds(fn: Callable[[], Any]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


# -- the parts -------------------------------------------------------------------------------------------------------
def part_cuda_tests(sizes: Sizes, budget_s: float) -> list[Row]:
    files = cuda_test_files(ROOT / "tests")
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    print("$ " + " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, check=False)
        output, timed_out, rc = done.stdout + done.stderr, False, done.returncode
    except subprocess.TimeoutExpired as stopped:
        output, timed_out, rc = _text(stopped.stdout) + _text(stopped.stderr), True, None
    seconds = time.perf_counter() - start
    counts = pytest_counts(output)
    counted = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "skipped", "failed", "error"))
    on_gpu = sizes.device == "cuda"
    failed = timed_out or rc not in (0, 5) or counts.get("failed", 0) + counts.get("error", 0) > 0
    failed = failed or not counts or (on_gpu and counts.get("skipped", 0) > 0)  # on a GPU none may skip
    if failed:
        print(output, flush=True)  # whole: the log is what a GPU machine hands back
    if timed_out:
        note = f"stopped at the {budget_s:.0f} s budget"
    elif failed:
        note = "FAILED (log above)"
    else:
        note = "all ran on the GPU" if on_gpu else "no CUDA here: the CUDA-only ones skip"
    return [Row("CUDA tests", f"pytest -m cuda, {len(files)} files", contender="pytest", contender_value=seconds,
                unit="s", note=f"{counted}; {note}", failed=failed)]  # fmt: skip


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _subset(dataset: TensorDataset, n: int) -> TensorDataset:
    return TensorDataset(*(t[:n] for t in dataset.tensors))


def part_vectorized(sizes: Sizes, budget_s: float) -> list[Row]:
    accelerator = "gpu" if sizes.device == "cuda" else "cpu"
    args = argparse.Namespace(batch_size=sizes.batch_size, lr=0.05)
    spc = sizes.samples_per_client
    dataset = mnist_like(None, max(sizes.clients) * spc)
    deadline = time.perf_counter() + budget_s
    for vectorize in (False, True):  # warm-up: CUDA context, cuBLAS handles, the vmapped functions
        vectorized.fit_strategy(_subset(dataset, 2 * spc), args, vectorize, 2, 2, 1, {"accelerator": accelerator})
    last: dict[bool, tuple[int, float]] = {}  # vectorize -> (K, seconds a round, set-up included)
    rows = []
    for k in sizes.clients:
        part = _subset(dataset, k * spc)
        # both contenders run the same rounds: cut together, from the last K's cost scaled to this K
        known = [seconds * k / k_last for k_last, seconds in last.values()]
        estimate = sum(known) * 2 / len(known) if known else None
        rounds, cut = plan_rounds(estimate, sizes.rounds, deadline - time.perf_counter())
        notes = [cut] if cut else []
        timed: dict[bool, float | None] = {False: None, True: None}
        models: dict[bool, torch.nn.Module] = {}
        for vectorize in (False, True) if rounds else ():
            name = "vectorized" if vectorize else "sequential"
            clock = RoundClock()
            left = max(1, math.ceil(deadline - time.perf_counter()))  # a safety net: Lightning stops the fit there
            kw = {"accelerator": accelerator, "callbacks": [clock], "max_time": {"seconds": left}}
            seconds, model = vectorized.fit_strategy(part, args, vectorize, k, k, rounds, kw)
            last[vectorize] = (k, seconds / max(1, len(clock.seconds)))
            if clock.stopped or len(clock.seconds) < rounds:
                notes.append(f"{name}: stopped by the budget after {len(clock.seconds)} of {rounds} round(s)")
            if clock.seconds:
                timed[vectorize] = statistics.median(clock.seconds[1:] or clock.seconds)
            if len(clock.seconds) == rounds:
                models[vectorize] = model
        if rounds == 1:
            notes.append("one round each, set-up included")
        if len(models) == 2:
            notes.append(f"max abs diff {vectorized.max_abs_diff(models[False], models[True]):.1e}")
        rows.append(Row(
            "vectorized workers", f"K={k} clients a round, 2NN, {spc} images each, batch {sizes.batch_size}",
            "sequential", timed[False], "vectorized", timed[True], "s/round", "; ".join(notes),
        ))  # fmt: skip
    return rows


def part_fedavg(sizes: Sizes, budget_s: float) -> list[Row]:
    accelerator = "gpu" if sizes.device == "cuda" else "cpu"
    deadline = time.perf_counter() + budget_s

    def run(dataset: TensorDataset, federated: bool) -> float:
        clock = StepClock()
        torch.manual_seed(0)
        model = MNISTClassifier()
        if federated:
            data = FederatedDataModule.from_datasets(dataset, workers=1, batch_size=64, seed=0)
            trainer = overhead._trainer([clock], accelerator, strategy=FederatedStrategy(), max_epochs=1)
            trainer.fit(model, datamodule=data)
        else:
            loader = DataLoader(dataset, batch_size=64, shuffle=True)
            overhead._trainer([clock], accelerator, max_epochs=1).fit(model, train_dataloaders=loader)
        return clock.seconds_per_step

    small = overhead._synthetic(min(sizes.fedavg_samples, 3 * 64))
    run(small, False), run(small, True)  # warm-up: CUDA context, cuDNN, the first fits' imports
    dataset = overhead._synthetic(sizes.fedavg_samples)
    contenders = {"central": lambda: run(dataset, False), "fedavg": lambda: run(dataset, True)}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    repeat_s = 0.0
    for r in range(sizes.fedavg_repeats):  # interleaved, order alternating; stop when another would overrun
        if r and time.perf_counter() + repeat_s > deadline:
            break
        start = time.perf_counter()
        for name, values in interleaved(dict(reversed(contenders.items())) if r % 2 else contenders, 1).items():
            times[name] += values
        repeat_s = time.perf_counter() - start
    repeats = len(times["fedavg"])
    note = f"median of {repeats} interleaved repeat(s)"
    if repeats < sizes.fedavg_repeats:
        note += f" (cut from {sizes.fedavg_repeats}: {repeat_s:.0f} s each)"
    central, fedavg = (1e3 * statistics.median(times[name]) for name in ("central", "fedavg"))
    setting = f"seed CNN, {sizes.fedavg_samples} samples, batch 64, 1 worker, 1 round"
    return [Row("FedAvg vs centralized", setting, "Trainer", central, "FedAvg", fedavg, "ms/step", note)]


def part_secagg(sizes: Sizes, budget_s: float) -> list[Row]:
    numel, n = sizes.secagg_numel, sizes.secagg_participants
    config = SecureAggregationConfig(seed=0)
    ids = [f"w{i}" for i in range(n)]
    client = SecureAggregationRound(ids, numel, config).client(ids[0])
    update = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    device = sizes.device
    on_device = update.to(device)
    stand_in = "" if device == "cuda" else " (dry run: the CPU stands in)"

    def mask(x: torch.Tensor) -> float:  # the library's path: SecureAggregator.accumulate's quantize, then mask
        generator = torch.Generator().manual_seed(0)
        options = {"clip": config.clip, "fractional_bits": config.fractional_bits, "bits": config.bits}
        return _seconds(lambda: client.mask(quantize(x, rounding=config.rounding, generator=generator, **options)))

    masks = [prg_ring(bytes([i]) * 32, numel, config.bits) for i in range(n)]
    masks_on_device = [m.to(device) for m in masks]
    base_q = torch.zeros(numel, dtype=torch.int64)
    base_q_device = base_q.to(device)

    def ring_sum(q: torch.Tensor, ms: Sequence[torch.Tensor]) -> float:
        def add() -> None:
            y = q.clone()
            for m in ms:
                ring_add_(y, m, config.bits)

        return _seconds(add)

    start = time.perf_counter()
    mask(update), mask(on_device), ring_sum(base_q, masks), ring_sum(base_q_device, masks_on_device)  # warm-up
    per_repeat = time.perf_counter() - start
    left = budget_s - per_repeat
    repeats = max(1, min(sizes.secagg_repeats, int(left // per_repeat)))
    times = interleaved({
        "mask_cpu": lambda: mask(update), "mask_device": lambda: mask(on_device),
        "add_cpu": lambda: ring_sum(base_q, masks), "add_device": lambda: ring_sum(base_q_device, masks_on_device),
    }, repeats)  # fmt: skip
    ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    cut = f" (cut from {sizes.secagg_repeats})" if repeats < sizes.secagg_repeats else ""
    setting = f"{numel} coordinates, {n} participants, {config.bits}-bit ring"
    return [
        Row("secure aggregation", f"quantize + mask one update: {setting}", "update on cpu", ms["mask_cpu"],
            f"update on {device}{stand_in}", ms["mask_device"], "ms",
            f"masks drawn on the CPU (ChaCha20), so a GPU update is copied to the host; median of {repeats}{cut}"),
        Row("secure aggregation", f"ring add of {n} masks: {setting}", "cpu", ms["add_cpu"], f"{device}{stand_in}",
            ms["add_device"], "ms", f"masks already on the device; median of {repeats}{cut}"),
    ]  # fmt: skip


RUNNERS: dict[str, Callable[[Sizes, float], list[Row]]] = {
    "cuda_tests": part_cuda_tests, "vectorized": part_vectorized, "fedavg": part_fedavg, "secagg": part_secagg,
}  # fmt: skip
TITLES = {"cuda_tests": "CUDA tests", "vectorized": "vectorized workers", "fedavg": "FedAvg vs centralized",
          "secagg": "secure aggregation"}  # fmt: skip


def run_part(name: str, sizes: Sizes) -> list[Row]:
    """One part within its budget; an error becomes a failed row (the other parts still run)."""
    print(f"\n## {name} (budget {sizes.budgets[name]:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        rows = RUNNERS[name](sizes, sizes.budgets[name])
    except Exception as error:  # one broken part must not lose the others' numbers
        traceback.print_exc()
        rows = [Row(TITLES[name], "—", note=f"ERROR {type(error).__name__}: {error}"[:300], failed=True)]
    seconds = time.perf_counter() - start
    over = seconds > sizes.budgets[name] * 1.1
    print(f"## {name}: {seconds:.1f} s" + (" (OVER its budget)" if over else ""), flush=True)
    return rows


# -- the report ------------------------------------------------------------------------------------------------------
def device_description(sizes: Sizes) -> str:
    if sizes.device != "cuda":
        return "DRY RUN on the CPU (tiny sizes; not GPU numbers)"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"


def section(rows: Sequence[Row], sizes: Sizes, info: dict[str, Any], command: str, seconds: float) -> str:
    """The generated part of docs/benchmarks.md: where, when, how, then the table."""
    budgets = ", ".join(f"{name} {s:.0f} s" for name, s in sizes.budgets.items())
    return "\n".join([
        f"Run on {device_description(sizes)}; torch {torch.__version__}, lightning {pl.__version__}; "
        f"{info['cores']} CPU cores, load average {info['load_avg']} at the start; {info['date']}.",
        "",
        f"Command: `{command}`. Whole run: {seconds:.0f} s (limit {LIMIT_S} s; budgets: {budgets}). Synthetic "
        "MNIST-shaped data (speed, not accuracy). contender / baseline < 1: the contender is faster.",
        "",
        format_table(HEADERS, [row.cells() for row in rows]),
    ])  # fmt: skip


def write_docs(path: Path, block: str) -> None:
    path.write_text(replace_section(path.read_text(encoding="utf-8"), block, str(path)), encoding="utf-8")
    print(f"wrote the table into {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; docs untouched unless --write-docs")
    parser.add_argument("--write-docs", action="store_true", help="also write the dry run's table into --docs")
    parser.add_argument("--no-docs", action="store_true", help="a GPU run that leaves --docs untouched")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file with the GPU section's markers")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out-dir", type=Path, default=None, help="also write gpu_section.md and gpu.json here")
    parser.add_argument("--apply", type=Path, default=None, metavar="SECTION",
                        help="run nothing: put SECTION (gpu_section.md from a GPU machine) into --docs")  # fmt: skip
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts={args.parts!r} names {unknown}: choose among {', '.join(PARTS)}")
    if args.apply is not None:
        write_docs(args.docs, args.apply.read_text(encoding="utf-8"))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else GPU
    for name in ("lightning.pytorch", "lightning_fed"):  # the table, not each fit's banner and worker table
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message)
    info = machine_info()
    budget = sum(sizes.budgets[p] for p in parts)
    print(f"# {device_description(sizes)}; torch {torch.__version__}; load average {info['load_avg']}", flush=True)
    print(f"# time budget: {', '.join(f'{p} {sizes.budgets[p]:.0f} s' for p in parts)}; total {budget:.0f} s "
          f"(+ start-up) of the {LIMIT_S} s limit", flush=True)  # fmt: skip
    rows = [row for name in parts for row in run_part(name, sizes)]
    seconds = time.perf_counter() - STARTED
    command = "bash benchmarks/gpu.sh" + (" --dry-run" if args.dry_run else "")
    block = section(rows, sizes, info, command, seconds)
    print("\n" + block, flush=True)
    if seconds > LIMIT_S:
        print(f"WARNING: the run took {seconds:.0f} s, over the {LIMIT_S} s limit", flush=True)
    if args.write_docs if args.dry_run else not args.no_docs:
        write_docs(args.docs, block)
    record = {"benchmark": "gpu", "dry_run": args.dry_run, "machine": info, "seconds": seconds,
              "rows": [{**dataclasses.asdict(row), "ratio": row.ratio} for row in rows]}  # fmt: skip
    if args.out_dir is not None:  # what a GPU machine hands back: apply it here with --apply
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "gpu_section.md").write_text(block + "\n", encoding="utf-8")
        (args.out_dir / "gpu.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print_json_line(record)
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

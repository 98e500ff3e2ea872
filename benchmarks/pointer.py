"""Pointer API overhead: microseconds per pointer op, and the seed's send/train/get MNIST loop vs plain PyTorch.

Run from the repository root::

    .venv/bin/python benchmarks/pointer.py              # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/pointer.py --smoke      # tiny sizes, a few seconds
    .venv/bin/python benchmarks/pointer.py --profile 25 # also print a cProfile of the federated loop

Part 1 times single ops on pointers (``a + b``, ``torch.matmul``, ``F.relu``, ``add_``, ``p.shape``, ``send``+``get``,
``model.send(w)``+``model.get()`` of the seed's CNN) against the same op on local tensors, ``--iters`` calls per
measurement (``time.perf_counter_ns``), pointer and plain interleaved in every repeat.

Part 2 runs the seed tutorial's training loop (``model.send(data.location)`` ... ``model.get()`` per batch, the seed's
``Net``, SGD lr 0.01) over ``--steps`` random MNIST-shaped batches that were sent to two workers before timing, and
the same loop on local tensors; every repeat times both (alternating order) and the ratio is fed/plain. It also
times, in the same interleaving, the loop with the model left at the worker between batches (sent only when the
batch's worker changes), and ``--steps`` module send+get pairs alone, to show where the federated time goes.

The last line printed is one JSON object: ``{"benchmark": "pointer", ...}``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import lightning_fed as sy
from benchmarks.common import (
    differences,
    format_table,
    host_speed,
    host_speed_text,
    interleaved,
    interval_text,
    load_average,
    machine_info,
    median_summary,
    print_json_line,
    print_machine,
    ratios,
    rss_mib,
    summary,
    time_loop_ns,
    time_once_s,
)

GOAL_RATIO = 1.1


# -- the seed's CNN, exactly as the tutorial writes it ---------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()  # noqa: UP008 - the seed's code
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3, stride=1),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(
            nn.Linear(in_features=64 * 12 * 12, out_features=128),
            nn.ReLU(),
            nn.Linear(in_features=128, out_features=10),
        )
        self.dropout = nn.Dropout2d(0.25)

    def forward(self, x):
        x = self.conv(x)
        x = F.max_pool2d(x, 2)
        x = x.view(-1, 64 * 12 * 12)
        x = self.fc(x)
        x = F.log_softmax(x, dim=1)
        return x


# -- part 1: microseconds per op -------------------------------------------------------------------------------------
def micro_ops(worker: sy.VirtualWorker, iters: int, model_iters: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Per op: µs/op on pointers and on local tensors, and the per-repeat overhead (pointer - plain)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, generator=g), torch.randn(10, generator=g)
    mx, my = torch.randn(10, 10, generator=g), torch.randn(10, 10, generator=g)
    acc, acc_ptr = torch.zeros(10), torch.zeros(10).send(worker)
    px, py, pmx, pmy = x.send(worker), y.send(worker), mx.send(worker), my.send(worker)
    model = Net()
    params = list(model.parameters())

    def model_send_get() -> None:
        model.send(worker)
        model.get()

    def clone_params() -> None:
        for p in params:
            p.detach().clone()

    # name -> (pointer op, plain op, iterations per measurement, what "plain" is)
    ops: dict[str, tuple[Any, Any, int, str]] = {
        "a + b": (lambda: px + py, lambda: x + y, iters, "same op, local"),
        "torch.matmul": (lambda: torch.matmul(pmx, pmy), lambda: torch.matmul(mx, my), iters, "same op, local"),
        "F.relu": (lambda: F.relu(px), lambda: F.relu(x), iters, "same op, local"),
        "add_ (in place)": (lambda: acc_ptr.add_(py), lambda: acc.add_(y), iters, "same op, local"),
        "p.shape": (lambda: px.shape, lambda: x.shape, iters, "same op, local"),
        "send + get": (lambda: x.send(worker).get(), lambda: x.detach().clone(), iters, "x.detach().clone()"),
        "model.send + model.get": (model_send_get, clone_params, model_iters, "clone every parameter"),
    }
    for ptr_fn, plain_fn, n, _ in ops.values():  # warm up (allowlist tables, allocator)
        time_loop_ns(ptr_fn, max(1, n // 10))
        time_loop_ns(plain_fn, max(1, n // 10))

    contenders = {}
    for name, (ptr_fn, plain_fn, n, _) in ops.items():
        contenders[f"{name}|ptr"] = lambda f=ptr_fn, n=n: time_loop_ns(f, n) / n / 1e3
        contenders[f"{name}|plain"] = lambda f=plain_fn, n=n: time_loop_ns(f, n) / n / 1e3
    gc.collect()
    results = interleaved(contenders, repeats)
    out: dict[str, dict[str, Any]] = {}
    for name, (_, _, n, reference) in ops.items():
        ptr, plain = results[f"{name}|ptr"], results[f"{name}|plain"]
        out[name] = {
            "ptr_us": statistics.median(ptr),
            "plain_us": statistics.median(plain),
            "overhead_us": differences(ptr, plain),
            "iters": n,
            "plain_is": reference,
        }
    assert len(worker.objects) == 5, worker.objects  # no leak: only the 5 tensors sent above
    return out


# -- part 2: the seed's training loop --------------------------------------------------------------------------------
def fed_loop(model: nn.Module, optimizer: optim.Optimizer, batches: list, device: torch.device) -> None:
    """The seed's ``train()`` body, minus its logging: send the model to each batch's worker, train, get it back."""
    model.train()
    for data, target in batches:
        model = model.send(data.location)
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get()


def plain_loop(model: nn.Module, optimizer: optim.Optimizer, batches: list, device: torch.device) -> None:
    """The same loop on local tensors: plain PyTorch."""
    model.train()
    for data, target in batches:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()


def resident_loop(model: nn.Module, optimizer: optim.Optimizer, batches: list, device: torch.device) -> None:
    """The federated loop with the model left at the worker: moved only when the batch's worker changes."""
    model.train()
    at = None
    for data, target in batches:
        if data.location is not at:
            model.send(data.location)  # worker to worker: a move, no copy through `me`
            at = data.location
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
    model.get()


def alternating_blocks(plain: Any, fed: Any, steps: int, block: int, passes: int) -> dict[str, Any]:
    """The fed/plain ratio from blocks of ``block`` steps, plain and federated taking turns (the first of each pair
    alternates): a machine that changes speed over seconds then slows both sides of a pair alike.

    ``plain(i, j)`` and ``fed(i, j)`` run steps ``i..j-1``. Returns the ratio of the summed times and the median of
    the per-pair ratios.
    """
    plain_s, fed_s, pair_ratios = 0.0, 0.0, []
    turn = 0
    for _ in range(passes):
        for i in range(0, steps, block):
            j = min(i + block, steps)
            times = {}
            for name in ("plain", "fed") if turn % 2 == 0 else ("fed", "plain"):
                run = plain if name == "plain" else fed
                times[name] = time_once_s(lambda run=run, i=i, j=j: run(i, j))
            turn += 1
            plain_s += times["plain"]
            fed_s += times["fed"]
            pair_ratios.append(times["fed"] / times["plain"])
    return {
        "block": block,
        "pairs": len(pair_ratios),
        "ratio_of_sums": fed_s / plain_s,
        "pair_ratio": median_summary(pair_ratios),
        "plain_ms_per_step": plain_s / (passes * steps) * 1e3,
    }


def make_batches(steps: int, batch_size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, 1, 28, 28, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
        for _ in range(steps)
    ]


def count_messages(workers: list[sy.VirtualWorker], fn: Any) -> dict[str, int]:
    """Messages each kind the workers receive while ``fn()`` runs (by shadowing their ``_recv``)."""
    counts: collections.Counter[str] = collections.Counter()
    for w in workers:
        original = w._recv

        def counting(message: Any, original: Any = original) -> Any:
            name = type(message).__name__
            if name == "CommandMessage":
                name = f"Command {message.command}"
            counts[name] += 1
            return original(message)

        w._recv = counting
    try:
        fn()
    finally:
        for w in workers:
            del w._recv
    return dict(counts)


def split_worker_time(workers: list[sy.VirtualWorker], fn: Any, runs: int) -> list[tuple[float, float]]:
    """Per run of ``fn()``: (total s, s spent inside the torch calls the workers ran), by shadowing ``_execute``.

    The difference is everything else: the pointer machinery and the Python of nn.Module/optimizer/autograd that a
    plain loop runs too.
    """
    inside = [0]

    def timed(func: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return func(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter_ns() - start

        return run

    for w in workers:
        original = w._execute
        w._execute = lambda label, func, args, kwargs, original=original, **kw: original(
            label, timed(func), args, kwargs, **kw
        )
    try:
        out = []
        for _ in range(runs):
            inside[0] = 0
            total = time_once_s(fn)
            out.append((total, inside[0] / 1e9))
        return out
    finally:
        for w in workers:
            del w._execute


def own_faults() -> tuple[int, float]:
    """This process's minor page faults and system CPU seconds so far ((0, 0.0) where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0, 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_stime


def train_loop(
    workers: list[sy.VirtualWorker], steps: int, batch_size: int, repeats: int, profile: int, block: int = 3
) -> dict[str, Any]:
    device = torch.device("cpu")
    batches = make_batches(steps, batch_size)
    half = (steps + 1) // 2  # the seed's loader goes worker by worker: first shard's batches, then the second's
    fed_batches = [
        (data.send(workers[0] if i < half else workers[1]), target.send(workers[0] if i < half else workers[1]))
        for i, (data, target) in enumerate(batches)
    ]
    torch.manual_seed(0)
    models = {"plain": Net(), "fed": Net(), "resident": Net()}
    models["fed"].load_state_dict(models["plain"].state_dict())
    models["resident"].load_state_dict(models["plain"].state_dict())
    opts = {name: optim.SGD(m.parameters(), lr=0.01) for name, m in models.items()}
    sendget_model = Net()
    for p in sendget_model.parameters():  # as in the loop: after a step the parameters come home with their .grad
        p.grad = torch.zeros_like(p)

    def sendget_only() -> None:  # the per-step module transfer alone, with the loop's worker sequence
        for data, _ in fed_batches:
            sendget_model.send(data.location)
            sendget_model.get()

    faults: dict[str, list[tuple[int, float]]] = {"plain": [], "fed": []}

    def with_faults(name: str, fn: Any) -> float:  # the seconds, and the loop's page faults and system time aside
        before = own_faults()
        seconds = time_once_s(fn)
        after = own_faults()
        faults[name].append((after[0] - before[0], after[1] - before[1]))
        return seconds

    contenders = {
        "plain": lambda: with_faults("plain", lambda: plain_loop(models["plain"], opts["plain"], batches, device)),
        "fed": lambda: with_faults("fed", lambda: fed_loop(models["fed"], opts["fed"], fed_batches, device)),
        "resident": lambda: time_once_s(
            lambda: resident_loop(models["resident"], opts["resident"], fed_batches, device)
        ),
        "sendget": lambda: time_once_s(sendget_only),
    }
    for run in contenders.values():  # warm-up pass, not recorded
        run()
    gc.collect()
    for recorded in faults.values():  # the warm-up's faults are not the loops'
        recorded.clear()
    times = interleaved(contenders, repeats)

    # both models saw the same batches in the same order: the federated one must have learned the same weights
    max_diff = max(
        (a - b).abs().max().item()
        for a, b in zip(models["plain"].parameters(), models["fed"].parameters(), strict=True)
    )
    per_step_ms = {name: statistics.median(t) / steps * 1e3 for name, t in times.items()}
    messages = count_messages(workers, lambda: fed_loop(models["fed"], opts["fed"], fed_batches[:1], device))
    split = {}
    for name, loop in (("fed", fed_loop), ("resident", resident_loop)):
        runs = split_worker_time(
            workers, lambda loop=loop, name=name: loop(models[name], opts[name], fed_batches, device), 3
        )
        total, inside = min(runs)  # the fastest run: the least disturbed by other load
        split[name] = {"total": total / steps * 1e3, "inside_worker_torch": inside / steps * 1e3}
        split[name]["outside"] = split[name]["total"] - split[name]["inside_worker_torch"]
    result: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "repeats": repeats,
        "step_ms": per_step_ms,
        "times_s": times,  # per repeat, per contender: the whole loop over `steps` batches
        "ratio": ratios(times["fed"], times["plain"]),
        "resident_ratio": ratios(times["resident"], times["plain"]),
        "sendget_share": summary([s / f for s, f in zip(times["sendget"], times["fed"], strict=True)]),
        # per-repeat differences (so a slow spell that hits one repeat does not skew them), in ms per step
        "fed_extra_ms_per_step": summary(
            [(f - p) / steps * 1e3 for f, p in zip(times["fed"], times["plain"], strict=True)]
        ),
        "dispatch_ms_per_step": summary(
            [(r - p) / steps * 1e3 for r, p in zip(times["resident"], times["plain"], strict=True)]
        ),
        "goal_ratio": GOAL_RATIO,
        "max_param_diff_fed_vs_plain": max_diff,
        "split_ms_per_step": split,  # fastest of 3 extra runs: time inside the worker's torch calls vs outside
        # the allocator's share: glibc hands large freed blocks back to the kernel, and the next allocation
        # faults its pages in again (system time); both loops pay it, and it varies from repeat to repeat
        "page_faults_per_step": {n: summary([f / steps for f, _ in v]) for n, v in faults.items()},
        "system_ms_per_step": {n: summary([t / steps * 1e3 for _, t in v]) for n, v in faults.items()},
        "messages_per_step": sum(messages.values()),
        "messages_by_kind": dict(sorted(messages.items(), key=lambda kv: -kv[1])),
    }
    result["meets_goal"] = result["ratio"]["median"] <= GOAL_RATIO
    result["alternating_blocks"] = alternating_blocks(
        lambda i, j: plain_loop(models["plain"], opts["plain"], batches[i:j], device),
        lambda i, j: fed_loop(models["fed"], opts["fed"], fed_batches[i:j], device),
        steps, block, max(1, repeats // 3),
    )  # fmt: skip
    if profile:
        result["profile"] = profile_loop(models["fed"], opts["fed"], fed_batches, device, profile)
    return result


def profile_loop(model: nn.Module, optimizer: optim.Optimizer, batches: list, device: torch.device, top: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fed_loop(model, optimizer, batches, device)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# -- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds, to check the script runs")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 9; smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="training batches per loop (default 30; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default 64; smoke 8)")
    parser.add_argument("--iters", type=int, default=None, help="calls per small-op measurement (default 3000)")
    parser.add_argument("--model-iters", type=int, default=None, help="calls per model send+get (default 30)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: torch's own default)"
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N cProfile rows of the loop")
    parser.add_argument("--block", type=int, default=3, help="steps a turn in the alternating-blocks ratio (default 3)")
    args = parser.parse_args(argv)
    defaults = (
        {"repeats": 2, "steps": 2, "batch_size": 8, "iters": 50, "model_iters": 2}
        if args.smoke
        else {"repeats": 9, "steps": 30, "batch_size": 64, "iters": 3000, "model_iters": 30}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 2 or min(args.repeats, args.iters, args.model_iters, args.batch_size, args.block) < 1:
        parser.error(
            "--steps must be >= 2 (two workers); --repeats, --iters, --model-iters, --batch-size, --block: >= 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print_machine(info)
    hook = sy.TorchHook(torch)
    try:
        grapevine = sy.VirtualWorker(hook, id="grapevine")
        westside = sy.VirtualWorker(hook, id="westside")
        bench = sy.VirtualWorker(hook, id="bench")

        ops = micro_ops(bench, args.iters, args.model_iters, args.repeats)
        rows = [
            [
                name,
                r["ptr_us"],
                r["plain_us"],
                r["overhead_us"]["median"],
                f"{r['overhead_us']['min']:.2f} / {r['overhead_us']['max']:.2f}"
                if abs(r["overhead_us"]["max"]) < 100
                else f"{r['overhead_us']['min']:.0f} / {r['overhead_us']['max']:.0f}",
                r["plain_is"],
            ]
            for name, r in ops.items()
        ]
        print(f"\n## per op (µs/op, median of {args.repeats} interleaved repeats)")
        print(format_table(["op", "pointer µs", "plain µs", "overhead µs", "overhead min / max", "plain is"], rows))

        train = train_loop([grapevine, westside], args.steps, args.batch_size, args.repeats, args.profile, args.block)
        ms = train["step_ms"]
        print(
            f"\n## seed loop: {args.steps} batches of {args.batch_size}, 2 workers, SGD lr 0.01 "
            f"(ms per step, median of {args.repeats} interleaved repeats)"
        )
        ratio, res = train["ratio"], train["resident_ratio"]
        share = train["sendget_share"]
        print(
            format_table(
                ["loop", "ms/step", "ratio vs plain (median)", "ratio min / max"],
                [
                    ["plain PyTorch", ms["plain"], 1.0, "—"],
                    ["seed fed loop (send/get per batch)", ms["fed"], ratio["median"],
                     f"{ratio['min']:.3f} / {ratio['max']:.3f}"],
                    ["model kept at worker", ms["resident"], res["median"], f"{res['min']:.3f} / {res['max']:.3f}"],
                    ["module send+get alone", ms["sendget"], None,
                     f"{share['median']:.1%} of fed loop (min {share['min']:.1%})"],
                ],
            )
        )  # fmt: skip
        verdict = "meets" if train["meets_goal"] else "MISSES"
        print(
            f"\nfed/plain = {ratio['median']:.3f} (min {ratio['min']:.3f}, max {ratio['max']:.3f}"
            f"{interval_text(ratio)}): {verdict} "
            f"the {GOAL_RATIO}x goal. Per step, fed - plain: {train['fed_extra_ms_per_step']['median']:.2f} ms; "
            f"pointer dispatch (model kept at worker - plain): {train['dispatch_ms_per_step']['median']:.2f} ms; "
            f"module send+get: {ms['sendget']:.2f} ms; "
            f"{train['messages_per_step']} messages/step. Fed and plain weights differ by at most "
            f"{train['max_param_diff_fed_vs_plain']:.2e}."
        )
        blocks = train["alternating_blocks"]
        pair = blocks["pair_ratio"]
        print(
            f"alternating blocks of {blocks['block']} steps ({blocks['pairs']} plain/fed pairs, plain "
            f"{blocks['plain_ms_per_step']:.1f} ms/step): fed/plain = {blocks['ratio_of_sums']:.3f} (ratio of the "
            f"summed times); per pair median {pair['median']:.3f} (min {pair['min']:.3f}, max {pair['max']:.3f}"
            f"{interval_text(pair)})"
        )
        sp = train["split_ms_per_step"]
        print(
            "split of a step (fastest of 3 runs), ms: "
            + "; ".join(
                f"{name}: {v['total']:.2f} total = {v['inside_worker_torch']:.2f} in the torch calls the worker ran "
                f"+ {v['outside']:.2f} outside them"
                for name, v in sp.items()
            )
            + f"; plain: {ms['plain']:.2f} (median) all of it"
        )
        pf, sy_ms = train["page_faults_per_step"], train["system_ms_per_step"]
        print(
            "page faults / system time per step (median, min-max over repeats): "
            + "; ".join(
                f"{n}: {pf[n]['median']:.0f} ({pf[n]['min']:.0f}-{pf[n]['max']:.0f}) faults, "
                f"{sy_ms[n]['median']:.1f} ({sy_ms[n]['min']:.1f}-{sy_ms[n]['max']:.1f}) ms"
                for n in ("plain", "fed")
            )
        )
        print("messages in one step:", train["messages_by_kind"])
        end_load = [round(x, 2) for x in load_average() or ()]
        print(f"load average (1/5/15 min) at start: {info['load_avg']}, at end: {end_load}")
        end_speed = host_speed()
        print(f"{host_speed_text(info['host_speed'])} at the start; {host_speed_text(end_speed)} at the end")
        if args.profile:
            print("\n## cProfile of one federated loop\n" + train.pop("profile"))
    finally:
        hook.unhook()
    print_json_line(
        {
            "benchmark": "pointer",
            "machine": info,
            "config": {
                k: getattr(args, k)
                for k in ("smoke", "repeats", "steps", "batch_size", "iters", "model_iters", "threads", "block")
            },
            "ops": ops,
            "train": train,
            "rss_mib": rss_mib(),
            "load_avg_end": [round(x, 2) for x in load_average() or ()],
            "host_speed_end": end_speed,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

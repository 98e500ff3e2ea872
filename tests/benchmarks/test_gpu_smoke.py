"""benchmarks/gpu.sh: the dry run executes every part and prints one table; without CUDA the real run refuses (exit 2).

No timing is checked: the numbers only have to be there, finite and positive.
"""

from __future__ import annotations

import doctest
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[2]
DOC = "# Benchmarks\n\n## GPU\n\nWhat it measures.\n\n{begin}\nold table\n{end}\n\n## next\n"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _docs(tmp_path: Path) -> Path:
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC.format(begin=gpu.BEGIN, end=gpu.END), encoding="utf-8")
    return path


def test_dry_run_runs_every_part_prints_one_table_and_leaves_the_docs(tmp_path):
    docs, out = _docs(tmp_path), tmp_path / "out"
    before = docs.read_text(encoding="utf-8")
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "--docs", str(docs), "--out-dir", str(out)],
        cwd=ROOT, env=_env(OUT=""), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"gpu.sh --dry-run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "# time budget: cuda_tests 120 s, vectorized 210 s, fedavg 60 s, secagg 30 s; total 420 s" in proc.stdout
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "gpu" and record["dry_run"] is True
    rows = record["rows"]
    assert [r["part"] for r in rows] == ["CUDA tests"] + ["vectorized workers"] * 3 + ["FedAvg vs centralized"] + [
        "secure aggregation"
    ] * 2
    assert [r["setting"].split(" clients")[0] for r in rows[1:4]] == ["K=2", "K=4", "K=8"]
    assert not any(r["failed"] for r in rows), rows
    for row in rows[1:]:  # a baseline and a contender, each a measured time, and their ratio
        for key in ("baseline_value", "contender_value", "ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)
    tests = rows[0]
    assert tests["contender_value"] > 0 and "0 failed, 0 error" in tests["note"]
    assert "1 passed" in tests["note"]  # the seed's training runs on the CPU; the CUDA-only tests skip here
    assert all("max abs diff" in r["note"] for r in rows[1:4])  # sequential and vectorized trained the same rounds
    # one table, printed with every row, and handed back for --apply; the docs file untouched
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1].strip() == "part" and len(table) == 1 + len(rows)
    assert [line.split("|")[1].strip() for line in table[1:]] == [r["part"] for r in rows]
    assert "DRY RUN on the CPU" in proc.stdout and "Command: `bash benchmarks/gpu.sh --dry-run`" in proc.stdout
    assert docs.read_text(encoding="utf-8") == before and "wrote the table" not in proc.stdout
    section = (out / "gpu_section.md").read_text(encoding="utf-8")
    assert all(line in section.splitlines() for line in table)
    returned = json.loads((out / "gpu.json").read_text(encoding="utf-8"))["rows"]
    assert [(r["part"], r["setting"], r["note"]) for r in returned] == [
        (r["part"], r["setting"], r["note"]) for r in rows
    ]


def test_without_cuda_the_real_run_exits_2_with_the_message():
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device: run with --dry-run for the CPU-side checks" in proc.stderr


def test_bad_parts_are_refused_naming_the_argument(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu.main(["--dry-run", "--parts", "vectorized,tpu"])
    assert stop.value.code == 2
    assert "--parts='vectorized,tpu' names ['tpu']: choose among cuda_tests, vectorized, fedavg, secagg" in (
        capsys.readouterr().err
    )


def test_apply_replaces_the_marked_section_only_and_a_rerun_replaces_it_again(tmp_path):
    docs, section = _docs(tmp_path), tmp_path / "gpu_section.md"
    for table in ("| part |\n| new |", "| part |\n| newer |"):
        section.write_text(table + "\n", encoding="utf-8")
        assert gpu.main(["--apply", str(section), "--docs", str(docs)]) == 0
        text = docs.read_text(encoding="utf-8")
        assert text == DOC.format(begin=gpu.BEGIN, end=gpu.END).replace("old table", table)
    assert text.count(gpu.BEGIN) == 1 and "| new |" not in text


def test_the_docs_hold_the_generated_section_once():
    text = gpu.DOCS.read_text(encoding="utf-8")
    assert text.count(gpu.BEGIN) == 1 and text.count(gpu.END) == 1 and "## GPU" in text
    assert gpu.replace_section(text, "| table |").count("| table |") == 1


def test_replace_section_without_markers_says_how_to_fix():
    with pytest.raises(ValueError, match=r"docs/x.md has no generated GPU section: add the two lines"):
        gpu.replace_section("# no markers\n", "table", "docs/x.md")
    with pytest.raises(ValueError, match="in this order"):  # markers swapped
        gpu.replace_section(f"{gpu.END}\n{gpu.BEGIN}\n", "table")


def test_plan_rounds_cuts_down_to_what_fits():
    assert gpu.plan_rounds(None, 2, 0.0) == (2, "")  # nothing measured yet: the planned rounds
    assert gpu.plan_rounds(10.0, 2, 20.0) == (2, "")
    assert gpu.plan_rounds(10.0, 2, 19.0) == (1, "cut to 1 round(s): est. 20 s > 19 s left")
    rounds, why = gpu.plan_rounds(30.0, 2, 19.0)
    assert rounds == 0 and why.startswith("not run: est. 30 s a round > 19 s left")


def test_pytest_counts_reads_the_summary_line():
    assert gpu.pytest_counts("F.s\n== 1 failed, 2 passed, 1 skipped, 3 errors in 4.2s ==") == {
        "failed": 1, "passed": 2, "skipped": 1, "error": 3,
    }  # fmt: skip
    assert gpu.pytest_counts("ERROR collecting\n1 error in 0.5s") == {"error": 1}
    assert gpu.pytest_counts("no tests ran in 0.01s") == {}


def test_the_cuda_marker_selects_every_test_that_asks_for_cuda():
    files = gpu.cuda_test_files(ROOT / "tests")
    assert "tests/strategies/test_vectorized.py" in files and "tests/pointers/test_pointer_tensor.py" in files
    assert "tests/privacy/dp/test_ghost.py" in files  # a pytest.param(..., marks=[pytest.mark.cuda, ...])
    assert "tests/benchmarks/test_gpu_smoke.py" not in files  # it names the marker in a message only
    skips_without_cuda = re.compile(r"^\s*@pytest\.mark\.skipif\(\s*not torch\.cuda\.is_available\(\)", re.MULTILINE)
    asking = [
        p for p in (ROOT / "tests").rglob("test_*.py") if skips_without_cuda.search(p.read_text(encoding="utf-8"))
    ]
    assert len(asking) >= 3
    for path in asking:  # a CUDA-only test without the marker would be left out of the GPU run
        assert str(path.relative_to(ROOT)) in files, f"{path}: mark its CUDA tests with the cuda marker"


def test_docstring_examples():
    assert doctest.testmod(gpu).failed == 0


def test_the_gpu_run_masks_a_seed_cnn_sized_update():
    from lightning_fed.models import MNISTClassifier

    assert gpu.GPU.secagg_numel == sum(p.numel() for p in MNISTClassifier().parameters())
    assert gpu.GPU.clients == (10, 100, 1000) and gpu.GPU.device == "cuda" and gpu.DRY.device == "cpu"
    assert sum(gpu.GPU.budgets.values()) <= gpu.LIMIT_S - 60  # a minute left for start-up and warm-ups

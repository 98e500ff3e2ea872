#!/usr/bin/env bash
# One run for a machine with a GPU (issue 20): the CUDA tests, vectorized vs sequential workers at K = 10, 100 and
# 1,000 clients a round, the seed CNN's FedAvg step vs centralized Lightning, secure aggregation's masking with the
# update on the GPU; one table, written into docs/benchmarks.md. Under 8 minutes on one GPU. See benchmarks/gpu.py.
#
#   bash benchmarks/gpu.sh                    # on the GPU machine (exits 2 without CUDA)
#   bash benchmarks/gpu.sh --dry-run          # here: the CPU-side checks, tiny sizes, docs untouched
#   bash benchmarks/gpu.sh --prepare-wheels   # here, before a GPU session: .whl/ with what the GPU image lacks
#
# Every other argument goes to benchmarks/gpu.py. Python: .venv/bin/python if present, else python3, else python.
# Where the Python lacks `cryptography` and .whl/ holds wheels (the GPU machine has no internet: carry .whl), they
# are installed into a temporary folder first. Where $OUT names a folder (the device tool's), the log, the generated
# section (gpu_section.md: apply it here with `python benchmarks/gpu.py --apply FILE`) and gpu.json are put there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"

if [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
elif command -v python3 >/dev/null 2>&1; then
    py=python3
else
    py=python
fi

# The packages lightning_fed and its DP tests need that the GPU image (KINDS.md, nvidia-h200) lacks, at the versions used here.
wheels=(cryptography cffi pycparser opacus)

if [[ "${1:-}" == "--prepare-wheels" ]]; then
    specs=()
    for name in "${wheels[@]}"; do
        specs+=("$name==$("$py" -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    mkdir -p .whl
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${specs[@]}"
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qxF "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >>"$exclude"
    ls -l .whl
    echo "now, with the device tool: run(command='bash benchmarks/gpu.sh', carry=['.whl'], timeout_s=600)"
    exit 0
fi

missing() {  # the modules among "$@" that the Python cannot find (found without importing them: fast)
    "$py" -c 'import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])' "$@"
}

if [[ -n "$(missing cryptography)" ]] && compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/lightning_fed_gpu_site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

lacking="$(missing torch lightning torchvision torchmetrics cryptography yaml)"
if [[ -n "$lacking" ]]; then
    echo "benchmarks/gpu.sh: $py lacks $lacking: \`pip install -e .[dev]\`, or on a machine without internet" \
        "carry the wheels that \`bash benchmarks/gpu.sh --prepare-wheels\` makes" >&2
    exit 3
fi

if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
    "$py" benchmarks/gpu.py --out-dir "$OUT" "$@" 2>&1 | tee "$OUT/gpu_log.txt"
else
    "$py" benchmarks/gpu.py "$@"
fi

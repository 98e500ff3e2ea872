#!/usr/bin/env bash
# Create .venv-flower, the Flower comparison benchmark's own environment (benchmarks/flower.py), next to .venv.
#
#   bash benchmarks/flower_env.sh            # then: .venv-flower/bin/python benchmarks/flower.py --data-root data
#
# flwr[simulation] (Flower and Ray) is installed only here, never into .venv: it is no dependency of lightning_fed.
# torch, torchvision, lightning and lightning_fed are not installed again: a .pth file adds .venv's site-packages to
# .venv-flower's sys.path (after its own, with site.addsitedir), so both environments run the very same torch. pip sees those packages as
# installed and leaves them alone; a constraints file pins torch and torchvision to .venv's versions all the same,
# and the script fails if torch ends up imported from anywhere but .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN="$ROOT/.venv"
FLOWER="$ROOT/.venv-flower"
FLWR_SPEC="${FLWR_SPEC:-flwr[simulation]}"

if [[ ! -x "$MAIN/bin/python" ]]; then
    echo "error: $MAIN/bin/python not found: create the project's venv first (see README.md)" >&2
    exit 1
fi
# the same base interpreter as .venv, so that .venv's compiled extensions (torch) load
BASE_PYTHON="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

if [[ ! -x "$FLOWER/bin/python" ]]; then
    "$BASE_PYTHON" -m venv "$FLOWER"
fi
FLOWER_SITE="$("$FLOWER/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# an `import` line, not a bare path: site.addsitedir also runs .venv's own .pth files (the editable lightning_fed)
echo "import site; site.addsitedir('$MAIN_SITE')" > "$FLOWER_SITE/_lightning_fed_main_venv.pth"

# .venv's torch and torchvision, pinned (on top of any constraints pip is configured with)
CONSTRAINTS="$FLOWER/torch-constraints.txt"
"$MAIN/bin/python" - > "$CONSTRAINTS" <<'EOF'
from importlib.metadata import version
for name in ("torch", "torchvision"):
    print(f"{name}=={version(name)}")
EOF
extra_constraints=()
if [[ -n "${PIP_CONSTRAINT:-}" ]]; then
    extra_constraints=(-c "$PIP_CONSTRAINT")
fi

"$FLOWER/bin/python" -m pip install -c "$CONSTRAINTS" "${extra_constraints[@]}" "$FLWR_SPEC"

# check: Flower and Ray from .venv-flower, torch and lightning_fed from .venv
"$FLOWER/bin/python" - "$MAIN_SITE" "$FLOWER_SITE" <<'EOF'
import sys

import flwr
import lightning_fed
import ray
import torch

main_site, flower_site = sys.argv[1], sys.argv[2]
assert torch.__file__.startswith(main_site), f"torch imported from {torch.__file__}, not from {main_site}"
assert flwr.__file__.startswith(flower_site), f"flwr imported from {flwr.__file__}"
print(f"ok: flwr {flwr.__version__}, ray {ray.__version__} in {flower_site}")
print(f"    torch {torch.__version__} and lightning_fed from {main_site} ({lightning_fed.__file__})")
EOF

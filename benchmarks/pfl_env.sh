#!/usr/bin/env bash
# Create .venv-pfl, the pfl-research contender's own environment (benchmarks/flower.py --contenders pfl), next to .venv.
#
#   bash benchmarks/pfl_env.sh            # then: .venv-pfl/bin/python benchmarks/flower.py --data-root data
#   PFL_VENV=.venv-flower bash benchmarks/pfl_env.sh   # pfl beside Flower: every contender in one run
#
# Apple's pfl (pfl-research) is installed only here, never into .venv: it is no dependency of lightning_fed. Its
# `pytorch` extra adds nothing but torch (the `tf`, `mlx` and `trees` extras, which bring TensorFlow, MLX and
# XGBoost, are not installed). torch, torchvision, lightning and lightning_fed are not installed again: a .pth file
# adds .venv's site-packages to .venv-pfl's sys.path (after its own, with site.addsitedir), so both environments run
# the very same torch. pip sees those packages as installed and leaves them alone; a constraints file pins torch and
# torchvision to .venv's versions all the same, and the script fails if torch ends up imported from anywhere but
# .venv. (benchmarks/flower_env.sh does the same for Flower.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN="$ROOT/.venv"
PFL="$(realpath -m "${PFL_VENV:-$ROOT/.venv-pfl}")"
PFL_SPEC="${PFL_SPEC:-pfl[pytorch]==0.6.0}"

if [[ ! -x "$MAIN/bin/python" ]]; then
    echo "error: $MAIN/bin/python not found: create the project's venv first (see README.md)" >&2
    exit 1
fi
# the same base interpreter as .venv, so that .venv's compiled extensions (torch) load
BASE_PYTHON="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

if [[ ! -x "$PFL/bin/python" ]]; then
    "$BASE_PYTHON" -m venv "$PFL"
fi
PFL_SITE="$("$PFL/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# an `import` line, not a bare path: site.addsitedir also runs .venv's own .pth files (the editable lightning_fed)
echo "import site; site.addsitedir('$MAIN_SITE')" > "$PFL_SITE/_lightning_fed_main_venv.pth"

# .venv's torch and torchvision, pinned (on top of any constraints pip is configured with)
CONSTRAINTS="$PFL/torch-constraints.txt"
"$MAIN/bin/python" - > "$CONSTRAINTS" <<'EOF'
from importlib.metadata import version
for name in ("torch", "torchvision"):
    print(f"{name}=={version(name)}")
EOF
extra_constraints=()
if [[ -n "${PIP_CONSTRAINT:-}" ]]; then
    extra_constraints=(-c "$PIP_CONSTRAINT")
fi

"$PFL/bin/python" -m pip install -c "$CONSTRAINTS" "${extra_constraints[@]}" "$PFL_SPEC"

# check: pfl from .venv-pfl, torch and lightning_fed from .venv, and pfl's PyTorch path importable
"$PFL/bin/python" - "$MAIN_SITE" "$PFL_SITE" <<'EOF'
import sys
from importlib.metadata import version

import lightning_fed
import pfl
import torch
from pfl.algorithm import FederatedAveraging  # noqa: F401
from pfl.model.pytorch import PyTorchModel  # noqa: F401

main_site, pfl_site = sys.argv[1], sys.argv[2]
assert torch.__file__.startswith(main_site), f"torch imported from {torch.__file__}, not from {main_site}"
assert pfl.__file__.startswith(pfl_site), f"pfl imported from {pfl.__file__}"
print(f"ok: pfl {version('pfl')} in {pfl_site}")
print(f"    torch {torch.__version__} and lightning_fed from {main_site} ({lightning_fed.__file__})")
EOF

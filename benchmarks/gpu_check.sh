#!/usr/bin/env bash
# GPU check of the model judges (benchmark B6): embedding judge throughput GPU vs CPU, GPU utilisation,
# bf16-vs-fp32 agreement.  Run from anywhere inside the repository.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # on a machine WITH network: wheels the GPU image lacks
#                                                 # (pydantic & co, for its Python 3.12) -> out/wheels
#   bash benchmarks/gpu_check.sh --which-python   # only print which interpreter would run the check
#   bash benchmarks/gpu_check.sh [b6 options]     # on the GPU machine (no network): carry out/wheels there;
#                                                 # results in $OUT (or out/gpu_check): b6_judges.json/.log
#
# Interpreter: $PYTHON if set, else python3 when it has torch (the GPU image's), else the project's
# .venv.  A venv with --system-site-packages (out/venv-gpu) is made over python3 so its CUDA torch and
# transformers are used as they are; missing pure-Python deps come from out/wheels with --no-index,
# and the project is installed with `pip install --no-deps -e .` (PYTHONPATH fallback).
# Without CUDA the GPU parts are skipped with a message: the script also runs on a CPU-only machine.
# Expected wall time on one H100: about 1-2 minutes (model build, 4000 regions on GPU, 96 on CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHEELS="${WHEELS:-out/wheels}"
RESULTS="${OUT:-out/gpu_check}"
NEEDED="pydantic pyyaml orjson"   # not in the GPU image; everything else the judges use is

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p "$WHEELS"
  PIP="${PIP:-$ROOT/.venv/bin/pip}"
  [[ -x "$PIP" ]] || PIP="python3 -m pip"
  $PIP download --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
      --platform manylinux2014_x86_64 --implementation cp -d "$WHEELS" $NEEDED
  echo "wheels in $WHEELS: carry it to the GPU machine (run tool: carry [\"$WHEELS\"])"
  exit 0
fi

mkdir -p "$RESULTS"
has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }
# a virtualenv's python: a --system-site-packages venv made over it would see its BASE interpreter's
# site-packages (without the venv's torch), so such a python3 is used directly
in_venv() { "$1" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)" >/dev/null 2>&1; }
DEPS_TARGET=""

if [[ -n "${PYTHON:-}" ]]; then
  VPY="$PYTHON"
elif command -v python3 >/dev/null && has_torch python3 && in_venv python3; then
  VPY="$(python3 -c 'import sys; print(sys.executable)')"
  DEPS_TARGET="$ROOT/out/gpu-deps"   # missing modules go here (never into that venv), via PYTHONPATH
  echo "python3 is a virtualenv ($VPY): using it directly"
elif command -v python3 >/dev/null && has_torch python3; then
  VENV="${VENV:-out/venv-gpu}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv --system-site-packages "$VENV"
  fi
  VPY="$VENV/bin/python"
elif [[ -x .venv/bin/python ]] && has_torch .venv/bin/python; then
  VPY=".venv/bin/python"
else
  echo "no Python with torch found: set PYTHON=/path/to/python" >&2
  exit 2
fi
echo "python: $VPY ($("$VPY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
if [[ "${1:-}" == "--which-python" ]]; then exit 0; fi   # only report the interpreter choice

# Missing modules -> install from the carried wheels (offline).
missing=$("$VPY" - <<'EOF'
import importlib.util
need = {"pydantic": "pydantic", "yaml": "pyyaml", "orjson": "orjson", "transformers": "transformers", "tokenizers": "tokenizers",
        "PIL": "pillow", "scipy": "scipy", "numpy": "numpy"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if [[ -d "$WHEELS" ]]; then
    echo "installing from $WHEELS: $missing"
    if [[ -n "$DEPS_TARGET" ]]; then
      "$VPY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$DEPS_TARGET" $missing
    else
      "$VPY" -m pip install --quiet --no-index --find-links "$WHEELS" $missing
    fi
  else
    echo "missing: $missing and no $WHEELS (run 'bash benchmarks/gpu_check.sh --fetch-wheels' where there is network)" >&2
    exit 2
  fi
fi
if [[ -n "${VENV:-}" ]]; then  # only into the venv this script made, never into another environment
  "$VPY" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
    || echo "(editable install skipped; using PYTHONPATH)"
fi
export PYTHONPATH="$ROOT${DEPS_TARGET:+:$DEPS_TARGET}${PYTHONPATH:+:$PYTHONPATH}"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv | tee "$RESULTS/nvidia-smi.csv"
else
  echo "no nvidia-smi: GPU parts will be skipped"
fi

"$VPY" -m benchmarks.b6_judges --json "$RESULTS/b6_judges.json" "$@" 2>&1 | grep -v "Writing model shards\|Loading weights" | tee "$RESULTS/b6_judges.log"

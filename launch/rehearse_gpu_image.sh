#!/usr/bin/env bash
# A rehearsal of the GPU machine's image on a CPU (issue 34, part 6): a virtual environment with the image's Python
# (3.12), torch 2.11 and the image's packages (launch/gpu_image.txt: transformers 5.17, accelerate 1.15, peft, pandas,
# pyarrow, ...), then the kit (.whl/, from launch/fetch_gpu_wheels.sh) and nothing else, then the acceptance's CPU mode
# without vLLM (`launch/gpu_acceptance.sh --cpu --no-vllm`): a tiny model trained under GBPO with transformers
# generation, its checks and benchmarks/gpu_acceptance.py's JSON. It proves that the kit holds everything the image
# lacks and that gbpo runs on the image's versions; a GPU, vLLM and DeepSpeed's compiled ops it cannot show.
#
#   bash launch/rehearse_gpu_image.sh                 # builds $VENV once (downloads torch: several GB), then runs
#   bash launch/rehearse_gpu_image.sh -- --seed 1     # more gbpo.train keys after --, as gpu_acceptance.sh takes
#
# Environment: PYTHON312 (default python3.12), VENV (default /tmp/gbpo_image_venv), TORCH_SPEC (default
# torch==2.11.0: PyPI's build for Linux is the CUDA one, which runs on a CPU; point pip at a CPU index with
# PIP_INDEX_URL where one is reachable), OUT (the acceptance's JSON folder, default /tmp/gbpo_rehearsal).
# Exits 2 when the venv already has a package the image lacks (then it is not the image: remove $VENV), else with
# the acceptance's status.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON312=${PYTHON312:-python3.12}
VENV=${VENV:-/tmp/gbpo_image_venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.11.0}
export OUT=${OUT:-/tmp/gbpo_rehearsal}
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "rehearse_gpu_image.sh: no kit in .whl/: run bash launch/fetch_gpu_wheels.sh first" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON312" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_SPEC"
  "$VENV/bin/pip" install -q "$TORCH_SPEC" -r launch/gpu_image.txt  # torch named again: nothing may replace it
fi
for module in trl datasets math_verify deepspeed vllm; do
  if "$VENV/bin/python" -c "import $module" >/dev/null 2>&1; then
    echo "rehearse_gpu_image.sh: $VENV has $module, which the image lacks: remove $VENV and run again" >&2
    exit 2
  fi
done
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
print("rehearsal image: " + ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "accelerate", "peft")))
PY
rm -rf /tmp/site  # gpu_acceptance.sh installs the kit here: start from the kit alone
PYTHON="$VENV/bin/python" exec bash launch/gpu_acceptance.sh --cpu --no-vllm "$@"

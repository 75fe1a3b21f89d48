#!/usr/bin/env bash
# GPU check (never in CI): a few GBPO steps, then the same GRPO steps, on one GPU with groups of 32, on the
# Qwen2.5-Math-1.5B architecture with random weights (completions run to the length limit: a fixed, worst-case load).
# Prints generated tokens/s, seconds per step, peak GPU memory and the GBPO/GRPO step-time ratio (each trainer in its
# own process, so each peak is its own).
#
# launch/gpu_acceptance.sh supersedes it as the check for a first GPU machine: it runs this same benchmark (same
# arguments) after training the AIME recipe with ZeRO-3 and vLLM, and checks the results. This script stays as the
# benchmark alone, for a GPU machine without vLLM or DeepSpeed (it needs neither).
#
# On a machine with PyTorch (CUDA), transformers, accelerate and peft but no TRL/datasets/math-verify and no network,
# carry their wheels in .whl/ (see benchmarks/README.md) and run:  bash launch/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import trl" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/gbpo_vs_grpo.py --steps "${STEPS:-4}" --num-generations 32 \
  --max-completion-length "${MAX_COMPLETION_LENGTH:-1024}" --output "${OUT:-/tmp}/gbpo_vs_grpo.json"

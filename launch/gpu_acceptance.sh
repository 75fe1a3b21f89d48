#!/usr/bin/env bash
# GPU acceptance, one command for the first GPU machine (no hub access needed): builds a random-weight model of
# Qwen2.5-Math-1.5B's shape, trains recipes/qwen_math_aime.yaml for two generations on 1 GPU (accelerate launch
# --config_file launch/zero3_1x4.yaml --num_processes 1: DeepSpeed ZeRO-3, vLLM colocated), runs
# benchmarks/gbpo_vs_grpo.py, and writes one JSON ($OUT/acceptance.json, default OUT=/tmp/gbpo_acceptance): peak GPU
# memory, tokens/s, seconds per step, the vLLM importance-sampling ratio, the masked fraction, whether the vLLM
# weights follow training, and the checks. Exits 1 when a check failed. The logic is benchmarks/gpu_acceptance.py
# (its docstring says what is measured and checked).
#
#   bash launch/gpu_acceptance.sh              # GPU
#   bash launch/gpu_acceptance.sh --dry-run    # build the model, print the plan (commands, layout), train nothing
#   bash launch/gpu_acceptance.sh --cpu        # tiny model, vLLM for CPU, no DeepSpeed: a few minutes (CI)
#   MAX_COMPLETION_LENGTH=512 bash launch/gpu_acceptance.sh                # shorter training completions
#   bash launch/gpu_acceptance.sh -- --vllm_gpu_memory_utilization 0.3    # more gbpo.train keys after --
# Other environment variables: LEARNING_RATE, BENCH_STEPS, BENCH_MAX_COMPLETION_LENGTH, PYTHON (default python3).
#
# The GPU machine needs PyTorch (CUDA), vLLM (CUDA build, 0.22.0-0.31.0) and DeepSpeed installed. Without network,
# carry the pure-Python packages gbpo needs as wheels in .whl/ (benchmarks/README.md, "GPU acceptance", lists them):
# they are installed into /tmp/site, and gbpo itself runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ! "$PYTHON" -c "import trl, datasets, math_verify" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
exec "$PYTHON" benchmarks/gpu_acceptance.py "$@"

#!/usr/bin/env bash
# GPU acceptance, one command for the first GPU machine (no hub access needed): builds a random-weight model of
# Qwen2.5-Math-1.5B's shape, trains recipes/qwen_math_aime.yaml for two generations of 512-token completions on 1 GPU
# (DeepSpeed ZeRO-3 where it imports; vLLM colocated at vllm_gpu_memory_utilization 0.3 where a vLLM for this torch
# imports, else transformers generation of 128 rows at once), checks GBPO's loss in bf16 against fp32, runs
# benchmarks/gbpo_vs_grpo.py, and writes one JSON ($OUT/acceptance.json, default OUT=/tmp/gbpo_acceptance): peak GPU
# memory against the memory plan, tokens/s, seconds per step, the vLLM importance-sampling ratio, the masked fraction,
# whether the vLLM weights follow training, and the checks (the vLLM ones "not applicable" without vLLM; the verdict
# names the mode). Sized for <= 8 minutes on one H100 (an estimate), with time limits on training (300 s) and the
# benchmark (150 s). Then, the JSON written, it adds benchmarks/precision.py's figures (what one step at the recipe's
# lr does to the ratio in fp32, bf16 and fp16 on this GPU; 90 s limit). Exits 1 when a check failed. The logic is benchmarks/gpu_acceptance.py (its docstring says what is
# measured and checked, and the time estimate).
#
#   bash launch/gpu_acceptance.sh              # GPU
#   bash launch/gpu_acceptance.sh --no-vllm    # GPU, transformers generation (use_vllm false)
#   bash launch/gpu_acceptance.sh --full       # GPU, the recipe's 3072-token completions and layout (longer)
#   bash launch/gpu_acceptance.sh --preflight  # only the preflight table (below); exit 2 when something is missing
#   bash launch/gpu_acceptance.sh --dry-run    # build the model, print the plan (commands, layout, memory), train nothing
#   bash launch/gpu_acceptance.sh --cpu        # tiny model, vLLM for CPU, no DeepSpeed (CI)
#   bash launch/gpu_acceptance.sh --cpu --no-vllm  # tiny model, transformers generation, no DeepSpeed (CI)
#   bash launch/gpu_acceptance.sh -- --vllm_gpu_memory_utilization 0.25   # more gbpo.train keys after --
# Other environment variables: MAX_COMPLETION_LENGTH, LEARNING_RATE, BENCH_STEPS, BENCH_MAX_COMPLETION_LENGTH,
# TRAIN_TIMEOUT, BENCH_TIMEOUT, PRECISION_TIMEOUT (seconds, 0 for none), PRECISION_MAX_COMPLETION_LENGTH, PYTHON
# (default python3).
#
# Every mode starts with the preflight (benchmarks/preflight.py): one table of the GPU(s), Python, torch and its CUDA,
# and whether each package the run needs imports, at which version; which vLLM matches this torch; the mode that would
# run; and what is missing. It exits 2, before any model is built, when something the mode requires is missing,
# naming the wheel to carry. The GPU machine needs PyTorch with CUDA; vLLM (the CUDA build matching its torch) and
# DeepSpeed are used where they import. Without network, carry the packages such an image lacks as wheels in .whl/
# (`bash launch/fetch_gpu_wheels.sh` where an index is reachable; launch/gpu_wheels.txt pins them): when one of them
# does not import they are installed into /tmp/site, and gbpo itself runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ! "$PYTHON" -c "import trl, datasets, math_verify, deepspeed" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PREFLIGHT_ONLY=0
for arg in "$@"; do
  if [ "$arg" = "--" ]; then break; fi  # gbpo.train keys follow
  if [ "$arg" = "--preflight" ]; then PREFLIGHT_ONLY=1; fi
done
STATUS=0
"$PYTHON" benchmarks/preflight.py "$@" || STATUS=$?
if [ "$STATUS" -ne 0 ] || [ "$PREFLIGHT_ONLY" -eq 1 ]; then
  exit "$STATUS"
fi
exec "$PYTHON" benchmarks/gpu_acceptance.py "$@"

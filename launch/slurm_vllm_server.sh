#!/bin/bash
# Multi-node GBPO with a dedicated vLLM generation server (TRL's server mode):
# node 0 runs `trl vllm-serve`, the other nodes train with DeepSpeed ZeRO-3 (launch/zero3_multinode.yaml).
#   sbatch --nodes=3 launch/slurm_vllm_server.sh recipes/qwen_math_aime.yaml      (from the repository's root)
# Recipe keys that go with it (set here on the command line): use_vllm true, vllm_mode server,
# vllm_server_host <node 0>, and resume_from_checkpoint true: the same sbatch command continues a run from its last
# complete checkpoint (a fresh output_dir starts afresh). The server holds the model on its own GPUs (data parallel).
#
# Server start: the trainers start only once the server's /health answers (launch/wait_for_health.py): a cold 8-GPU
# server that loads the model, compiles and captures CUDA graphs can take longer than TRL's default 240 s. The wait
# is VLLM_SERVER_TIMEOUT seconds (default 1200), passed to the trainers as vllm_server_timeout too; past it, or when
# the server's step exits first, the job stops with an error that names the server's log, VLLM_LOG (default
# vllm_server_<job id>.log in the submission directory), and prints its last lines. VLLM_PORT: the server's port (8000).
#
# Batch layout: (nodes - 1) x 8 training processes. `python -m gbpo.layout` derives the recipe's layout for them before
# anything starts and stops the job with an error naming the key to change when it cannot hold; gbpo.train derives the
# same layout and says in one line what it changed (--nodes=3: 16 processes, the paper's 2 prompts per optimizer step
# with per_device_train_batch_size 32 -> 8).
# CPUs: every srun step gets all CPUs of its nodes (--cpus-per-task; since SLURM 22.05 a step no longer inherits the
# job's --cpus-per-task, and without it a step may be bound to one CPU for 8 trainers); each trainer sizes its grading
# pool from the CPUs it is given.
# Time limit: SLURM sends SIGUSR1 to this script 600 s before the limit (up to 60 s earlier). It goes on to the
# training processes only (launch/forward_usr1.sh, not their launcher), which save a checkpoint at the end of their
# step and exit with 143. Raise the lead time if a step plus a save takes longer (README, "Preemption and resume").
#SBATCH --job-name=gbpo
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --signal=B:USR1@600
set -euo pipefail
RECIPE=${1:?usage: sbatch --nodes=N launch/slurm_vllm_server.sh RECIPE.yaml}
MODEL=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['model_name_or_path'])" "$RECIPE")
NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
VLLM_NODE=${NODES[0]}
TRAIN_NODES=("${NODES[@]:1}")
NUM_TRAIN_NODES=${#TRAIN_NODES[@]}
if [ "$NUM_TRAIN_NODES" -lt 1 ]; then
  echo "slurm_vllm_server.sh: needs --nodes=2 or more (node 0 serves vLLM, the others train)" >&2
  exit 2
fi
GPUS_PER_NODE=8
NUM_PROCESSES=$((NUM_TRAIN_NODES * GPUS_PER_NODE))
CPUS_PER_NODE=${SLURM_CPUS_ON_NODE:?SLURM_CPUS_ON_NODE is not set: run this script with sbatch}
VLLM_PORT=${VLLM_PORT:-8000}
VLLM_SERVER_TIMEOUT=${VLLM_SERVER_TIMEOUT:-1200}
VLLM_LOG=${VLLM_LOG:-vllm_server_${SLURM_JOB_ID:-$$}.log}

python -m gbpo.layout "$RECIPE" --num_processes "$NUM_PROCESSES"

srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS_PER_NODE" --nodelist="$VLLM_NODE" \
  trl vllm-serve --model "$MODEL" --tensor-parallel-size 1 --data-parallel-size "$GPUS_PER_NODE" \
  --host 0.0.0.0 --port "$VLLM_PORT" >"$VLLM_LOG" 2>&1 &
VLLM_PID=$!
echo "slurm_vllm_server.sh: waiting up to $VLLM_SERVER_TIMEOUT s for the vLLM server on $VLLM_NODE (log: $VLLM_LOG)"
if ! python launch/wait_for_health.py "http://$VLLM_NODE:$VLLM_PORT/health" --timeout "$VLLM_SERVER_TIMEOUT" \
  --log "$VLLM_LOG" --pid "$VLLM_PID"; then
  echo "slurm_vllm_server.sh: no trainer was started; see the vLLM server's log, $VLLM_LOG" >&2
  kill "$VLLM_PID" 2>/dev/null || true
  exit 1
fi

srun --nodes="$NUM_TRAIN_NODES" --ntasks="$NUM_TRAIN_NODES" --ntasks-per-node=1 --cpus-per-task="$CPUS_PER_NODE" \
  --nodelist="$(IFS=,; echo "${TRAIN_NODES[*]}")" \
  bash launch/forward_usr1.sh bash -c "exec accelerate launch --config_file launch/zero3_multinode.yaml \
  --num_machines $NUM_TRAIN_NODES --num_processes $NUM_PROCESSES \
  --machine_rank \$SLURM_PROCID --main_process_ip ${TRAIN_NODES[0]} --main_process_port 29500 \
  -m gbpo.train $RECIPE --use_vllm true --vllm_mode server --vllm_server_host $VLLM_NODE --vllm_server_port $VLLM_PORT \
  --vllm_server_timeout $VLLM_SERVER_TIMEOUT --resume_from_checkpoint true" &
TRAIN_PID=$!
# srun passes SIGUSR1 on to its tasks (a SIGTERM to srun would kill them instead).
SIGNALLED=0
trap 'SIGNALLED=1; echo "slurm_vllm_server.sh: SIGUSR1, the time limit is near: the trainers save a checkpoint" >&2
      kill -USR1 "$TRAIN_PID"' USR1
while kill -0 "$TRAIN_PID" 2>/dev/null; do
  wait "$TRAIN_PID" || true  # returns early when the trap has run
done
STATUS=0
wait "$TRAIN_PID" || STATUS=$?
kill "$VLLM_PID" 2>/dev/null || true
if [ "$SIGNALLED" -eq 1 ]; then  # the trainers exited 143 after their save; their launcher reports a failure
  echo "slurm_vllm_server.sh: trainers stopped (status $STATUS) after saving a checkpoint at the end of their step;" \
    "submit the same command again to continue." >&2
fi
exit "$STATUS"

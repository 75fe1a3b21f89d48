#!/bin/bash
# Multi-node GBPO with a dedicated vLLM generation server (TRL's server mode):
# node 0 runs `trl vllm-serve`, the other nodes train with DeepSpeed ZeRO-3 (launch/zero3_multinode.yaml).
#   sbatch --nodes=3 launch/slurm_vllm_server.sh recipes/qwen_math_aime.yaml
# Recipe keys that go with it (set here on the command line): use_vllm true, vllm_mode server,
# vllm_server_host <node 0>. The server holds the model on its own GPUs (tensor parallel over --tensor-parallel-size).
#SBATCH --job-name=gbpo
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
set -euo pipefail
RECIPE=${1:?usage: sbatch --nodes=N launch/slurm_vllm_server.sh RECIPE.yaml}
MODEL=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['model_name_or_path'])" "$RECIPE")
NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
VLLM_NODE=${NODES[0]}
TRAIN_NODES=("${NODES[@]:1}")
NUM_TRAIN_NODES=${#TRAIN_NODES[@]}
GPUS_PER_NODE=8

srun --nodes=1 --ntasks=1 --nodelist="$VLLM_NODE" trl vllm-serve --model "$MODEL" --tensor-parallel-size 1 \
  --data-parallel-size "$GPUS_PER_NODE" --host 0.0.0.0 --port 8000 &

srun --nodes="$NUM_TRAIN_NODES" --ntasks="$NUM_TRAIN_NODES" --nodelist="$(IFS=,; echo "${TRAIN_NODES[*]}")" bash -c "
accelerate launch --config_file launch/zero3_multinode.yaml \
  --num_machines $NUM_TRAIN_NODES --num_processes $((NUM_TRAIN_NODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip ${TRAIN_NODES[0]} --main_process_port 29500 \
  -m gbpo.train $RECIPE --use_vllm true --vllm_mode server --vllm_server_host $VLLM_NODE --vllm_server_port 8000"

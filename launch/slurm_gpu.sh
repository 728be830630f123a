#!/usr/bin/env bash
# Trains jaxgpt on several GPU machines under SLURM: sbatch launch/slurm_gpu.sh [TRAIN_FLAGS...]
#
# One process per GPU: JAX reads SLURM's variables, the processes find each other, and each
# takes the GPU of its local rank, so --ntasks-per-node must equal --gpus-per-node (and no
# --gpus-per-task, which would hide the other GPUs from each process).
# Settings from the environment: WORKDIR (on a filesystem every node shares), CONFIG, VENV.
# --requeue: a preempted or failed node puts the job back in the queue, and it resumes from
# the newest checkpoint in WORKDIR.
#SBATCH --job-name=jaxgpt
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=jaxgpt-%j.log
set -euo pipefail

main() {
  cd "${SLURM_SUBMIT_DIR:-.}"
  local workdir="${WORKDIR:-$PWD/runs/slurm}"
  local config="${CONFIG:-configs/shakespeare_char.py}"
  local venv="${VENV:-$PWD/.venv}"
  # JAX takes 75% of each GPU's memory when it starts; training alone on a GPU can take more.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  srun --kill-on-bad-exit=1 "$venv/bin/python" -m jaxgpt.train --config="$config" \
    --workdir="$workdir" "$@"
}

main "$@"

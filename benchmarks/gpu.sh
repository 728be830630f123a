#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one run (issue 4's acceptance 3, issue 7's acceptance 2),
# on one GPU, with tiny shakespeare (the text nanoGPT's figures used) given as the argument:
#
#   bash benchmarks/gpu.sh PATH/TO/tinyshakespeare.txt
#
# Needs jaxgpt's requirements with a CUDA jax; not TensorFlow (the NumPy input path is used).
# Prints the card, then for each check one BENCHMARKS.md row or the figures to put in one.
set -euo pipefail
text=${1:?usage: bash benchmarks/gpu.sh PATH/TO/tinyshakespeare.txt}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=(--config.data.source=text "--config.data.path=$text" --config.data.pipeline=numpy)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

timed_run() {  # the whole training run of configs/$1.py, timed from the command line
  local workdir start
  workdir=$(mktemp -d)
  start=$(date +%s.%N)
  python -m jaxgpt.train --config="configs/$1.py" "${data[@]}" --workdir="$workdir" \
    --config.train.sample_tokens=0 | grep -E "val loss|^model|^done"
  echo "end to end: $(echo "$(date +%s.%N) - $start" | bc) s (start-up and compilation included)"
  rm -rf "$workdir"
}

echo "== shakespeare_char: 5,000 steps, evaluation every 250 over 200 batches (target <= 25 s, best val <= 1.47)"
timed_run shakespeare_char

echo "== speedrun_shakespeare: the same model with today's recipe (RoPE, RMSNorm, QK-norm, ReLU², untied head, Muon), 2,000 steps"
timed_run speedrun_shakespeare

echo "== its train step, evaluation and compile time"
python -m jaxgpt.bench --config=configs/shakespeare_char.py "${data[@]}" --steps=200

echo "== GPT-2 124M shape: batch 12 x 1024, bfloat16, vocabulary padded to 50,304 (target <= 21 ms/step)"
python -m jaxgpt.bench --config=configs/shakespeare_char.py "${data[@]}" --steps=50 \
  --config.model.n_layer=12 --config.model.n_head=12 --config.model.n_embd=768 \
  --config.model.block_size=1024 --config.model.dropout=0 --config.model.vocab_multiple=50304 \
  --config.train.batch_size=12 --config.train.eval_steps=20

echo "== generation, shakespeare_char shape (targets >= 10,000 tok/s at batch 1, >= 500,000 at 64)"
python benchmarks/generate.py --n_layer 6 --n_head 6 --n_embd 384 --block_size 256 --batch 1 64

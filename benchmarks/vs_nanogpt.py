"""jaxgpt's default CPU run against nanoGPT's train.py on the same text, back to back.

nanoGPT (karpathy/nanoGPT, PyTorch on CPU, float32, no compile) trains the 4-layer, 4-head,
128-wide model of the old default with its schedule: lr 4e-3, 100 warm-up steps, cosine to
1e-4 over 4,000 steps, batch 12 x 64, dropout 0. Its data is jaxgpt's own split of the
bundled plays, written as a nanoGPT char dataset (train.bin, val.bin, meta.pkl). Both programs
evaluate only at the end, on 200 batches: nanoGPT's train.py is copied and its evaluation at
step 0 switched off (the only change). jaxgpt runs `python -m jaxgpt.train` with the sample
switched off (`--config.train.sample_tokens=0`) plus any --jaxgpt overrides.

Each figure is the wall time of the whole process (start-up to exit) and the final
validation loss. Prints one Markdown row per run for BENCHMARKS.md.

  git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
  python benchmarks/vs_nanogpt.py --nanogpt=/tmp/nanoGPT [--skip_nanogpt]
      [--jaxgpt="--config.train.max_steps=2000" --jaxgpt="--config.train.optimizer=adamw" ...]

Every --jaxgpt value is one jaxgpt run (its overrides, space-separated); "" is the default.
"""

import argparse
import datetime
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANOGPT_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=200", "--eval_interval=4000",
                 "--log_interval=100", "--block_size=64", "--batch_size=12", "--n_layer=4",
                 "--n_head=4", "--n_embd=128", "--max_iters=4000", "--lr_decay_iters=4000",
                 "--warmup_iters=100", "--learning_rate=4e-3", "--min_lr=1e-4", "--dropout=0.0",
                 "--always_save_checkpoint=False"]
FIRST_EVAL = "if iter_num % eval_interval == 0 and master_process:"


def write_char_dataset(folder: str) -> None:
  """jaxgpt's train and validation text of the plays as nanoGPT's shakespeare_char files."""
  sys.path.insert(0, REPO)
  from configs import default  # pylint: disable=g-import-not-at-top
  from jaxgpt.data import sources  # pylint: disable=g-import-not-at-top
  train, val = sources.load_splits(default.get_config().data)
  chars = sorted(set(train + val))
  stoi = {ch: i for i, ch in enumerate(chars)}
  os.makedirs(folder)
  for name, text in (("train", train), ("val", val)):
    np.array([stoi[c] for c in text], np.uint16).tofile(os.path.join(folder, f"{name}.bin"))
  with open(os.path.join(folder, "meta.pkl"), "wb") as f:
    pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def nanogpt_copy(source: str, work: str) -> str:
  """A copy of nanoGPT whose train.py does not evaluate at step 0, with the plays as data."""
  copy = os.path.join(work, "nanoGPT")
  shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".git", "data", "assets"))
  path = os.path.join(copy, "train.py")
  with open(path, encoding="utf-8") as f:
    code = f.read()
  if FIRST_EVAL not in code:
    sys.exit(f"{path} has no line {FIRST_EVAL!r}: this script knows nanoGPT's train.py as of 2024")
  with open(path, "w", encoding="utf-8") as f:
    f.write(code.replace(FIRST_EVAL, FIRST_EVAL.replace(" and master", " and iter_num > 0 and master")))
  write_char_dataset(os.path.join(copy, "data", "jaxgpt_plays"))
  return copy


def timed(command: list[str], cwd: str) -> tuple[float, str]:
  started = time.perf_counter()
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - started
  if result.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  return wall, result.stdout


def run_nanogpt(copy: str) -> tuple[float, float]:
  command = [sys.executable, "train.py", "config/train_shakespeare_char.py",
             "--dataset=jaxgpt_plays", "--out_dir=out", *NANOGPT_FLAGS]
  wall, out = timed(command, copy)
  return wall, float(re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", out)[-1])


def run_jaxgpt(overrides: str, work: str) -> tuple[float, float, int]:
  workdir = tempfile.mkdtemp(dir=work)
  command = [sys.executable, "-m", "jaxgpt.train", f"--workdir={workdir}", *overrides.split(),
             "--config.train.sample_tokens=0"]  # after a --config= among the overrides
  wall, _ = timed(command, REPO)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [r for r in map(json.loads, f) if "val_loss" in r]
  return wall, evals[-1]["val_loss"], evals[-1]["step"]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--nanogpt", help="a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
  p.add_argument("--skip_nanogpt", action="store_true")
  p.add_argument("--jaxgpt", action="append", help="one jaxgpt run's overrides ('' = default)")
  args = p.parse_args()
  runs = args.jaxgpt if args.jaxgpt is not None else [""]
  date = datetime.date.today().isoformat()
  print(f"{date}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
  print("| program | overrides | wall s | steps | final val loss |\n| --- | --- | --- | --- | --- |")
  with tempfile.TemporaryDirectory() as work:
    if not args.skip_nanogpt:
      wall, val = run_nanogpt(nanogpt_copy(args.nanogpt, work))
      print(f"| nanoGPT | (its flags in this script) | {wall:.1f} | 4000 | {val:.4f} |", flush=True)
    for overrides in runs:
      wall, val, steps = run_jaxgpt(overrides, work)
      print(f"| jaxgpt | `{overrides or '(default)'}` | {wall:.1f} | {steps} | {val:.4f} |",
            flush=True)


if __name__ == "__main__":
  main()

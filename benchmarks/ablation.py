"""What each option of the default CPU recipe is worth: validation loss at equal wall time.

Runs `python -m jaxgpt.train` (configs/default.py, sample off) as it is, then with each of
its options switched back to nanoGPT's value one at a time, then with all of them switched
back (nanoGPT's GPT-2 with AdamW). Each variant's train step is timed first
(`python -m jaxgpt.bench`), and it trains for the steps that fit in the time the recipe's
steps take, so every row had the same training time; warm-up and cosine decay follow its
own step count. Prints one Markdown row per variant for BENCHMARKS.md.

  python benchmarks/ablation.py [--steps=N] [--only=model.mlp,train.optimizer]

--steps sets the recipe's own step count (default: configs/default.py's), and so the budget.
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

from vs_nanogpt import REPO, run_jaxgpt  # the script's own folder is on sys.path

# Each option of the recipe and its nanoGPT value.
NANOGPT_VALUES = {
    "train.optimizer": "adamw",
    "model.position": "learned",
    "model.norm": "layernorm",
    "model.qk_norm": "False",
    "model.mlp": "gelu",
    "model.tie_embeddings": "True",
    "model.zero_init_proj": "False",
}


def recipe():
  sys.path.insert(0, REPO)
  from configs import default  # pylint: disable=g-import-not-at-top
  return default.get_config()


def step_ms(overrides: list[str]) -> float:
  result = subprocess.run([sys.executable, "-m", "jaxgpt.bench", "--steps=60", *overrides],
                          cwd=REPO, capture_output=True, text=True, check=True)
  return float(re.search(r"([\d.]+) ms/step", result.stdout).group(1))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", default="", help="comma-separated keys of NANOGPT_VALUES to ablate")
  p.add_argument("--steps", type=int, default=0, help="the recipe's steps (0: the config's)")
  args = p.parse_args()
  config = recipe()
  config.train.max_steps = args.steps or config.train.max_steps
  keys = [k for k in NANOGPT_VALUES if not args.only or k in args.only.split(",")]
  variants = {"the recipe (configs/default.py)": []}
  variants.update({f"{k}={NANOGPT_VALUES[k]}": [f"--config.{k}={NANOGPT_VALUES[k]}"]
                   for k in keys})
  variants["all of them (nanoGPT's GPT-2, AdamW)"] = [f"--config.{k}={v}"
                                                      for k, v in NANOGPT_VALUES.items()]
  recipe_ms = step_ms([])
  budget_s = config.train.max_steps * recipe_ms / 1000
  print(f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"the recipe: {config.train.max_steps} steps at {recipe_ms:.1f} ms = {budget_s:.1f} s "
        "of training")
  print("| variant | ms/step | steps in that time | wall s (whole run) | final val loss |\n"
        "| --- | --- | --- | --- | --- |")
  for name, overrides in variants.items():
    ms = recipe_ms if not overrides else step_ms(overrides)
    steps = max(config.train.warmup_steps + 1, round(budget_s * 1000 / ms / 10) * 10)
    with tempfile.TemporaryDirectory() as work:
      wall, val, _ = run_jaxgpt(" ".join([*overrides, f"--config.train.max_steps={steps}"]), work)
    print(f"| {name} | {ms:.1f} | {steps} | {wall:.1f} | {val:.4f} |", flush=True)


if __name__ == "__main__":
  main()

"""Compile time and memory per device of train steps compiled from abstract shapes alone:
the "Compiling without allocating" rows of BENCHMARKS.md.

  python benchmarks/compile_memory.py [--only=WORD]

Runs `python -m jaxgpt.bench --compile_only --json` for a 48-layer model (256 wide, 8 heads,
block 256, shakespeare_char's batch of 64) unrolled and scanned, with each model.remat
policy, and for configs/gpt2_xl.py on 8 and on 4 simulated CPU devices (and with
remat=dots on 8); prints one Markdown row each. --only keeps the rows whose name contains WORD. Nothing is allocated: GPT-2 XL's
state alone is 18.7 GB.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS_48 = ["--config=shakespeare_char", "--config.model.n_layer=48",
             "--config.model.n_embd=256", "--config.model.n_head=8"]
ROWS = [  # (name, simulated CPU devices, flags)
    *((f"48 layers, {form}, remat {remat}", 2,
       LAYERS_48 + [f"--config.model.scan_layers={form == 'scanned'}",
                    f"--config.model.remat={remat}"])
      for form in ("unrolled", "scanned") for remat in ("none", "dots", "full")),
    ("GPT-2 XL, fsdp over 8 devices (v5e-8, 8 GPUs)", 8, ["--config=gpt2_xl"]),
    ("GPT-2 XL, fsdp over 4 devices (v4-8)", 4, ["--config=gpt2_xl"]),
    ("GPT-2 XL, fsdp over 8 devices, remat dots (8 x 80 GB GPUs)", 8,
     ["--config=gpt2_xl", "--config.model.remat=dots"]),
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="only the rows whose name contains this")
  args = parser.parse_args()
  print("| what | command | compile | arguments | temporaries | in all (per device) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, devices, flags in ROWS:
    if args.only not in name:
      continue
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "jaxgpt.bench", "--compile_only", "--json", *flags]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    shown = f"JAX_NUM_CPU_DEVICES={devices} python -m jaxgpt.bench --compile_only {' '.join(flags)}"
    gb = {key: f"{value / 1e9:.2f} GB" for key, value in figures.items()}
    print(f"| {name} | `{shown}` | {figures['compile_seconds']:.1f} s | "
          f"{gb['argument_bytes']} | {gb['temp_bytes']} | {gb['total_bytes']} |", flush=True)


if __name__ == "__main__":
  main()

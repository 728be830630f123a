"""nanoGPT's sampling (its model.py `generate`) in PyTorch, timed as benchmarks/generate.py
times jaxgpt's, for comparison on the same machine on the same day.

Each new token runs the whole context (the last block_size tokens) through the model, takes
the last position's logits, divides by the temperature, keeps the top_k and draws from the
softmax: nanoGPT's sample.py defaults (temperature 0.8, top_k 200), float32, no compile,
random parameters of nanoGPT's CPU shape. Needs `torch`.

  python benchmarks/nanogpt_sample.py [--batch 1 16] [--long 500 --short 100] [--threads 2]

Each figure is batch x (long - short) / (time of long new tokens - time of short), so only
the tokens after the first count, from a one-token prompt.
"""

import argparse
import os
import time

import torch
from torch.nn import functional as F

from nanogpt_step import add_torch_flags, seeded_model  # the script's own folder is on sys.path


@torch.no_grad()
def generate(model, idx, max_new_tokens: int, block_size: int, temperature=0.8, top_k=200):
  for _ in range(max_new_tokens):
    logits = model(idx[:, -block_size:]) / temperature
    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
    logits[logits < v[:, [-1]]] = -float("inf")
    idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
    idx = torch.cat((idx, idx_next), dim=1)
  return idx


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_torch_flags(p)
  p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
  p.add_argument("--long", type=int, default=500)
  p.add_argument("--short", type=int, default=100)
  args = p.parse_args()
  model = seeded_model(args).eval()

  def seconds(n, batch):
    started = time.perf_counter()
    generate(model, torch.zeros((batch, 1), dtype=torch.long), n, args.block_size)
    return time.perf_counter() - started

  for batch in args.batch:
    seconds(args.short, batch)  # warm-up
    rate = batch * (args.long - args.short) / (seconds(args.long, batch) - seconds(args.short, batch))
    print(f"nanoGPT sampling (PyTorch {torch.__version__}, {args.threads} threads), batch "
          f"{batch}: {rate:,.0f} tokens/s; load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
  main()

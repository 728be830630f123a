"""Generation speed in tokens/s, counting only the tokens after the first.

A model of the given shape with random parameters generates from a one-token prompt with
the sample command's defaults (temperature 0.8, top_k 200). Each figure is
  num_samples * (long - short) / (time(long) - time(short)),
so prefill, compilation and start-up cancel out; the median of --repeats is reported.
Defaults are nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, block 64, 65 symbols).

  PYTHONPATH=. python benchmarks/generate.py [--batch 1 16 64] [--long 2048 --short 256]
"""

import argparse
import os
import statistics
import time

from model_flags import add_model_flags  # the script's own folder is on sys.path


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_flags(p)
  p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
  p.add_argument("--long", type=int, default=2048)
  p.add_argument("--short", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  return p.parse_args()


def main():
  args = parse_args()
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jaxgpt import generate
  from jaxgpt.model import GPT, GPTConfig
  model = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd))
  tokens_1xS = jnp.zeros((1, args.block_size), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens_1xS)["params"])
  sampling = generate.Sampling(temperature=0.8, top_k=200)

  def seconds(n, batch):
    started = time.perf_counter()
    for _ in generate.generate(model, params, [0], n, sampling, num_samples=batch):
      pass
    return time.perf_counter() - started

  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.2f}")
  for batch in args.batch:
    timing = generate.Timing()
    list(generate.generate(model, params, [0], args.short, sampling, batch, timing=timing))
    rates = []
    for _ in range(args.repeats):
      short = seconds(args.short, batch)
      rates.append(batch * (args.long - args.short) / (seconds(args.long, batch) - short))
    print(f"batch {batch:3d}: {statistics.median(rates):9,.0f} tokens/s "
          f"(runs {', '.join(f'{r:,.0f}' for r in sorted(rates))}; "
          f"first call compiled in {timing.compile_s:.1f} s)", flush=True)


if __name__ == "__main__":
  main()

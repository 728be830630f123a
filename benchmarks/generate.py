"""Generation speed in tokens/s, counting only the tokens after the first.

A model of the given shape with random parameters generates from a one-token prompt with
the sample command's defaults (temperature 0.8, top_k 200). Each figure is
  num_samples * (long - short) / (time(long) - time(short)),
so prefill, compilation and start-up cancel out; the median of --repeats is reported.
Defaults are nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, block 64, 65 symbols padded
to 128 as the run configs pad them) on as many CPU devices as the sample command uses (2 on
this 2-core machine), the parameters on all of them as a loaded run has them.

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
  p.add_argument("--vocab_multiple", type=int, default=64)
  p.add_argument("--cpu_devices", type=int, default=0,
                 help="CPU devices (0: as many as the sample command uses)")
  return p.parse_args()


def main():
  args = parse_args()
  import jax
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  else:
    from jaxgpt import runtime
    runtime.configure_cpu_devices()
  import flax.linen as nn
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from jaxgpt import generate
  from jaxgpt.model import GPT, GPTConfig
  model = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd,
                        vocab_multiple=args.vocab_multiple))
  tokens_1xS = jnp.zeros((1, args.block_size), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens_1xS)["params"])
  params = jax.device_put(params, NamedSharding(Mesh(np.array(jax.devices()), ("data",)),
                                                PartitionSpec()))
  sampling = generate.Sampling(temperature=0.8, top_k=200)

  def seconds(n, batch):
    started = time.perf_counter()
    for _ in generate.generate(model, params, [0], n, sampling, num_samples=batch):
      pass
    return time.perf_counter() - started

  print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"load {os.getloadavg()[0]:.2f}", flush=True)
  for batch in args.batch:
    timing = generate.Timing()
    list(generate.generate(model, params, [0], args.short, sampling, batch, timing=timing))
    rates = []
    for _ in range(args.repeats):
      short = seconds(args.short, batch)
      rates.append(batch * (args.long - args.short) / (seconds(args.long, batch) - short))
    print(f"batch {batch:3d}: {statistics.median(rates):9,.0f} tokens/s "
          f"(runs {', '.join(f'{r:,.0f}' for r in sorted(rates))}; "
          f"first call compiled in {timing.compile_s:.1f} s; load {os.getloadavg()[0]:.2f})",
          flush=True)


if __name__ == "__main__":
  main()

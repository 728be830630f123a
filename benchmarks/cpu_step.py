"""Median milliseconds per training step of jaxgpt's own train step, on random tokens.

Defaults are nanoGPT's CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12).
Each step is waited on before the next is dispatched: with several simulated CPU devices,
steps in flight can deadlock XLA's CPU all-reduce.

  PYTHONPATH=. python benchmarks/cpu_step.py [--devices 2] [--n_layer 6 --n_embd 192 ...]

XLA flags come from the environment (XLA_FLAGS) as usual.
"""

import argparse
import os
import statistics
import time

import numpy as np

from model_flags import add_model_flags  # the script's own folder is on sys.path


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_flags(p)
  p.add_argument("--batch_size", type=int, default=12)
  p.add_argument("--devices", type=int, default=1, help="simulated CPU devices (data parallel)")
  p.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
  p.add_argument("--repeats", type=int, default=3)
  return p.parse_args()


def build(args):
  from jaxgpt import config, model, optim, sharding, state, steps
  c = config.base_config()
  c.model.update(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                 block_size=args.block_size, dropout=0.0)
  c.train.update(batch_size=args.batch_size)
  gpt = model.GPT(model.model_config(c, args.vocab))
  optimizer = optim.make_optimizer(c.train)
  mesh = sharding.make_mesh(c.mesh)
  shardings = state.state_shardings(gpt, optimizer, mesh)
  train_state = state.init_state(gpt, optimizer, mesh, c.seed)
  step = steps.jit_train_step(gpt, optimizer, optim.learning_rate_schedule(c.train),
                              state.dropout_key(c.seed), mesh, shardings)
  return mesh, train_state, step


def batches(args, mesh, count):
  from jaxgpt import sharding
  rng = np.random.default_rng(0)
  shape = (1, args.batch_size, args.block_size + 1)
  for _ in range(count):
    tokens = rng.integers(0, args.vocab, size=shape, dtype=np.int32)
    yield (sharding.global_batch(tokens[:, :, :-1], mesh, 1),
           sharding.global_batch(tokens[:, :, 1:], mesh, 1))


def main():
  args = parse_args()
  import jax
  jax.config.update("jax_num_cpu_devices", args.devices)
  from jaxgpt import sharding
  mesh, train_state, step = build(args)
  with sharding.rules_context(mesh):
    t0 = time.perf_counter()
    train_state, metrics = step(train_state, *next(batches(args, mesh, 1)))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    medians, fastest, cpu_ms = [], [], []
    for _ in range(args.repeats):
      times = []
      cpu0 = time.process_time()
      for x, y in batches(args, mesh, args.steps + 5):
        t0 = time.perf_counter()
        train_state, metrics = step(train_state, x, y)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
      cpu_ms.append(1000 * (time.process_time() - cpu0) / len(times))
      medians.append(1000 * statistics.median(times[5:]))
      fastest.append(1000 * statistics.quantiles(times[5:], n=10)[0])
  ms = statistics.median(medians)
  tokens = args.batch_size * args.block_size
  # Other processes on a small machine slow some steps: the 10th percentile shows the step
  # time with less interference, and the process's CPU time per step its work on all cores.
  print(f"{ms:.1f} ms/step ({', '.join(f'{m:.1f}' for m in medians)}), "
        f"p10 {statistics.median(fastest):.1f} ms, cpu {statistics.median(cpu_ms):.1f} ms, "
        f"{1000 * tokens / ms:,.0f} tokens/s, compile {compile_s:.1f} s, "
        f"loss {float(metrics['loss']):.4f}, devices {args.devices}, "
        f"load {os.getloadavg()[0]:.2f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


if __name__ == "__main__":
  main()

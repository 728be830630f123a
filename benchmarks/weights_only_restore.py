"""How much of a checkpoint sampling and export read: the weights, not the optimizer's state.

  python benchmarks/weights_only_restore.py [--dir=DIR]

Saves an initialised train state of GPT-2 124M's shape (12 layers, 12 heads, 768 wide, block
1,024, vocabulary 50,257 padded to 50,304, AdamW) as a jaxgpt checkpoint on CPU, then restores
it as sampling and export do (only the parameters) and as a resume does (the whole state).
Before each restore the checkpoint's files are evicted from the page cache (posix_fadvise), so
/proc/self/io's read_bytes counts what came from the disk; rchar counts every byte that read
and pread calls returned, cached or not (TensorStore reads the checkpoint with pread64, as
strace shows). Prints both, the seconds, and the checkpoint's size. DIR keeps the checkpoint
between runs (default: a temporary folder, removed at the end).

An initialised state's Adam moments are zeros, and Orbax writes no chunk that equals the fill
value, so that checkpoint would hold the weights alone. The state first takes one AdamW update
with random gradients (no data, no training step): its moments then fill their chunks as in
any trained run.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from jaxgpt import checkpoint, config as config_lib, optim, sharding
from jaxgpt import state as state_lib
from jaxgpt.model import GPT

STEP = 1


def gpt2_124m_config():
  c = config_lib.base_config()
  c.model.update(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0,
                 vocab_multiple=64)
  return c


def with_moments(state, optimizer):
  """`state` after one optimizer update with random gradients."""
  leaves, tree = jax.tree.flatten(state.params)
  grads = tree.unflatten([1e-3 * jax.random.normal(jax.random.key(i), p.shape, p.dtype)
                          for i, p in enumerate(leaves)])
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


def folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, files in os.walk(folder) for name in files)


def evict(folder: str) -> None:
  for root, _, files in os.walk(folder):
    for name in files:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


def io_counters() -> dict:
  with open("/proc/self/io", encoding="ascii") as f:
    return {key: int(value) for key, value in (line.split(": ") for line in f)}


def measure(restore, folder: str):
  """(seconds, bytes from the disk, bytes through read calls) of one restore, cache cold."""
  evict(folder)
  before, started = io_counters(), time.perf_counter()
  jax.block_until_ready(restore())
  seconds = time.perf_counter() - started
  after = io_counters()
  return seconds, after["read_bytes"] - before["read_bytes"], after["rchar"] - before["rchar"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", default=None)
  args = parser.parse_args()
  workdir = args.dir or tempfile.mkdtemp(prefix="jaxgpt-restore-")
  config = gpt2_124m_config()
  model = GPT(config_lib.model_config(config, 50257))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh)
  try:
    with sharding.rules_context(mesh):
      abstract = state_lib.abstract_state(model, optimizer, mesh)
      saved = checkpoint.Checkpointer(workdir)
      if saved.latest_step() != STEP:
        state = state_lib.init_state(model, optimizer, mesh, config.seed)
        saved.save(STEP, with_moments(state, optimizer))
      saved.close()
      folder = os.path.join(workdir, checkpoint.LATEST_DIR, str(STEP))
      total = folder_bytes(folder)
      print(f"checkpoint {folder}: {total / 1e6:,.1f} MB, of which the params item "
            f"{folder_bytes(os.path.join(folder, checkpoint.PARAMS)) / 1e6:,.1f} MB")
      checkpoints = checkpoint.Checkpointer(workdir, read_only=True)
      for what, restore in (
          ("sample/export: restore_params",
           lambda: checkpoints.restore_params(STEP, abstract.params)),
          ("resume: restore (whole state)", lambda: checkpoints.restore(STEP, abstract))):
        seconds, disk, syscalls = measure(restore, folder)
        print(f"{what}: {seconds:.2f} s, read_bytes {disk / 1e6:,.1f} MB "
              f"({disk / total:.0%} of the checkpoint), rchar {syscalls / 1e6:,.1f} MB "
              f"({syscalls / total:.0%})")
      checkpoints.close()
  finally:
    if not args.dir:
      shutil.rmtree(workdir)


if __name__ == "__main__":
  main()

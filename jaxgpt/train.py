"""python -m jaxgpt.train [--config=configs/NAME.py] [--workdir=DIR] [--config.KEY=VALUE ...]

Trains a GPT (by default on all of Shakespeare's plays), then prints a short sample.
Running it again with the same workdir resumes from the newest checkpoint.
"""

import contextlib
import os
import sys

from absl import flags

from jaxgpt import cli, peers, runtime, workdir_lock
from jaxgpt.errors import UserError, run_cli


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.initialize_distributed()
  runtime.start_backend()
  config_flag = cli.define_config_flag()
  workdir_flag = flags.DEFINE_string(
      "workdir", None, "Where checkpoints, metrics and the config go; default runs/<config name>.")
  cli.check_config_file(sys.argv if argv is None else argv)
  cli.parse_flags(argv, __doc__)
  config = config_flag.value
  runtime.check_backend(config)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = os.path.abspath(workdir_flag.value or os.path.join("runs", cli.config_name(config_path)))
  runtime.enable_compilation_cache(workdir)
  # Process 0 locks the workdir for all the processes of a run.
  lock = workdir_lock.held(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with peers.watch(config.train.peer_timeout_secs), lock:
    peers.check_same_command(f"{workdir}\n{config.to_json_best_effort(sort_keys=True)}",
                             config.train.peer_timeout_secs, "its --workdir or config differs")
    _check_same_products(config)
    explicit_keys = cli.overridden_config_keys(sys.argv if argv is None else argv)
    trainer = Trainer(config, workdir, explicit_keys=explicit_keys)
    _train_and_sample(trainer, config, workdir)


def _check_same_products(config) -> None:
  """matmul_precision=auto follows each machine's CPU: processes on CPUs with and without
  bfloat16 dot instructions would compile different programs and diverge."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt.config import matmul_dtype  # pylint: disable=g-import-not-at-top
  products = matmul_dtype(config) or "float32"
  first = peers.value_of_process_0("products", products, config.train.peer_timeout_secs)
  if first != products:
    raise UserError(f"matmul_precision=auto takes {products} products on process "
                    f"{jax.process_index()}'s CPU and {first} on process 0's (only one has "
                    "bfloat16 dot instructions): give every process "
                    "--config.matmul_precision=float32 or --config.matmul_precision=bfloat16")


def _train_and_sample(trainer, config, workdir: str) -> None:
  trainer.log(runtime.banner())
  trainer.log(f"workdir: {workdir}")
  last = trainer.run()
  if trainer.is_main:
    summary = f"done: step {last['step']}"
    if "val_loss" in last:
      summary += f", val loss {last['val_loss']:.4f}"
    print(summary + f"\nworkdir: {workdir}", flush=True)
    if config.train.sample_tokens:
      print("---- sample ----")
      print(trainer.sample(max_new_tokens=config.train.sample_tokens))
      if last["step"] > 0:  # a checkpoint to sample from exists
        print(f"---- more with: python -m jaxgpt.sample --workdir={workdir}")


if __name__ == "__main__":
  run_cli(main)

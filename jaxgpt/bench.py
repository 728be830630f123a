"""python -m jaxgpt.bench [--config=configs/NAME.py] [--config.KEY=VALUE ...] [--steps=N]
                        [--end_to_end] [--compile_only [--json]]

Times a config's real train step (its data pipeline, mesh and precision) and prints one
Markdown row for BENCHMARKS.md: compile time, median step time over --steps steps after
warm-up (each step waited for, so the device is synchronised), tokens/s, model FLOPs per
token, MFU against the device's peak (on CPU, a float32 matmul measured at start), and the
time of one evaluation over train.eval_steps batches. --end_to_end also runs the whole
training run (as `python -m jaxgpt.train` would, in a temporary workdir) and reports its
wall time and final validation loss.

--compile_only compiles the train step from abstract shapes alone, allocating no parameters
(and reading no data, except the text a character vocabulary is made from), and prints its
compile time and memory per device, as a training run prints them at its start: whether a
config fits, before it runs. --json prints the figures as one JSON object (bytes per device).
"""

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import flags

from jaxgpt import cli, runtime
from jaxgpt.config import INT32_MAX
from jaxgpt.errors import UserError, run_cli

_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps, after 6 of warm-up.")
_END_TO_END = flags.DEFINE_boolean("end_to_end", False, "Also time the whole training run.")
_COMPILE_ONLY = flags.DEFINE_boolean(
    "compile_only", False, "Only compile the train step from abstract shapes and print its "
    "compile time and memory per device.")
_JSON = flags.DEFINE_boolean("json", False, "With --compile_only: print one JSON object.")
GPT2_VOCAB_SIZE = 50257


def measured_cpu_flops() -> float:
  """FLOP/s of a float32 matmul on the first device (all of the CPU's cores)."""
  size = 2048
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(5):
    started = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - started)
  return 2 * size ** 3 / min(times)


def _peak_flops(num_devices: int) -> tuple[float | None, str]:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt import throughput  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu":  # simulated CPU devices share the same cores
    peak = measured_cpu_flops()
    return peak, f"measured float32 matmul {peak / 1e9:.0f} GFLOP/s"
  peak = throughput.peak_flops_per_device()
  return (None, "peak unknown") if peak is None else (peak * num_devices, "bf16 peak")


def _time_steps(trainer, num_steps: int):
  """(compile seconds, median step seconds, evaluation seconds, final state) of the run's
  own compiled steps, over num_steps train steps after warm-up."""
  import jax  # pylint: disable=g-import-not-at-top
  compiled, state = trainer.compiled_steps_and_initial_state()
  times = []
  for local_batch in trainer.batch_stream(0, num_steps + 6):
    batch = trainer.global_micro_batches(local_batch)
    started = time.perf_counter()
    state, step_metrics = compiled.train_step(state, batch, trainer.stop_rows())
    jax.block_until_ready(step_metrics)
    times.append(time.perf_counter() - started)
  eval_set = trainer.eval_set()
  jax.block_until_ready(compiled.eval_loss(state.params, eval_set))  # compiles
  started = time.perf_counter()
  jax.block_until_ready(compiled.eval_loss(state.params, eval_set))
  return (compiled.figures["compile_seconds"], statistics.median(times[6:]),
          time.perf_counter() - started, state)


def _vocab_size(config, explicit: set[str]) -> int:
  """The vocabulary a run of `config` would have, found without its data where possible:
  a pretrained model's (whose shape `config` takes), prepared shards' (GPT-2's where they are
  not there yet), data.tokenizer_path's, GPT-2's, or the data's tokenizer's."""
  from jaxgpt import config as config_lib, data, pretrained  # pylint: disable=g-import-not-at-top
  from jaxgpt.data import shards  # pylint: disable=g-import-not-at-top
  if config.init_from != "scratch":
    folder = pretrained.resolve(config.init_from)
    pretrained.configure(config, folder, explicit)
    return pretrained.load_tokenizer(folder).vocab_size
  if config.data.source == "tokens":
    if not (config.data.path
            and os.path.isfile(os.path.join(config.data.path, shards.DATASET_FILE))):
      return GPT2_VOCAB_SIZE
    return shards.dataset_tokenizer(config.data.path,
                                    shards.read_dataset(config.data.path)).vocab_size
  if config.data.tokenizer == "gpt2":
    return (pretrained.run_tokenizer(config, None).vocab_size if config.data.tokenizer_path
            else GPT2_VOCAB_SIZE)
  config_lib.validate(config)  # the data's settings too: its text makes the vocabulary
  return data.build_dataset(config).tokenizer.vocab_size


def _compile_only(config, explicit: set[str]) -> str:
  from jaxgpt import config as config_lib, memory  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Program  # pylint: disable=g-import-not-at-top
  config_lib.validate(config, needs_data=False)
  _, figures = Program(config, _vocab_size(config, explicit)).compile_train_step()
  return json.dumps(figures) if _JSON.value else memory.describe(figures)


def _end_to_end(config, explicit: set[str]) -> str:
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    last = Trainer(config, workdir, explicit_keys=explicit).run()
    seconds = time.perf_counter() - started
  val = f", final val loss {last['val_loss']:.4f}" if "val_loss" in last else ""
  return f"end to end {seconds:.1f} s for {last['step']} steps{val}"


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.start_backend()
  config_flag = cli.define_config_flag()
  cli.check_config_file(sys.argv if argv is None else argv)
  cli.parse_flags(argv, __doc__)
  if not 1 <= _STEPS.value <= INT32_MAX:
    raise UserError(f"--steps={_STEPS.value} is out of range: pass 1 to {INT32_MAX}")
  if _JSON.value and not _COMPILE_ONLY.value:
    raise UserError("--json prints --compile_only's figures: add --compile_only, or drop --json "
                    "for the timed step's row")
  if _STEPS.present and _COMPILE_ONLY.value:
    raise UserError("--steps times the train step, which --compile_only does not run: pass one")
  if _END_TO_END.value and _COMPILE_ONLY.value:
    raise UserError("--end_to_end trains, and --compile_only compiles without running: pass one")
  config = config_flag.value
  runtime.check_backend(config)
  # As train: a pretrained model's options given on the command line must be its own.
  explicit = cli.overridden_config_keys(sys.argv if argv is None else argv)
  if _COMPILE_ONLY.value:
    print(_compile_only(config, explicit), flush=True)
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt import throughput  # pylint: disable=g-import-not-at-top
  from jaxgpt.model import count_params  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir, explicit_keys=explicit)
    try:
      with trainer.context():
        compile_s, step_s, eval_s, state = _time_steps(trainer, _STEPS.value)
    finally:
      trainer.checkpoints.close()
  tokens = config.train.batch_size * config.model.block_size
  flops = throughput.flops_per_token(trainer.model.config, count_params(state.params))
  peak, peak_note = _peak_flops(jax.device_count())
  mfu = f"{100 * tokens / step_s * flops / peak:.1f}%" if peak else "n/a"
  device = jax.devices()[0]
  row = (f"| {datetime.date.today()} | {device.device_kind} x{jax.device_count()} "
         f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores) | "
         f"jax {jax.__version__} | `python -m jaxgpt.bench {' '.join((argv or sys.argv)[1:])}` | "
         f"compile {compile_s:.1f} s, {1000 * step_s:.1f} ms/step, {tokens / step_s:,.0f} tok/s, "
         f"{flops / 1e6:.1f} MFLOP/token, MFU {mfu} ({peak_note}), eval "
         f"{1000 * eval_s:.0f} ms for {config.train.eval_steps} batches")
  if _END_TO_END.value:
    row += "; " + _end_to_end(config, explicit)
  print(row + " |", flush=True)


if __name__ == "__main__":
  run_cli(main)

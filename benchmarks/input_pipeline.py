"""The input pipeline: tf.data against NumPy, the batches alone and in short training runs.

  python benchmarks/input_pipeline.py [--batches=2000] [--train_steps=300] [--repeats=3]

Two configs, each as configs/default.py makes it on a CPU (32 rows of 64 tokens): the plays in
memory (data.source=shakespeare_plays), and the same plays as token shards (data.source=tokens,
a folder that `python -m jaxgpt.prepare --source=shakespeare_plays` writes to a temporary
folder first). Three pipelines, taking turns in one run:
  numpy         data.pipeline=numpy: each batch made on the training thread, between steps
  numpy+thread  the same batches made ahead on a background thread (a queue of 2)
  tf.data       data.pipeline=tf: tf.data's own background thread and prefetch of 2
Prints Markdown tables for BENCHMARKS.md: the pipeline alone (batches per second, and the
time to the first batch after TensorFlow's import, which is timed once on its own), and a
short training run with each (`python -m jaxgpt.train`: steps per second, the median of its
logged intervals after the first, and the command's wall time from start to exit).
"""

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from jaxgpt import config as config_lib, data
from jaxgpt.configs import default
from jaxgpt.data import pipeline, tfhost

PIPELINES = ("numpy", "numpy+thread", "tf.data")
PREFETCH_THREAD_FLAG = "--with_prefetch_thread"
LOG_EVERY = 50


def prefetched(batches, depth: int = 2):
  """`batches`, made ahead on a background thread, at most `depth` waiting."""
  ready = queue.Queue(depth)
  end = object()

  def make():
    for batch in batches:
      ready.put(batch)
    ready.put(end)

  threading.Thread(target=make, daemon=True).start()
  while (batch := ready.get()) is not end:
    yield batch


def batches_on_a_prefetch_thread() -> None:
  """Makes data.pipeline=numpy's batches on a background thread, for this process."""
  # pylint: disable=protected-access
  numpy_batches = pipeline.BatchStream._numpy_batches
  pipeline.BatchStream._numpy_batches = lambda stream: prefetched(numpy_batches(stream))


def config_overrides(tokens_dir: str | None) -> dict:
  """The config keys each run sets: the token shards, or the plays in memory."""
  return {"data.source": "tokens", "data.path": tokens_dir} if tokens_dir else {}


def dataset_of(overrides: dict):
  config = default.cpu_config()
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  config_lib.validate(config)
  return config, data.build_dataset(config)


def batch_stream(name: str, config, tokens, num_batches: int):
  stream = data.BatchStream(tokens, config.seed, 0, config.train.batch_size,
                            config.model.block_size, 0, num_batches + 1,
                            use_tf=name == "tf.data")
  return prefetched(iter(stream)) if name == "numpy+thread" else iter(stream)


def time_batches(name: str, config, tokens, num_batches: int) -> tuple[float, float]:
  """(seconds to the first batch, batches per second after it)."""
  started = time.perf_counter()
  batches = batch_stream(name, config, tokens, num_batches)
  next(batches)
  first = time.perf_counter() - started
  started = time.perf_counter()
  for _ in batches:
    pass
  return first, num_batches / (time.perf_counter() - started)


def pipeline_alone(args, datasets: dict) -> None:
  started = time.perf_counter()
  tfhost.import_tensorflow()
  print(f"\nTensorFlow's import: {time.perf_counter() - started:.1f} s\n")
  print("| data | pipeline | batches/s: median (each run) | first batch |")
  print("| --- | --- | --- | --- |")
  results = {}
  for _ in range(args.repeats):
    for data_name, (config, dataset) in datasets.items():
      for name in PIPELINES:
        timed = time_batches(name, config, dataset.train, args.batches)
        results.setdefault((data_name, name), []).append(timed)
  for (data_name, name), runs in results.items():
    rates = [rate for _, rate in runs]
    first = statistics.median(first for first, _ in runs)
    each = ", ".join(f"{rate:,.0f}" for rate in rates)
    print(f"| {data_name} | {name} | {statistics.median(rates):,.0f} ({each}) | "
          f"{first * 1e3:.1f} ms |", flush=True)


def train_command(name: str, overrides: dict, steps: int, workdir: str) -> list[str]:
  keys = {**overrides, "data.pipeline": "tf" if name == "tf.data" else "numpy",
          "train.max_steps": steps, "train.log_every": LOG_EVERY, "train.eval_every": steps,
          "train.eval_steps": 4, "train.checkpoint_every": steps, "train.sample_tokens": 0}
  command = [sys.executable, "-m", "jaxgpt.train", "--config=default", f"--workdir={workdir}",
             *(f"--config.{key}={value}" for key, value in keys.items())]
  if name == "numpy+thread":
    command[1:3] = [os.path.abspath(__file__), PREFETCH_THREAD_FLAG]
  return command


def time_training(command: list[str], workdir: str) -> tuple[float, float]:
  """(steps per second, the command's wall seconds)."""
  started = time.perf_counter()
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  wall = time.perf_counter() - started
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    seconds = [r["seconds_per_step"] for r in map(json.loads, f) if "seconds_per_step" in r]
  return 1 / statistics.median(seconds[1:]), wall


def training(args, overrides_by_data: dict, scratch: str) -> None:
  print(f"\n| data | pipeline | steps/s: median (each run) | wall time of {args.train_steps} "
        "steps |")
  print("| --- | --- | --- | --- |")
  results, loads = {}, []
  for repeat in range(args.repeats):
    for data_name, overrides in overrides_by_data.items():
      for name in PIPELINES:
        loads.append(os.getloadavg()[0])
        workdir = os.path.join(scratch, f"run-{data_name}-{name}-{repeat}")
        command = train_command(name, overrides, args.train_steps, workdir)
        results.setdefault((data_name, name), []).append(time_training(command, workdir))
  for (data_name, name), runs in results.items():
    rates = [rate for rate, _ in runs]
    wall = statistics.median(wall for _, wall in runs)
    each = ", ".join(f"{rate:.1f}" for rate in rates)
    print(f"| {data_name} | {name} | {statistics.median(rates):.1f} ({each}) | {wall:.1f} s |",
          flush=True)
  # Other work on the machine shows here: each run's steps compete with it for the cores.
  print(f"\nload average (1 min) as each run started: {min(loads):.1f} to {max(loads):.1f}")


def prepare_plays(folder: str) -> str:
  subprocess.run([sys.executable, "-m", "jaxgpt.prepare", "--source=shakespeare_plays",
                  f"--out={folder}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  return folder


def train_with_prefetch_thread(argv: list[str]) -> None:
  """python -m jaxgpt.train ARGV, its NumPy batches made on a prefetch thread."""
  import runpy  # pylint: disable=g-import-not-at-top
  batches_on_a_prefetch_thread()
  sys.argv = ["-m", *argv]
  runpy.run_module("jaxgpt.train", run_name="__main__", alter_sys=True)


def main():
  if sys.argv[1:2] == [PREFETCH_THREAD_FLAG]:
    train_with_prefetch_thread(sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", type=int, default=2000, help="batches per timing")
  parser.add_argument("--train_steps", type=int, default=300)
  parser.add_argument("--repeats", type=int, default=3, help="runs of each, taking turns")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    overrides_by_data = {"plays in memory": config_overrides(None),
                         "token shards": config_overrides(prepare_plays(
                             os.path.join(scratch, "plays")))}
    datasets = {name: dataset_of(o) for name, o in overrides_by_data.items()}
    pipeline_alone(args, datasets)
    training(args, overrides_by_data, scratch)


if __name__ == "__main__":
  main()

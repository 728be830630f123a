"""Token shards at scale: batch assembly speed, and training memory against corpus size.

  python benchmarks/shards.py batches [--dir=DIR] [--gigabytes=1.5]
    Batches of configs/gpt2_owt.py's shape (480 rows of 1,025 tokens, one process holding the
    whole global batch) drawn from random uint16 shards, first with the shards evicted from the
    page cache (posix_fadvise), then warm. Prints tokens per second for both.
  python benchmarks/shards.py memory [--dir=DIR] [--gigabytes=2]
    Writes a 20 MB and a GIGABYTES text corpus, prepares both (python -m jaxgpt.prepare,
    char tokenizer), trains the same small model 30 steps on each (data.source=tokens) and
    prints each training process's peak resident memory.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxgpt.data import BatchSpec, get_batch, shards  # pylint: disable=wrong-import-position

SHARD_TOKENS = 100_000_000
ROWS, BLOCK = 480, 1024  # configs/gpt2_owt.py
SAMPLE_TEXT = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")


def write_random_shards(directory: str, gigabytes: float) -> shards.TokenShards:
  rng = np.random.default_rng(0)
  total, pieces = int(gigabytes * 1e9 / 2), []
  for i, start in enumerate(range(0, total, SHARD_TOKENS)):
    path = os.path.join(directory, f"train_{i:06d}.bin")
    count = min(SHARD_TOKENS, total - start)
    if not os.path.exists(path):
      shards.write_shard(path, rng.integers(0, 50257, count, dtype=np.uint16), np.uint16)
    pieces.append(shards.open_shard(path, count))
  return shards.TokenShards(pieces)


def evict(directory: str) -> None:
  for name in os.listdir(directory):
    fd = os.open(os.path.join(directory, name), os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def tokens_per_second(tokens, steps: int, first_step: int) -> float:
  spec = BatchSpec(seed=0, process_index=0, batch_size=ROWS, block_size=BLOCK)
  started = time.perf_counter()
  for step in range(first_step, first_step + steps):
    get_batch(tokens, spec, step)
  return steps * ROWS * BLOCK / (time.perf_counter() - started)


def batches(args) -> None:
  tokens = write_random_shards(args.dir, args.gigabytes)
  print(f"{len(tokens):,} tokens in {len(os.listdir(args.dir))} shards; batch {ROWS} x "
        f"{BLOCK + 1}")
  evict(args.dir)
  cold = tokens_per_second(tokens, 20, 0)
  for name in os.listdir(args.dir):  # read every page once
    with open(os.path.join(args.dir, name), "rb") as f:
      while f.read(1 << 24):
        pass
  warm = tokens_per_second(tokens, 200, 1000)
  print(f"cold page cache: {cold / 1e6:.1f} M tokens/s; warm: {warm / 1e6:.1f} M tokens/s")


def write_corpus(directory: str, total_bytes: int) -> None:
  """Documents of about 280 KB (quarters of the sample text), one a file."""
  os.makedirs(directory, exist_ok=True)
  with open(SAMPLE_TEXT, encoding="utf-8") as f:
    text = f.read()
  quarter = len(text) // 4
  for i in range(max(1, total_bytes // quarter)):
    with open(os.path.join(directory, f"part{i:06d}.txt"), "w", encoding="utf-8") as f:
      f.write(f"PART {i}:\n" + text[(i % 4) * quarter:(i % 4 + 1) * quarter])


def peak_memory_of(command: list[str]) -> int:
  """Runs the command; its peak resident memory in bytes (Linux reports KiB)."""
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
  _, status, usage = os.wait4(process.pid, 0)
  if status:
    raise SystemExit(f"{' '.join(command)} failed with status {status}")
  return usage.ru_maxrss * 1024


def memory(args) -> None:
  python = sys.executable
  for name, size in (("20MB", 20_000_000), (f"{args.gigabytes:g}GB", int(args.gigabytes * 1e9))):
    text, out = os.path.join(args.dir, name, "text"), os.path.join(args.dir, name, "tokens")
    if not os.path.exists(text):
      write_corpus(text, size)
    started = time.perf_counter()
    prepare_peak = peak_memory_of([python, "-m", "jaxgpt.prepare", f"--input={text}/*.txt",
                                   f"--out={out}", "--tokenizer=char", "--workers=2"])
    prepare_seconds = time.perf_counter() - started
    info = shards.read_dataset(out)
    count = sum(e["tokens"] for split in info["splits"].values() for e in split)
    train_peak = peak_memory_of([
        python, "-m", "jaxgpt.train", "--config.data.source=tokens", f"--config.data.path={out}",
        f"--workdir={os.path.join(args.dir, name, 'run')}", "--config.model.n_layer=2",
        "--config.model.n_embd=64", "--config.model.n_head=2", "--config.model.block_size=64",
        "--config.train.batch_size=16", "--config.train.max_steps=30",
        "--config.train.eval_every=30", "--config.train.eval_steps=4",
        "--config.train.sample_tokens=0"])
    print(f"{name}: {count:,} tokens; prepare {prepare_seconds:.0f} s, peak "
          f"{prepare_peak / 1e6:.0f} MB; training peak {train_peak / 1e6:.0f} MB", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("what", choices=("batches", "memory"))
  parser.add_argument("--dir", default=None, help="where the data goes (default: a temp dir)")
  parser.add_argument("--gigabytes", type=float, default=None)
  args = parser.parse_args()
  args.gigabytes = args.gigabytes or (1.5 if args.what == "batches" else 2.0)
  with tempfile.TemporaryDirectory() as scratch:
    args.dir = args.dir or scratch
    os.makedirs(args.dir, exist_ok=True)
    {"batches": batches, "memory": memory}[args.what](args)


if __name__ == "__main__":
  main()

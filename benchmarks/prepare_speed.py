"""Throughput of `python -m jaxgpt.prepare` against `tokenizers`' own encode_batch.

    python benchmarks/prepare_speed.py [--megabytes=64] [--workers=2] [--keep]

Makes a corpus of --megabytes of text in a temporary folder (tinyshakespeare.txt, repeated
and cut into documents of about --document_kb each, one file per document), a GPT-2-style
byte-level BPE tokenizer (GPT-2's own from the Hugging Face cache if it is there, else one
of --vocab_size tokens trained here on the text, with <|endoftext|>), then times on the same
documents:
  raw      tokenizers.Tokenizer.encode_batch on --workers threads, the documents already in
           memory (the upper bound for tokenizing on that many cores);
  prepare  python -m jaxgpt.prepare --workers=N end to end: start-up, reading the files,
           tokenizing, writing the shards and dataset.json.
and prints both in tokens/s and their ratio (the goal: prepare >= 70% of raw).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "/work/shared/data/tinyshakespeare.txt"
END_OF_TEXT = "<|endoftext|>"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--text", default=TEXT, help="the text to repeat into a corpus")
  parser.add_argument("--megabytes", type=float, default=64, help="corpus size")
  parser.add_argument("--document_kb", type=float, default=16, help="document size")
  parser.add_argument("--workers", type=int, default=2, help="threads / worker processes")
  parser.add_argument("--vocab_size", type=int, default=8000, help="of a trained tokenizer")
  parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
  return parser.parse_args()


def make_corpus(text: str, megabytes: float, document_kb: float, folder: str) -> list[str]:
  """Writes documents cut from `text` repeated (at paragraph ends) until `megabytes`."""
  paragraphs = text.split("\n\n")
  documents, current, size, i = [], [], 0, 0
  while size < megabytes * 1e6:
    paragraph = paragraphs[i % len(paragraphs)]
    current.append(paragraph)
    i += 1
    if sum(len(p) for p in current) >= document_kb * 1000:
      documents.append("\n\n".join(current))
      size += len(documents[-1])
      current = []
  os.makedirs(folder)
  for number, document in enumerate(documents):
    with open(os.path.join(folder, f"{number:06d}.txt"), "w", encoding="utf-8") as f:
      f.write(document)
  return documents


def tokenizer_folder(text: str, vocab_size: int, folder: str) -> tuple[str, str]:
  """GPT-2's tokenizer from the Hugging Face cache, else a byte-level BPE trained on `text`."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    cached = huggingface_hub.snapshot_download("openai-community/gpt2", local_files_only=True,
                                               allow_patterns=["tokenizer.json"])
    if os.path.isfile(os.path.join(cached, "tokenizer.json")):
      return cached, "GPT-2's (from the Hugging Face cache)"
  except Exception:  # pylint: disable=broad-except  # not cached
    pass
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                          show_progress=False)
  os.makedirs(folder)
  bpe.save(os.path.join(folder, "tokenizer.json"))
  return folder, f"byte-level BPE of {vocab_size:,} tokens trained on the text"


RAW = """
import json, sys, time
import tokenizers
tokenizer = tokenizers.Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
  documents = json.load(f)
batches = [documents[i:i + 512] for i in range(0, len(documents), 512)]
encode = getattr(tokenizer, sys.argv[3])
encode(batches[0], add_special_tokens=False)  # warm-up: the thread pool
tokens, seconds = 0, 0.0
for batch in batches:
  started = time.perf_counter()
  encodings = encode(batch, add_special_tokens=False)
  seconds += time.perf_counter() - started
  tokens += sum(len(e.ids) for e in encodings)
print(json.dumps({"tokens": tokens, "seconds": seconds}))
"""


def time_raw(tokenizer_json: str, documents_json: str, threads: int, method: str) -> dict:
  """`method` (encode_batch or encode_batch_fast) alone, the documents in memory, in a
  process whose tokenizers thread pool has `threads` threads."""
  env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
  result = subprocess.run([sys.executable, "-c", RAW, tokenizer_json, documents_json, method],
                          env=env, capture_output=True, text=True, check=True)
  return json.loads(result.stdout)


def time_prepare(corpus: str, tokenizer: str, workers: int, out: str) -> dict:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get(
      "PYTHONPATH")) if p))
  started = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "jaxgpt.prepare", f"--input={corpus}/*.txt",
                           f"--out={out}", f"--tokenizer={tokenizer}", f"--workers={workers}"],
                          env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - started
  if result.returncode:
    sys.exit(f"prepare failed:\n{result.stderr}")
  with open(os.path.join(out, "dataset.json"), encoding="utf-8") as f:
    info = json.load(f)
  tokens = sum(e["tokens"] for split in info["splits"].values() for e in split)
  documents = info["documents"]["train"] + info["documents"]["val"]
  return {"tokens": tokens, "seconds": seconds, "documents": documents,
          "summary": result.stdout.strip()}


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main():
  args = parse_args()
  with open(args.text, encoding="utf-8") as f:
    text = f.read()
  folder = tempfile.mkdtemp(prefix="jaxgpt-prepare-speed-")
  try:
    documents = make_corpus(text, args.megabytes, args.document_kb, os.path.join(folder, "corpus"))
    tokenizer, described = tokenizer_folder(text, args.vocab_size, os.path.join(folder, "tok"))
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    print(f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores; corpus "
          f"{len(documents):,} documents, {megabytes:.1f} MB; tokenizer: {described}")
    documents_json = os.path.join(folder, "documents.json")
    with open(documents_json, "w", encoding="utf-8") as f:
      json.dump(documents, f)
    tokenizer_json = os.path.join(tokenizer, "tokenizer.json")
    raw = {method: time_raw(tokenizer_json, documents_json, args.workers, method)
           for method in ("encode_batch", "encode_batch_fast")}
    prepared = time_prepare(os.path.join(folder, "corpus"), tokenizer, args.workers,
                            os.path.join(folder, "out"))
    prepare_rate = prepared["tokens"] / prepared["seconds"]
    for method, timing in raw.items():
      print(f"raw {method} ({args.workers} threads, documents in memory): {timing['tokens']:,} "
            f"tokens in {timing['seconds']:.2f} s = {timing['tokens'] / timing['seconds']:,.0f} "
            "tokens/s")
    print(f"prepare --workers={args.workers} end to end: {prepared['tokens']:,} tokens "
          f"({prepared['documents']:,} of them end-of-text) in {prepared['seconds']:.2f} s = "
          f"{prepare_rate:,.0f} tokens/s")
    for method, timing in raw.items():
      print(f"prepare / raw {method} = {prepare_rate / (timing['tokens'] / timing['seconds']):.0%}"
            " (goal: at least 70%)")
  finally:
    if args.keep:
      print(f"kept {folder}")
    else:
      shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  main()

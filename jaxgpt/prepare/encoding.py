"""Tokenizing a corpus for `python -m jaxgpt.prepare`: the tokenizer --tokenizer names, and
chunks of documents encoded on worker processes, their results taken in input order.

Each worker runs `tokenizers` on one thread (the workers are the parallelism), so the tokens
are the same for any number of workers. At most a few chunks per worker are in flight, so
memory does not grow with the corpus.
"""

import collections
import dataclasses
import itertools
import multiprocessing
import os
import signal

import numpy as np

from jaxgpt import files, hub
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

CHUNK_CHARS = 1 << 20  # characters of text per task sent to a worker
CHUNKS_PER_WORKER = 3  # tasks in flight per worker


def named_tokenizer(name: str):
  """The tokenizer of --tokenizer=gpt2|FOLDER; None for `char`, which the corpus makes."""
  if name == "char":
    return None
  if name == "gpt2":
    folder = hub.gpt2_tokenizer("--tokenizer")
  else:
    folder = os.path.abspath(os.path.expanduser(name))
  if not os.path.isdir(folder):
    raise UserError(f"--tokenizer={name} is neither char, gpt2 nor a folder: pass a Hugging "
                    "Face tokenizer folder (tokenizer.json, or vocab.json and merges.txt) or "
                    "a jaxgpt run's or dataset's folder")
  spec = files.read_json(os.path.join(folder, tokenizer_lib.FILENAME))
  if isinstance(spec, dict) and "kind" in spec:  # jaxgpt's own spec, as runs and datasets keep it
    return tokenizer_lib.load_tokenizer(folder)
  return tokenizer_lib.BPETokenizer.from_folder(folder)


@dataclasses.dataclass(frozen=True)
class EncodeTask:
  """What a worker needs besides the documents: the saved tokenizer's folder, the token
  type, and the separator put before each document."""
  tokenizer_dir: str
  dtype: str
  separator: int


_TOKENIZERS = {}  # per worker process: tokenizer folder -> tokenizer


def _tokenizer(folder: str):
  if folder not in _TOKENIZERS:
    _TOKENIZERS[folder] = tokenizer_lib.load_tokenizer(folder)
  return _TOKENIZERS[folder]


def encode_chunk(task: EncodeTask, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, lengths): each document's tokens, the separator first, one after the other."""
  tokenizer = _tokenizer(task.tokenizer_dir)
  if tokenizer.kind == "char":
    content, lengths = _encode_chars(tokenizer, documents), [len(d) for d in documents]
  else:
    ids = tokenizer.encode_batch(documents)
    lengths = [len(i) for i in ids]
    content = np.fromiter(itertools.chain.from_iterable(ids), task.dtype, count=sum(lengths))
  lengths = np.array(lengths, np.int64)
  starts = np.cumsum(lengths) - lengths
  tokens = np.insert(content.astype(task.dtype, copy=False), starts, task.separator)
  return tokens, lengths + 1


def _encode_chars(tokenizer, documents: list[str]) -> np.ndarray:
  text = "".join(documents)
  try:
    return tokenizer.encode(text)
  except UserError:
    unknown = "".join(sorted(set(text) - set(tokenizer.chars)))
    raise UserError(f"the corpus has characters the char tokenizer does not know "
                    f"({unknown[:20]!r}): prepare with --tokenizer=char to make the vocabulary "
                    "from this corpus") from None


def chunk_characters(documents: list[str]) -> str:
  """The distinct characters of the documents."""
  return "".join(set("".join(documents)))


def _start_worker() -> None:
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: they are the parallelism
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


class OrderedPool:
  """`imap` over `workers` processes (in this process for one worker), results in input
  order, at most CHUNKS_PER_WORKER tasks per worker in flight."""

  def __init__(self, workers: int):
    self.workers = workers
    self._pool = None
    if workers > 1:
      # spawn: workers start clean (no copied locks or tokenizer threads), as on every OS.
      self._pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker)
    else:
      os.environ["TOKENIZERS_PARALLELISM"] = "false"

  def imap(self, function, items):
    """Yields (key, function(*args)) for each (key, args) of `items`, in order."""
    if self._pool is None:
      for key, args in items:
        yield key, function(*args)
      return
    pending = collections.deque()
    for key, args in items:
      pending.append((key, self._pool.apply_async(function, args)))
      while pending and (len(pending) >= CHUNKS_PER_WORKER * self.workers
                         or pending[0][1].ready()):
        key, result = pending.popleft()
        yield key, result.get()
    while pending:
      key, result = pending.popleft()
      yield key, result.get()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()

"""One split's tokens written as shards of `shard_tokens`, resumable after a kill.

Each finished shard gets a progress file beside it (`train_000003.progress.json`): the
arguments it was made from, its dataset.json entry, and where the split goes on after it:
the index of the split's document that holds its next token, and how many of that document's
tokens the shards already hold. A prepare run again with the same arguments keeps those
shards, reads but does not tokenize the documents before that one, drops the tokens already
written, and so writes the same bytes as a run that was never stopped. Shards and progress
files are written under a temporary name and renamed, so neither is ever half-written.
"""

import collections
import dataclasses
import glob
import json
import os
import re

import numpy as np

from jaxgpt import files
from jaxgpt.files import read_json
from jaxgpt.data import shards

PROGRESS_SUFFIX = ".progress.json"
_SHARD_NAME = re.compile(r"^(train|val)_\d{6}\.bin$")


def shard_path(directory: str, split: str, index: int) -> str:
  return os.path.join(directory, f"{split}_{index:06d}.bin")


def progress_path(directory: str, split: str, index: int) -> str:
  return os.path.join(directory, f"{split}_{index:06d}{PROGRESS_SUFFIX}")


def write_json(path: str, value) -> None:
  """Writes `value` as indented JSON under a temporary name, then renames it."""
  files.write_atomically(path, json.dumps(value, indent=2) + "\n")


def as_json(value):
  """`value` as it reads back from JSON (lists for tuples), for comparing with a file's."""
  return json.loads(json.dumps(value))


def progress_records(directory: str) -> list[tuple[str, dict]]:
  """(path, record) of every progress file in the folder."""
  paths = sorted(glob.glob(os.path.join(glob.escape(directory), "*" + PROGRESS_SUFFIX)))
  return [(path, read_json(path)) for path in paths]


def progress_name(shard_name: str) -> str:
  """The progress file's name of a shard's (train_000001.bin: train_000001.progress.json)."""
  return shard_name[:-len(".bin")] + PROGRESS_SUFFIX


def is_shard_name(name: str) -> bool:
  return bool(_SHARD_NAME.match(name))


def remove_leftovers(directory: str, keep: tuple[str, ...] = ()) -> None:
  """Removes temporary files, and shards not named in `keep` with their progress files (a
  kept shard's progress file stays: a rerun remakes a damaged shard from the one before)."""
  kept_progress = {progress_name(name) for name in keep}
  for name in os.listdir(directory):
    if (name.endswith(".tmp") or (name.endswith(PROGRESS_SUFFIX) and name not in kept_progress)
        or (is_shard_name(name) and name not in keep)):
      os.remove(os.path.join(directory, name))


def remove_temporaries(directory: str) -> None:
  for name in os.listdir(directory):
    if name.endswith(".tmp"):
      os.remove(os.path.join(directory, name))


@dataclasses.dataclass(frozen=True)
class Resume:
  """Where a split goes on: after `shards` (their entries, `tokens` tokens in all), at the
  split's document `next_document`, whose first `skip_tokens` tokens they already hold."""
  shards: tuple = ()
  next_document: int = 0
  skip_tokens: int = 0
  tokens: int = 0


def find_resume(directory: str, split: str, fingerprint: dict, dtype) -> Resume:
  """The finished shards of `split` made with `fingerprint`, in an unbroken run from the
  first; a shard without its progress file, or of the wrong size, ends the run."""
  found, entries = Resume(), []
  while True:
    record = read_json(progress_path(directory, split, len(entries)))
    if not record or record.get("fingerprint") != fingerprint:
      return found
    entry = record["shard"]
    path = os.path.join(directory, entry["file"])
    expected = shards.HEADER_BYTES + entry["tokens"] * np.dtype(dtype).itemsize
    if not os.path.isfile(path) or os.path.getsize(path) != expected:
      return found
    entries.append(entry)
    found = Resume(tuple(entries), record["next_document"], record["skip_tokens"],
                   record["tokens"])


class SplitWriter:
  """Takes a split's documents' tokens in order and writes them as shards.

  `append` gets the tokens of consecutive documents of the split (each document's tokens
  begin with the separator) and their lengths. With `drop_first_separator` the split's first
  document loses its separator, so separators go between documents only.
  """

  def __init__(self, directory: str, split: str, dtype, shard_tokens: int, fingerprint: dict,
               resume: Resume = Resume(), drop_first_separator: bool = False):
    self.directory, self.split, self.dtype = directory, split, np.dtype(dtype)
    self.fingerprint, self.resume = fingerprint, resume
    self.drop_first_separator = drop_first_separator
    self.entries = list(resume.shards)
    self._buffer = np.empty(shard_tokens, self.dtype)  # pages are only touched when filled
    self._filled = 0
    self._written = self._appended = resume.tokens
    self._skip = resume.skip_tokens
    self._next_document = resume.next_document
    self._documents = collections.deque()  # (first document, its start, ends) not yet written

  @property
  def tokens(self) -> int:
    """Tokens of the split so far, those of the resumed shards included."""
    return self._appended

  def wants(self, document: int) -> bool:
    """Whether the split's document `document` still has tokens to write."""
    return document >= self.resume.next_document

  def append(self, tokens: np.ndarray, lengths, first_document: int) -> None:
    lengths = np.array(lengths, np.int64)
    if self.drop_first_separator and first_document == 0:
      tokens, lengths[0] = tokens[1:], lengths[0] - 1
    start = self._appended - self._skip  # where the first document began, skipped part included
    self._documents.append((first_document, start, start + np.cumsum(lengths)))
    tokens, self._skip = tokens[self._skip:], 0
    while len(tokens):
      take = min(len(tokens), len(self._buffer) - self._filled)
      self._buffer[self._filled:self._filled + take] = tokens[:take]
      self._filled += take
      self._appended += take
      tokens = tokens[take:]
      if self._filled == len(self._buffer):
        self._write_shard()

  def finish(self) -> list[dict]:
    """Writes the last, shorter shard; returns the split's dataset.json entries."""
    if self._filled:
      self._write_shard()
    return self.entries

  def _write_shard(self) -> None:
    index = len(self.entries)
    entry = shards.write_shard(shard_path(self.directory, self.split, index),
                               self._buffer[:self._filled], self.dtype)
    self._written += self._filled
    self._filled = 0
    next_document, skip = self._boundary(self._written)
    write_json(progress_path(self.directory, self.split, index),
               {"fingerprint": self.fingerprint, "shard": entry, "next_document": next_document,
                "skip_tokens": skip, "tokens": self._written})
    self.entries.append(entry)

  def _boundary(self, end: int) -> tuple[int, int]:
    """(the document holding token `end` of the split, how many of its tokens come before)."""
    while self._documents:
      first, start, ends = self._documents[0]
      if ends[-1] > end:
        inside = int(np.searchsorted(ends, end, side="right"))
        return first + inside, end - (int(ends[inside - 1]) if inside else start)
      self._documents.popleft()
      self._next_document = first + len(ends)
    return self._next_document, 0

"""Token shards: the files `python -m jaxgpt.prepare` writes and `data.source=tokens` reads.

A shard is llm.c's format, so that llm.c's and modded-nanogpt's shards can be read too: a
header of 256 little-endian int32 (1,024 bytes), then the tokens.
  header[0]  magic: 20240520 for uint16 tokens (GPT-2's 50,257 fit), 20240801 for uint32
  header[1]  format version: 1 with uint16 tokens, 7 with uint32 tokens
  header[2]  the number of tokens in the shard
  the rest   zero
A folder of shards has `dataset.json`: the shards of each split in order (file, tokens,
sha256), the tokenizer (`tokenizer.json` beside them, as a run's workdir holds it) and what
the tokens were made from. A split's tokens are its shards' tokens, concatenated.
"""

import hashlib
import json
import os
import re

import numpy as np

from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

DATASET_FILE = "dataset.json"
FORMAT = "jaxgpt-tokens"
FORMAT_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) for each token type, as llm.c writes them.
KINDS = {np.dtype(np.uint16): (20240520, 1), np.dtype(np.uint32): (20240801, 7)}
SPLITS = ("train", "val")
MAX_SHARD_TOKENS = 2**31 - 1  # the header's int32 count


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits, else uint32."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str, tokens: np.ndarray, dtype) -> dict:
  """Writes a shard under a temporary name, then renames it: `path` is whole or absent.

  Returns its dataset.json entry.
  """
  dtype = np.dtype(dtype)
  tokens = np.asarray(tokens)
  if tokens.size and int(tokens.max()) >= np.iinfo(dtype).max + 1:
    raise ValueError(f"token id {int(tokens.max())} does not fit {dtype}")
  header = np.zeros(HEADER_INTS, "<i4")
  header[0], header[1] = KINDS[dtype]
  header[2] = len(tokens)
  # No copy of a shard that is already little-endian `dtype` (as prepare's buffers are).
  body = np.ascontiguousarray(tokens, dtype.newbyteorder("<")).reshape(-1)
  digest = hashlib.sha256(header.tobytes())
  digest.update(body)
  temporary = path + ".tmp"
  with open(temporary, "wb") as f:
    f.write(header.tobytes())
    f.write(body)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)
  return {"file": os.path.basename(path), "tokens": int(len(tokens)),
          "sha256": digest.hexdigest()}


REPAIR = ("run the same python -m jaxgpt.prepare command again (it checks every shard and "
          "rewrites the damaged ones), or restore the file")


def open_shard(path: str, expected_tokens: int | None = None) -> np.memmap:
  """The shard's tokens, memory-mapped (nothing is read until used); a shard that is
  missing, truncated or not in this format is a UserError naming it."""
  tokens, problem = _mapped_shard(path, expected_tokens)
  if problem:
    raise UserError(f"token shard {path} {problem}: {REPAIR}")
  return tokens


def _mapped_shard(path: str, expected_tokens: int | None) -> tuple[np.memmap | None, str]:
  """(the shard's tokens, '') or (None, what is wrong with it)."""
  try:
    size = os.path.getsize(path)
    header = np.fromfile(path, "<i4", count=HEADER_INTS)
  except OSError as e:
    return None, f"cannot be read ({e.strerror})"
  if len(header) < 3:
    return None, "is truncated (no whole header)"
  kinds = {kind: dtype for dtype, kind in KINDS.items()}
  dtype = kinds.get((int(header[0]), int(header[1])))
  if dtype is None:
    return None, (f"has magic {header[0]} and version {header[1]}, not a token shard of a "
                  "known format")
  count = int(header[2])
  if size != HEADER_BYTES + count * dtype.itemsize:
    return None, (f"has {size} bytes, but its header promises {count} tokens "
                  f"({HEADER_BYTES + count * dtype.itemsize} bytes): it is truncated or damaged")
  if expected_tokens is not None and count != expected_tokens:
    return None, f"holds {count} tokens but {DATASET_FILE} lists {expected_tokens}"
  return np.memmap(path, dtype.newbyteorder("<"), mode="r", offset=HEADER_BYTES,
                   shape=(count,)), ""


class TokenShards:
  """Shards read as one long token sequence, lazily: memory does not grow with the corpus.

  Windows are read with pread, not through the shards' memory maps: a touched page of a map
  stays in the process's resident memory (a whole 2 MB huge page where the kernel maps file
  pages that way), so a long run would grow towards the corpus's size.
  """

  def __init__(self, shards: list[np.memmap], name: str = "tokens", checksums: str = "",
               vocab_size: int | None = None):
    self.name, self.checksums, self.vocab_size = name, checksums, vocab_size
    shards = [s for s in shards if len(s)]
    self._paths = [s.filename for s in shards]
    self._files = [(os.open(path, os.O_RDONLY), s.offset, s.dtype)
                   for path, s in zip(self._paths, shards)]
    self._ends = np.cumsum([len(s) for s in shards], dtype=np.int64)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __del__(self):
    for fd, _, _ in getattr(self, "_files", ()):
      os.close(fd)

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 [len(starts), length]: the tokens from each start on, across shard ends."""
    out = np.empty((len(starts), length), np.int32)
    starts = np.asarray(starts, np.int64)
    first = np.searchsorted(self._ends, starts, side="right")
    for row, (start, shard) in enumerate(zip(starts, first)):
      filled = 0
      while filled < length:
        begin = start + filled - (self._ends[shard - 1] if shard else 0)
        count = min(length - filled, int(self._ends[shard] - start - filled))
        fd, offset, dtype = self._files[shard]
        data = self._read(shard, count * dtype.itemsize, offset + int(begin) * dtype.itemsize)
        out[row, filled:filled + count] = self._checked_ids(shard, np.frombuffer(data, dtype))
        filled += count
        shard += 1
    return out

  def _checked_ids(self, shard: int, ids: np.ndarray) -> np.ndarray:
    """`ids`; one at or past the vocabulary (which would train to a nan loss) is a UserError."""
    if self.vocab_size is not None and len(ids) and int(ids.max()) >= self.vocab_size:
      raise UserError(f"token shard {self._paths[shard]} holds id {int(ids.max())}, past the "
                      f"vocabulary's {self.vocab_size} ids of {DATASET_FILE}: it was made with "
                      f"another tokenizer, or is damaged: {REPAIR}")
    return ids

  def _read(self, shard: int, size: int, position: int) -> bytes:
    """Bytes of a shard; a shard that shrank or broke since it was opened is a UserError."""
    try:
      data = os.pread(self._files[shard][0], size, position)
    except OSError as e:
      data, reason = b"", e.strerror
    else:
      reason = "it is shorter than when training started"
    if len(data) != size:
      raise UserError(f"token shard {self._paths[shard]} cannot be read ({reason}): {REPAIR}; "
                      "then resume")
    return data


SCHEMA = ('{"format": "jaxgpt-tokens", "version": 1, "vocab_size": N, "splits": {"train": '
          '[{"file": NAME, "tokens": N, "sha256": HEX}, ...], "val": [...]}}')


def read_dataset(directory: str) -> dict:
  """The folder's dataset.json, its schema checked; a folder without one is a UserError."""
  if os.path.isfile(directory):
    raise UserError(f"{directory} is a file, not a folder of token shards: pass the folder that "
                    "`python -m jaxgpt.prepare --out=DIR` wrote (--source=text --path=FILE "
                    "makes one from a text file), or train on a text file with "
                    "--config.data.source=text")
  path = os.path.join(directory, DATASET_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{directory} holds no {DATASET_FILE}: pass a folder that "
                    "`python -m jaxgpt.prepare --out=DIR` wrote, or write one for "
                    f"your shards ({SCHEMA}; see the README's token shards section)") from None
  except (OSError, ValueError) as e:
    raise UserError(f"{path} cannot be read ({e}): restore it, or if python -m jaxgpt.prepare "
                    "wrote it, delete it and run the same prepare command again (it goes on "
                    "from the finished shards)") from None
  check_schema(info, path)
  return info


def check_schema(info, path: str) -> None:
  """A UserError naming the first missing or mistyped key of a dataset.json, and what is
  wrong with its value."""
  def fail(what: str) -> None:
    raise UserError(f"{path} {what}: it must read {SCHEMA} (see the README's token shards "
                    "section)")

  def require(parent: dict, key: str, ok, expected: str, where: str = "") -> None:
    if key not in parent:
      fail(f'has no "{key}"{where} ({expected})')
    if not ok(parent[key]):
      fail(f'has "{key}": {_shown(parent[key])}{where}, not {expected}')

  if not isinstance(info, dict):
    fail("is not a JSON object")
  require(info, "format", lambda v: v == FORMAT, f'"{FORMAT}"')
  require(info, "version", lambda v: _is_count(v) and v == FORMAT_VERSION, str(FORMAT_VERSION))
  require(info, "vocab_size", lambda v: _is_count(v) and v > 0,
          "the tokenizer's number of ids, a positive integer")
  require(info, "splits", lambda v: isinstance(v, dict), "an object of the train and val lists")
  for split in SPLITS:
    require(info["splits"], split, lambda v: isinstance(v, list) and v,
            "a non-empty list of shards", ' in "splits"')
    for i, entry in enumerate(info["splits"][split]):
      place = f'"splits"."{split}"[{i}]'
      if not isinstance(entry, dict):
        fail(f"has a {place} that is not an object")
      where = f" in {place}"
      require(entry, "file", _is_file_name,
              "the name of a shard file in the dataset folder, without a folder part", where)
      require(entry, "tokens", _is_count,
              "the shard's number of tokens, an integer of 0 or more", where)
      require(entry, "sha256", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v),
              "the hex SHA-256 of the whole shard file, as sha256sum prints it", where)


def _shown(value) -> str:
  """`value` as JSON, cut short: a mistyped value in a one-line error."""
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _is_file_name(value) -> bool:
  return (isinstance(value, str) and value not in ("", ".", "..")
          and os.path.basename(value) == value)


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def dataset_tokenizer(directory: str, info: dict) -> tokenizer_lib.Tokenizer:
  """The tokenizer.json beside the shards, whose vocabulary must be dataset.json's."""
  path = os.path.join(directory, tokenizer_lib.FILENAME)
  if not os.path.isfile(path):
    raise UserError(
        f"{directory} has no {tokenizer_lib.FILENAME}, the tokenizer its shards were made with: "
        "put it there (for GPT-2 BPE ids, GPT-2's Hugging Face tokenizer.json; for characters "
        '{"kind": "char", "chars": "<the vocabulary, in id order>"}; see the README\'s token '
        "shards section)")
  tokenizer = tokenizer_lib.load_tokenizer(directory)
  if tokenizer.vocab_size != info["vocab_size"]:
    raise UserError(
        f"{path} has {tokenizer.vocab_size} ids but {DATASET_FILE} says the shards' "
        f"vocabulary has {info['vocab_size']}: put the tokenizer the shards were made with "
        f"there, or correct vocab_size in {DATASET_FILE}")
  return tokenizer


def load_split(directory: str, info: dict, split: str) -> TokenShards:
  """A split of the dataset in `directory`, its shards' headers and sizes checked, read
  lazily; ids at or past `info["vocab_size"]` are a UserError when a batch reads them."""
  entries = info["splits"][split]
  shards = [open_shard(os.path.join(directory, entry["file"]), entry["tokens"])
            for entry in entries]
  return TokenShards(shards, name=f"the {split} split of {directory}",
                     checksums=" ".join(entry["sha256"] for entry in entries),
                     vocab_size=info["vocab_size"])


def file_sha256(path: str) -> str:
  """The hex SHA-256 of a file, read in pieces (a shard may be gigabytes)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while piece := f.read(1 << 24):
      digest.update(piece)
  return digest.hexdigest()


def damaged_shards(directory: str, info: dict) -> list[tuple[str, str, str]]:
  """(split, file, what is wrong) of every shard whose header, size, checksum or ids do not
  match dataset.json: each shard is read whole once."""
  damaged = []
  for split in SPLITS:
    for entry in info["splits"][split]:
      path = os.path.join(directory, entry["file"])
      tokens, problem = _mapped_shard(path, entry["tokens"])
      if problem:
        damaged.append((split, entry["file"], problem))
      elif file_sha256(path) != entry["sha256"]:
        damaged.append((split, entry["file"], f"its SHA-256 differs from {DATASET_FILE}'s"))
      elif len(tokens) and int(_max_id(tokens)) >= info["vocab_size"]:
        damaged.append((split, entry["file"], f"it holds id {int(_max_id(tokens))}, past the "
                        f"vocabulary of {info['vocab_size']}"))
  return damaged


def _max_id(tokens: np.memmap) -> int:
  return max(int(tokens[i:i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24))

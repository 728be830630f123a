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

import numpy as np

from jaxgpt.errors import UserError

DATASET_FILE = "dataset.json"
FORMAT = "jaxgpt-tokens"
FORMAT_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) for each token type, as llm.c writes them.
KINDS = {np.dtype(np.uint16): (20240520, 1), np.dtype(np.uint32): (20240801, 7)}
SPLITS = ("train", "val")


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


def open_shard(path: str, expected_tokens: int | None = None) -> np.memmap:
  """The shard's tokens, memory-mapped (nothing is read until used); a shard that is
  missing, truncated or not in this format is a UserError naming it."""
  fix = "prepare the dataset again (python -m jaxgpt.prepare with the same arguments)"
  try:
    size = os.path.getsize(path)
    header = np.fromfile(path, "<i4", count=HEADER_INTS)
  except OSError as e:
    raise UserError(f"token shard {path} cannot be read ({e.strerror}): {fix}") from None
  if len(header) < 3:
    raise UserError(f"token shard {path} is truncated (no whole header): {fix}")
  kinds = {kind: dtype for dtype, kind in KINDS.items()}
  dtype = kinds.get((int(header[0]), int(header[1])))
  if dtype is None:
    raise UserError(f"token shard {path} has magic {header[0]} and version {header[1]}, "
                    f"not a token shard of a known format: {fix}")
  count = int(header[2])
  if size != HEADER_BYTES + count * dtype.itemsize:
    raise UserError(f"token shard {path} has {size} bytes, but its header promises "
                    f"{count} tokens ({HEADER_BYTES + count * dtype.itemsize} bytes): it is "
                    f"truncated or damaged: {fix}")
  if expected_tokens is not None and count != expected_tokens:
    raise UserError(f"token shard {path} holds {count} tokens but {DATASET_FILE} lists "
                    f"{expected_tokens}: {fix}")
  return np.memmap(path, dtype.newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,))


class TokenShards:
  """Shards read as one long token sequence, lazily: memory does not grow with the corpus.

  Windows are read with pread, not through the shards' memory maps: a touched page of a map
  stays in the process's resident memory (a whole 2 MB huge page where the kernel maps file
  pages that way), so a long run would grow towards the corpus's size.
  """

  def __init__(self, shards: list[np.memmap], name: str = "tokens", checksums: str = ""):
    self.name, self.checksums = name, checksums
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
        out[row, filled:filled + count] = np.frombuffer(data, dtype)
        filled += count
        shard += 1
    return out


  def _read(self, shard: int, size: int, position: int) -> bytes:
    """Bytes of a shard; a shard that shrank or broke since it was opened is a UserError."""
    try:
      data = os.pread(self._files[shard][0], size, position)
    except OSError as e:
      data, reason = b"", e.strerror
    else:
      reason = "it is shorter than when training started"
    if len(data) != size:
      raise UserError(f"token shard {self._paths[shard]} cannot be read ({reason}): restore it "
                      "or prepare the dataset again, then resume")
    return data


def read_dataset(directory: str) -> dict:
  """The folder's dataset.json; a folder without one is a UserError."""
  path = os.path.join(directory, DATASET_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{directory} holds no {DATASET_FILE}: pass --config.data.path=DIR of a "
                    "folder that `python -m jaxgpt.prepare --out=DIR` wrote") from None
  except (OSError, ValueError) as e:
    raise UserError(f"{path} cannot be read ({e}): prepare the dataset again") from None
  if info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
    raise UserError(f"{path} is not a jaxgpt token dataset of version {FORMAT_VERSION}: "
                    "prepare it again with this jaxgpt")
  return info


def load_split(directory: str, info: dict, split: str) -> TokenShards:
  """A split of the dataset in `directory`, its shards checked, read lazily."""
  shards = [open_shard(os.path.join(directory, entry["file"]), entry["tokens"])
            for entry in info["splits"][split]]
  return TokenShards(shards, name=f"the {split} split of {directory}",
                     checksums=" ".join(entry["sha256"] for entry in info["splits"][split]))

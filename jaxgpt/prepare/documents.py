"""The documents of a corpus, read one at a time for `python -m jaxgpt.prepare`.

A file is read by its name: `.jsonl` and `.jsonl.gz` are JSON Lines (one document a line, its
text in a field), `.parquet` is Parquet (a text column, read a batch of rows at a time), any
other file is plain UTF-8 text and one document. A Hugging Face dataset is streamed through
the `datasets` library, never downloaded whole. Empty documents are left out. Memory holds a
document (or a Parquet batch) at a time, whatever the corpus's size.
"""

import glob
import gzip
import json
import os

from jaxgpt import files
from jaxgpt.errors import UserError, first_line

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIX = ".parquet"
PARQUET_BATCH_ROWS = 1024
HF_SPLIT = "train"
_MASK64 = 2**64 - 1


def expand_globs(patterns: str, flag: str) -> list[str]:
  """The files of comma-separated globs: each glob's matches sorted, globs in the order
  given, each file once; a glob that matches no file is a UserError naming it."""
  files, seen = [], set()
  for pattern in (p.strip() for p in patterns.split(",")):
    if not pattern:
      continue
    matches = sorted(os.path.abspath(p) for p in glob.glob(os.path.expanduser(pattern),
                                                           recursive=True)
                     if os.path.isfile(p))
    if not matches and os.path.isdir(os.path.expanduser(pattern)):
      raise UserError(f"--{flag}={pattern} is a folder: name its files, e.g. "
                      f"--{flag}='{os.path.join(pattern, '*.txt')}' (quoted)")
    if not matches:
      raise UserError(f"--{flag}: no file matches {pattern!r}: check the path, and quote the "
                      "glob so that the shell leaves it to prepare")
    files += [m for m in matches if m not in seen]
    seen.update(matches)
  if not files:
    raise UserError(f"--{flag} names no file: pass --{flag}=GLOB[,GLOB...]")
  return files


def held_out(index: int, val_fraction: float) -> bool:
  """Whether document `index` (counted from 0 in input order) is a validation document:
  splitmix64 of the index, below val_fraction of 2**64. Deterministic, streaming, and
  independent of the corpus's size."""
  z = (index + 0x9E3779B97F4A7C15) & _MASK64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return (z ^ (z >> 31)) < val_fraction * 2**64


class FileDocuments:
  """The non-empty documents of `files` in order. `bytes_read` (of `total_bytes`, the
  files' sizes on disk) says how far the reading has come, for progress and ETA."""

  def __init__(self, files: list[str], text_field: str):
    self.files, self.text_field = files, text_field
    self.total_bytes = sum(os.path.getsize(f) for f in files)
    self.bytes_read = 0

  def __iter__(self):
    self.bytes_read = 0
    for path in self.files:
      before = self.bytes_read
      for text, position in _read_file(path, self.text_field):
        self.bytes_read = before + position
        if text:
          yield text
      self.bytes_read = before + os.path.getsize(path)


def is_plain_text(path: str) -> bool:
  """Whether the file is read as one document of plain text."""
  return not path.endswith((*JSONL_SUFFIXES, PARQUET_SUFFIX))


def _read_file(path: str, text_field: str):
  """(document, bytes of the file read so far) for each document of the file."""
  if path.endswith(JSONL_SUFFIXES):
    return _read_jsonl(path, text_field)
  if path.endswith(PARQUET_SUFFIX):
    return _read_parquet(path, text_field)
  return _read_text(path)


def _read_text(path: str):
  yield (files.read_utf8(path, path, f"{files.TO_UTF8}, or leave it out of the input"),
         os.path.getsize(path))


def _read_jsonl(path: str, text_field: str):
  with open(path, "rb") as raw:
    lines = gzip.open(raw) if path.endswith(".gz") else raw
    try:
      for number, line in enumerate(lines, start=1):
        if line.strip():
          yield _jsonl_text(line, path, number, text_field), raw.tell()
    except (OSError, EOFError) as e:  # gzip: not gzip data, or cut short
      raise UserError(f"{path} cannot be read as gzip ({first_line(e)}): check the file, "
                      "or name it without .gz if it is not compressed") from None


def _jsonl_text(line: bytes, path: str, number: int, text_field: str) -> str:
  where = f"{path} line {number}"
  try:
    record = json.loads(line)
  except UnicodeDecodeError:
    raise UserError(f"{where} is not UTF-8: convert the file to UTF-8") from None
  except ValueError as e:
    raise UserError(f"{where} is not JSON ({first_line(e)}): each line of a .jsonl file must "
                    "be one JSON object") from None
  if not isinstance(record, dict) or text_field not in record:
    fields = ", ".join(map(repr, record)) if isinstance(record, dict) else "not an object"
    raise UserError(f"{where} has no field {text_field!r} (it has: {fields}): pass "
                    "--text_field=NAME of the field that holds the text")
  text = record[text_field]
  if text is None:
    return ""
  if not isinstance(text, str):
    raise UserError(f"{where}: field {text_field!r} is a {type(text).__name__}, not text: "
                    "pass --text_field=NAME of the field that holds the text")
  return text


def _import_pyarrow_parquet():
  try:
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("reading .parquet files needs pyarrow: run `pip install pyarrow`, or "
                    "convert the files to JSON Lines") from None
  return pyarrow.parquet


def _read_parquet(path: str, text_field: str):
  parquet = _import_pyarrow_parquet()
  try:
    table = parquet.ParquetFile(path)
  except Exception as e:  # pylint: disable=broad-except  # pyarrow raises several kinds
    raise UserError(f"{path} cannot be read as Parquet ({first_line(e)}): check the "
                    "file") from None
  names = table.schema_arrow.names
  if text_field not in names:
    raise UserError(f"{path} has no column {text_field!r} (it has: "
                    f"{', '.join(map(repr, names))}): pass --text_field=NAME of the column "
                    "that holds the text")
  column_type = str(table.schema_arrow.field(text_field).type)
  if column_type not in ("string", "large_string"):
    raise UserError(f"{path}: column {text_field!r} holds {column_type}, not text: pass "
                    "--text_field=NAME of the column that holds the text")
  size, rows, done = os.path.getsize(path), max(table.metadata.num_rows, 1), 0
  for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
    done += batch.num_rows
    position = size * done // rows
    for text in batch.column(0).to_pylist():
      yield text or "", position


class HubDocuments:
  """The non-empty documents of a Hugging Face dataset's train split, streamed; its size is
  unknown beforehand (`total_bytes` None); `bytes_read` counts the characters read."""

  total_bytes = None

  def __init__(self, name: str, config: str, text_field: str):
    self.name, self.config, self.text_field = name, config or None, text_field
    self.bytes_read = 0

  def __iter__(self):
    self.bytes_read = 0
    described = self.name + (f" ({self.config})" if self.config else "")
    try:
      for number, row in enumerate(self._stream(described)):
        text = _hub_text(row, number, described, self.text_field)
        self.bytes_read += len(text)
        if text:
          yield text
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # the network, the hub, a parser
      raise UserError(f"reading the Hugging Face dataset {described} failed "
                      f"({type(e).__name__}: {first_line(e)})") from None

  def _stream(self, described: str):
    try:
      import datasets  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("--source=hf needs the Hugging Face datasets library: run `pip install "
                      "datasets`, or download the files and pass --input=GLOB") from None
    from huggingface_hub.utils import logging as hub_logging  # pylint: disable=g-import-not-at-top
    # Its retries each log two lines (11 lines over 24 s offline) before the one error line.
    hub_logging.set_verbosity_error()
    try:
      return datasets.load_dataset(self.name, self.config, split=HF_SPLIT, streaming=True)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"could not open the Hugging Face dataset {described} "
                      f"({type(e).__name__}: {first_line(e)}): check --name (and --path, "
                      "its configuration) and the network") from None


def _hub_text(row, number: int, described: str, text_field: str) -> str:
  if not isinstance(row, dict) or text_field not in row:
    fields = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
    raise UserError(f"row {number} of the Hugging Face dataset {described} has no field "
                    f"{text_field!r} (it has: {fields}): pass --text_field=NAME")
  text = row[text_field]
  if text is not None and not isinstance(text, str):
    raise UserError(f"row {number} of the Hugging Face dataset {described}: field "
                    f"{text_field!r} is a {type(text).__name__}, not text: pass "
                    "--text_field=NAME of the field that holds the text")
  return text or ""

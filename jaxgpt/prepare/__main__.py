"""python -m jaxgpt.prepare --input=GLOB[,GLOB...] --out=DIR [--tokenizer=char|gpt2|FOLDER]
    [--text_field=text] [--val_fraction=F | --val_input=GLOB] [--workers=N] [--shard_tokens=N]
python -m jaxgpt.prepare --source=shakespeare_plays|text|kaggle_csv|tfds|hf [--path=...]
    [--name=...] --out=DIR [--tokenizer=...] [--val_fraction=F] [--shard_tokens=N]

Tokenizes a corpus once into token shards (llm.c's .bin format, see jaxgpt/data/shards.py)
that training reads with --config.data.source=tokens --config.data.path=DIR.

Inputs: plain-text files (one document each), JSON Lines (.jsonl, .jsonl.gz: a document a
line, its text in --text_field), Parquet (.parquet: the column --text_field), a Hugging Face
dataset streamed with `datasets` (--source=hf --name=NAME [--path=CONFIG]), or one of
training's own sources (shakespeare_plays, text, kaggle_csv, tfds), which give exactly the
tokens that training makes from them in memory. With --tokenizer=gpt2 or a BPE folder each
document is preceded by <|endoftext|>; with char, documents are joined with a newline.

DIR gets train_NNNNNN.bin and val_NNNNNN.bin shards (each with a small .progress.json),
tokenizer.json and dataset.json (written last); DIR must be new, empty, or prepare's own. A
prepare that was stopped goes on from its last finished shard when run again with the same
arguments, and writes the same bytes as one that was never stopped. Run again on a finished
dataset, it checks every shard (size and SHA-256) and remakes the damaged ones; an input file
whose size or modification time differs from dataset.json's record stops it, the shards kept.

python -m jaxgpt.prepare --verify=DIR (alone) checks a dataset's shards (headers, sizes,
SHA-256, ids within the vocabulary) and its tokenizer.json's vocabulary against its
dataset.json, without changing anything.
"""

import contextlib
import errno
import os
import sys
import time

from absl import flags

from jaxgpt import cli, config as config_lib, files
from jaxgpt.data import shards
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import Interrupted, UserError, run_cli
from jaxgpt.prepare import corpus, documents, shard_writer
from jaxgpt.progress import duration

SOURCES = config_lib.TEXT_SOURCES + ("hf",)
SPLITS = shards.SPLITS

_INPUT = flags.DEFINE_string("input", "", "Comma-separated globs of the corpus's files "
                             "(.txt or any other: one document; .jsonl, .jsonl.gz, .parquet).")
_OUT = flags.DEFINE_string("out", None, "The folder to write the dataset to.")
_SOURCE = flags.DEFINE_string("source", "", "Instead of --input: shakespeare_plays, text "
                              "(--path=FILE), kaggle_csv (--path=CSV), tfds (--name=DATASET) or "
                              "hf (--name=DATASET [--path=CONFIG], streamed with `datasets`).")
_PATH = flags.DEFINE_string("path", "", "The file of --source=text|kaggle_csv; the "
                            "configuration of --source=hf.")
_NAME = flags.DEFINE_string("name", "", "The dataset of --source=hf|tfds (tfds: default "
                            "tiny_shakespeare).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "char", "char (a vocabulary of the corpus's "
                                 "characters), gpt2 (GPT-2's BPE), or a folder: a Hugging Face "
                                 "tokenizer, or a jaxgpt run's or dataset's tokenizer.json.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "The JSON field or Parquet column, or "
                                  "the --source=hf field, that holds each document's text.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "The share of documents held out for "
                                   "validation, chosen by a hash of each document's index.")
_VAL_INPUT = flags.DEFINE_string("val_input", "", "Globs of the validation files, instead of "
                                 "--val_fraction (then all of --input is training data).")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Tokenizing processes "
                                "(default: one per core); the output does not depend on it.")
_SHARD_TOKENS = flags.DEFINE_integer("shard_tokens", 100_000_000, "Tokens per shard (the last "
                                     "of each split has fewer).")
_VERIFY = flags.DEFINE_string("verify", "", "Instead of preparing: check every shard of the "
                              "dataset folder DIR (header, size, SHA-256, ids within the "
                              "vocabulary) and its tokenizer.json against its dataset.json.")


def main(argv=None):
  cli.parse_flags(argv, __doc__)
  if _VERIFY.value:
    _check_verify_alone()
    _verify(os.path.abspath(os.path.expanduser(_VERIFY.value)))
    return
  started = time.monotonic()
  source = describe_source()
  inputs = _input_stats(source)
  _warn_of_shared_files(source)
  out = os.path.abspath(os.path.expanduser(_OUT.value))
  _check_out_is_ours(out)
  if _already_prepared(out, source, inputs):
    return
  with _removed_if_left_empty(out):
    info = _prepare_reporting_failures(out, source, inputs)
  print(_summary(out, info, time.monotonic() - started), flush=True)


@contextlib.contextmanager
def _removed_if_left_empty(out: str):
  """Removes the folder `out`, where prepare made it, if prepare failed before writing a
  shard in it: a refused prepare leaves nothing behind."""
  made = not os.path.exists(out)
  try:
    yield
  except BaseException:
    if made:
      with contextlib.suppress(OSError):
        os.rmdir(out)  # only an empty folder
    raise


def _prepare_reporting_failures(out: str, source: dict, inputs: dict) -> dict:
  try:
    return _prepare(out, source, inputs)
  except KeyboardInterrupt:
    _remove_partial_shard(out)
    raise Interrupted(f"prepare was interrupted: run the same command again to go on from "
                      f"its last finished shard in {out}", exit_code=130) from None
  except OSError as e:
    raise _write_error(out, e) from None


def _prepare(out: str, source: dict, inputs: dict) -> dict:
  _make_folder(out)
  shard_writer.remove_temporaries(out)
  records = _unfinished_records(out, source)
  if source["source"] in config_lib.TEXT_SOURCES:
    prepared = corpus.prepare_text(out, source)
  else:
    prepared = corpus.prepare_documents(out, source, records, _workers())
  return _finish(out, source, prepared, inputs)


def _workers() -> int:
  """--workers, at most one per core: more only add processes that wait."""
  cores = os.cpu_count() or 1
  if _WORKERS.value > cores:
    print(f"--workers={_WORKERS.value} is more than the {cores} cores here: using {cores}",
          file=sys.stderr, flush=True)
  return min(_WORKERS.value, cores)


def _remove_partial_shard(out: str) -> None:
  with contextlib.suppress(OSError):
    shard_writer.remove_temporaries(out)


def _token_bytes(out: str) -> int:
  """The bytes of a token in the shards of the tokenizer saved in `out` (4 before it is)."""
  try:
    return shards.token_dtype(tokenizer_lib.load_tokenizer(out).vocab_size).itemsize
  except UserError:
    return 4


def _write_error(out: str, error: OSError) -> UserError:
  """One line for a write that failed (a full disk, a read-only folder); the partial shard
  is removed, the finished ones are kept for the rerun."""
  _remove_partial_shard(out)
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    shard_mb = (shards.HEADER_BYTES + _SHARD_TOKENS.value * _token_bytes(out)) / 1e6
    return UserError(f"the disk holding {out} is full ({error.strerror}): free at least "
                     f"{shard_mb:,.1f} MB there (one shard of --shard_tokens="
                     f"{_SHARD_TOKENS.value:,}) and run the same command again: it goes on "
                     "from its last finished shard")
  where = str(error.filename or out)
  if not where.startswith(out):  # an input
    return UserError(f"{where} cannot be read ({error.strerror}): check the file and run the "
                     "same command again; the finished shards are kept")
  return UserError(f"{where} cannot be written ({error.strerror}): pass another --out, or "
                   "fix its permissions and run the same command again")


def describe_source() -> dict:
  """The arguments that define the dataset's content (not --workers), checked, with the
  globs resolved to files: dataset.json keeps it, and a rerun must match it."""
  kind = _check_flags()
  files = kind == "files"
  val_input = documents.expand_globs(_VAL_INPUT.value, "val_input") if _VAL_INPUT.value else None
  path = (_check_file(_PATH.value, kind) if kind in ("text", "kaggle_csv")
          else _PATH.value or None if kind == "hf" else None)
  name = (_NAME.value or ("tiny_shakespeare" if kind == "tfds" else None)
          if kind in ("tfds", "hf") else None)
  tokenizer = _TOKENIZER.value
  if tokenizer not in ("char", "gpt2"):
    tokenizer = os.path.abspath(os.path.expanduser(tokenizer))
  return {"source": kind,
          "input": documents.expand_globs(_INPUT.value, "input") if files else None,
          "val_input": val_input, "path": path, "name": name,
          "text_field": _TEXT_FIELD.value if kind in ("files", "hf") else None,
          "tokenizer": tokenizer, "val_fraction": None if val_input else _VAL_FRACTION.value,
          "shard_tokens": _SHARD_TOKENS.value}


def _input_stats(source: dict) -> dict:
  """{path: {bytes, modified_ns}} of each file prepare reads, taken before it reads them:
  dataset.json keeps them, so that a rerun finds inputs changed since without reading them."""
  paths = [*(source["input"] or []), *(source["val_input"] or [])]
  if source["source"] in ("text", "kaggle_csv"):
    paths.append(source["path"])
  stats = {}
  for path in paths:
    try:
      status = os.stat(path)
    except OSError as e:
      raise UserError(f"{path} cannot be read ({e.strerror}): check the file and run the same "
                      "command again") from None
    stats[path] = {"bytes": status.st_size, "modified_ns": status.st_mtime_ns}
  return stats


def _warn_of_shared_files(source: dict) -> None:
  """Validation text that is also training text measures memory, not generalisation."""
  shared = [f for f in source["val_input"] or [] if f in set(source["input"] or [])]
  if shared:
    print(f"warning: {len(shared)} file(s) of --val_input are also in --input (the first: "
          f"{shared[0]}): the validation loss will be measured on text the model trains on",
          file=sys.stderr, flush=True)


def _check_flags() -> str:
  """The kind of source (`files` for --input); contradictory flags are a UserError."""
  if not _OUT.value:
    raise UserError("--out=DIR is required: the folder to write the dataset to")
  source = _SOURCE.value
  if source and _INPUT.value:
    raise UserError(f"--input and --source={source} both given: pass one of them")
  if not source and not _INPUT.value:
    raise UserError("pass --input=GLOB[,GLOB...] (the corpus's files) or --source=NAME "
                    f"({', '.join(SOURCES)})")
  if source and source not in SOURCES:
    raise UserError(f"unknown --source={source}: choose one of {', '.join(SOURCES)}, or pass "
                    "--input=GLOB")
  if _VAL_INPUT.value and flags.FLAGS["val_fraction"].present:
    raise UserError("--val_fraction and --val_input both given: pass one (--val_input makes "
                    "those files the validation split, and all of --input training data)")
  if _VAL_INPUT.value and source:
    raise UserError(f"--val_input goes with --input, not --source={source}: use --val_fraction")
  if not 0 < _VAL_FRACTION.value < 1:
    raise UserError(f"--val_fraction={_VAL_FRACTION.value} must lie between 0 and 1, e.g. 0.1")
  if source == "hf" and not _NAME.value:
    raise UserError("--source=hf needs --name=DATASET (a Hugging Face dataset, e.g. "
                    "HuggingFaceFW/fineweb-edu) and optionally --path=CONFIG")
  if _WORKERS.value < 1:
    raise UserError(f"--workers={_WORKERS.value}: pass 1 or more")
  if not 1 <= _SHARD_TOKENS.value <= shards.MAX_SHARD_TOKENS:
    raise UserError(f"--shard_tokens={_SHARD_TOKENS.value}: pass 1 to "
                    f"{shards.MAX_SHARD_TOKENS:,} (a shard's header counts its tokens in 32 bits)")
  return source or "files"


def _check_file(path: str, source: str) -> str:
  if not path:
    raise UserError(f"--source={source} needs --path=FILE")
  if not os.path.isfile(path):
    raise UserError(f"--path={path} is not a file: pass the file for --source={source}")
  return os.path.abspath(path)


def _make_folder(out: str) -> None:
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out={out} cannot be made a folder ({e.strerror}): pass another "
                    "--out") from None


def _already_prepared(out: str, source: dict, inputs: dict) -> bool:
  """True (said on stdout) for a folder with this dataset, finished and every shard intact;
  a folder with another finished dataset, or one made from input files that changed since,
  is a UserError, and nothing of it is touched.
  Damaged shards are removed with dataset.json, so that the prepare goes on to remake them."""
  path = os.path.join(out, shards.DATASET_FILE)
  if not os.path.exists(path):
    return False
  info = files.read_json(path)
  if info is None:
    raise UserError(f"{path} cannot be read: if prepare wrote it, delete it and run the same "
                    "command again (it goes on from the finished shards); else pass another "
                    "--out")
  if not isinstance(info, dict) or info.get("format") != shards.FORMAT:
    raise UserError(f"{path} exists but is not a jaxgpt token dataset: pass another --out")
  made_from = info.get("source") or {}
  if made_from != shard_writer.as_json(source):
    differ = sorted(k for k in set(made_from) | set(source) if made_from.get(k) != source.get(k))
    raise UserError(f"{out} already holds a dataset prepared from other arguments ("
                    f"{', '.join(differ)} differ): pass another --out, or delete {out} to "
                    "prepare this one there")
  shards.check_schema(info, path)
  _check_inputs_unchanged(out, info, inputs)
  shard_files = tuple(e["file"] for split in SPLITS for e in info["splits"][split])
  shard_writer.remove_leftovers(out, keep=shard_files)  # a run stopped just after dataset.json
  damaged = shards.damaged_shards(out, info)
  if not damaged:
    print(f"{out} is already prepared from these arguments: its {len(shard_files)} shards are "
          "intact (sizes and SHA-256 checked): nothing to do", flush=True)
    return True
  _remove_damaged(out, damaged)
  return False


def _check_inputs_unchanged(out: str, info: dict, inputs: dict) -> None:
  """A UserError naming an input file whose size or modification time is not what the
  dataset.json in `out` recorded (one from before prepare recorded them is trusted): remade
  or repaired shards would mix its new text with the old."""
  recorded = info.get("inputs")
  if not isinstance(recorded, dict):
    return
  changed = [path for path, stat in inputs.items() if recorded.get(path) != stat]
  if not changed:
    return
  first = changed[0]
  how = _how_it_changed(recorded.get(first), inputs[first])
  more = f"; {len(changed)} input files changed in all" if len(changed) > 1 else ""
  raise UserError(f"{first} changed after {out} was prepared from it ({how}{more}): its shards "
                  "hold the old text and are kept as they are; to prepare the new text, pass "
                  f"another --out, or delete {out} and run the same command again")


def _how_it_changed(then, now: dict) -> str:
  was = then.get("bytes") if isinstance(then, dict) else None
  if isinstance(was, int) and was != now["bytes"]:
    return f"{was:,} bytes then, {now['bytes']:,} now"
  return "modified since"


def _remove_damaged(out: str, damaged: list[tuple[str, str, str]]) -> None:
  """Removes dataset.json and the damaged shards (with their progress files), saying which:
  the prepare then remakes each split from its first damaged shard on."""
  for split, file, problem in damaged:
    names = (file, shard_writer.progress_name(file))
    for name in names:
      if os.path.isdir(os.path.join(out, name)):
        raise UserError(f"{os.path.join(out, name)} is a folder where prepare writes a file: "
                        "move it away, then run the same command again")
    print(f"{os.path.join(out, file)} is damaged ({problem}): making it again",
          file=sys.stderr, flush=True)
    for name in names:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, name))
  os.remove(os.path.join(out, shards.DATASET_FILE))


def _check_out_is_ours(out: str) -> None:
  """A UserError, before anything is written, where --out holds files prepare did not write
  (a training run's workdir, anyone's folder): prepare would overwrite or mix with them."""
  if not os.path.isdir(out):
    if os.path.exists(out):
      raise UserError(f"--out={out} is a file: pass a new or empty folder")
    return
  foreign = sorted(name for name in os.listdir(out) if not _written_by_prepare(out, name))
  if foreign:
    listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    raise UserError(f"--out={out} holds files that prepare did not write ({listed}): pass a new "
                    "or empty folder, not a training run's workdir or a folder of other files")


def _written_by_prepare(out: str, name: str) -> bool:
  if name == tokenizer_lib.FILENAME:  # jaxgpt's own spec; a Hugging Face one has "model"
    spec = files.read_json(os.path.join(out, name))
    return isinstance(spec, dict) and "kind" in spec
  return (name == shards.DATASET_FILE or name.endswith(".tmp")
          or name.endswith(shard_writer.PROGRESS_SUFFIX) or shard_writer.is_shard_name(name))


def _check_verify_alone() -> None:
  """A UserError naming the flags given with --verify: it would ignore them."""
  given = [f"--{flag.name}" for flag in flags.FLAGS.get_flags_for_module(sys.modules[__name__])
           if flag.present and flag.name != "verify"]
  if given:
    raise UserError(f"--verify=DIR takes no other flag ({', '.join(given)} given): run "
                    "--verify=DIR alone to check a dataset, or leave --verify out to prepare one")


def _verify(directory: str) -> None:
  """--verify=DIR: the tokenizer's vocabulary and every shard's header, size, SHA-256 and
  ids against dataset.json."""
  info = shards.read_dataset(directory)
  shards.dataset_tokenizer(directory, info)
  damaged = shards.damaged_shards(directory, info)
  count = sum(len(info["splits"][split]) for split in SPLITS)
  if damaged:
    named = "; ".join(f"{file}: {problem}" for _, file, problem in damaged)
    raise UserError(f"{len(damaged)} of the {count} shards of {directory} are damaged ({named}): "
                    f"{shards.REPAIR}")
  print(f"{directory}: all {count} shards are intact (headers, sizes, SHA-256 and ids below "
        f"{info['vocab_size']:,} checked), and so is its tokenizer's vocabulary", flush=True)


def _unfinished_records(out: str, source: dict) -> list[dict]:
  """The progress records of an unfinished prepare of these arguments; those of other
  arguments are a UserError (run that command again, or start over elsewhere)."""
  records = []
  for path, record in shard_writer.progress_records(out):
    made_from = (record or {}).get("fingerprint", {}).get("source")
    if made_from != shard_writer.as_json(source):
      raise UserError(f"{out} holds an unfinished prepare of other arguments "
                      f"({os.path.basename(path)}): run that command again to finish it, or "
                      f"pass another --out, or delete {out} to start over")
    records.append(record)
  return records


def _finish(out: str, source: dict, prepared, inputs: dict) -> dict:
  """Writes the last shards, then dataset.json; removes progress files. Returns the info."""
  for split in SPLITS:
    if not prepared.writers[split].tokens:
      shard_writer.remove_leftovers(out)  # these shards cannot make a dataset: start clean
      os.remove(os.path.join(out, tokenizer_lib.FILENAME))
      raise UserError(corpus.empty_split_message(source, split, prepared.documents))
  splits = {split: prepared.writers[split].finish() for split in SPLITS}
  tokenizer = prepared.tokenizer
  info = {"format": shards.FORMAT, "version": shards.FORMAT_VERSION, "tokenizer": tokenizer.kind,
          "vocab_size": int(tokenizer.vocab_size), "end_of_text_id": tokenizer.end_of_text_id,
          "dtype": prepared.writers["train"].dtype.name, "source": source, "splits": splits,
          "documents": prepared.documents, "inputs": inputs}
  shard_writer.write_json(os.path.join(out, shards.DATASET_FILE), info)
  shard_writer.remove_leftovers(out, keep=tuple(e["file"] for s in SPLITS for e in splits[s]))
  return info


def _summary(out: str, info: dict, seconds: float) -> str:
  docs, splits = info["documents"], info["splits"]
  tokens = {s: sum(e["tokens"] for e in splits[s]) for s in SPLITS}
  total = tokens["train"] + tokens["val"]
  return (f"prepared {out}: {docs['train'] + docs['val']:,} documents (train {docs['train']:,}, "
          f"val {docs['val']:,}), {total:,} tokens (train {tokens['train']:,}, val "
          f"{tokens['val']:,}) in {len(splits['train'])} train and {len(splits['val'])} val "
          f"shards of {info['dtype']}, {info['tokenizer']} tokenizer of {info['vocab_size']:,} "
          f"tokens; {duration(seconds)} ({total / max(seconds, 1e-9):,.0f} tokens/s)")


if __name__ == "__main__":
  run_cli(main)

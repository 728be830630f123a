"""A corpus tokenized into the train and val shard writers of `python -m jaxgpt.prepare`.

Training's own text sources (shakespeare_plays, text, kaggle_csv, tfds) give exactly the
tokens training makes from them in memory: `tokenizer.encode(train_text)` and
`tokenizer.encode(val_text)`, the char vocabulary that of both texts. Documents (files, a
Hugging Face dataset) are tokenized on worker processes, each preceded by the separator: the
tokenizer's end-of-text token, or for char a newline that the split's first document goes
without (documents joined with newlines).
"""

import dataclasses
import os
import sys

import numpy as np

from jaxgpt import config as config_lib
from jaxgpt.data import shards, sources
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError
from jaxgpt.prepare import documents as documents_lib
from jaxgpt.prepare import encoding, shard_writer
from jaxgpt.progress import ProgressLine

SPLITS = shards.SPLITS


@dataclasses.dataclass
class Prepared:
  """A tokenized corpus: its tokenizer, each split's writer, each split's documents."""
  tokenizer: tokenizer_lib.Tokenizer
  writers: dict
  documents: dict


def prepare_text(out: str, source: dict) -> Prepared:
  """Tokenizes a training text source as training does, each split one document."""
  data_config = config_lib.base_config().data
  data_config.source = source["source"]
  data_config.path = source["path"] or ""
  data_config.tfds_name = source["name"] or data_config.tfds_name
  data_config.val_fraction = source["val_fraction"]
  texts = dict(zip(SPLITS, sources.load_splits(data_config)))
  tokenizer = (encoding.named_tokenizer(source["tokenizer"])
               or tokenizer_lib.CharTokenizer.from_text(texts["train"] + texts["val"]))
  writers = _writers(out, source, tokenizer, drop_first_separator=False)
  for split, writer in writers.items():
    if writer.wants(0):
      tokens = tokenizer.encode(texts[split])
      writer.append(tokens.astype(writer.dtype), [len(tokens)], 0)
  return Prepared(tokenizer, writers, {split: int(bool(texts[split])) for split in SPLITS})


def prepare_documents(out: str, source: dict, records: list[dict], workers: int) -> Prepared:
  """Tokenizes the documents of files or a Hugging Face dataset on `workers` processes."""
  streams = _streams(source)
  tokenizer = encoding.named_tokenizer(source["tokenizer"])
  with encoding.OrderedPool(workers) as pool:
    if tokenizer is None:
      tokenizer = _saved_char_tokenizer(out, records) or _char_tokenizer(source, streams, pool)
    separator = _separator(tokenizer)
    writers = _writers(out, source, tokenizer, drop_first_separator=tokenizer.kind == "char")
    task = encoding.EncodeTask(out, writers["train"].dtype.name, separator)
    documents = _encode(streams, source["val_fraction"], writers, pool, task)
  return Prepared(tokenizer, writers, documents)


def empty_split_message(source: dict, split: str, documents: dict) -> str:
  """Why a split has no tokens, and what to do."""
  kind, total = source["source"], documents["train"] + documents["val"]
  if kind in config_lib.TEXT_SOURCES:
    return f"the {split} split of --source={kind} is empty: change --val_fraction"
  where = (f"the Hugging Face dataset {source['name']}" if kind == "hf"
           else "the files of --input")
  if source["val_input"]:
    where = "the files of --val_input" if split == "val" else where
    return f"{where} hold no text: every {split} document is empty"
  if not total:
    return f"the corpus is empty: {where} hold no text (every document is empty)"
  if total == 1:
    return ("the corpus is a single document, and --val_fraction holds out whole documents: "
            "no fraction gives both a training and a validation split; "
            + _single_document_fix(source))
  if split == "val":
    return (f"none of the {total:,} documents fell in the validation split (--val_fraction="
            f"{source['val_fraction']} picks documents by a hash of their index): raise "
            "--val_fraction, give more documents, or pass --val_input=GLOB")
  return (f"all {total:,} documents fell in the validation split: lower --val_fraction, give "
          "more documents, or pass --val_input=GLOB")


def _single_document_fix(source: dict) -> str:
  if source["source"] == "hf":
    return "prepare a dataset with more documents"
  fix = "pass --val_input=GLOB (the validation text, in files of its own)"
  inputs = source["input"]
  if len(inputs) == 1 and documents_lib.is_plain_text(inputs[0]):
    fix += (f", or prepare --source=text --path={inputs[0]} instead (the last --val_fraction "
            "of its text is validation)")
  return fix


def fingerprint(out: str, source: dict, dtype) -> dict:
  """What a progress file must match to be resumed: the arguments, the saved tokenizer's
  bytes and the token type."""
  digest = _file_sha256(os.path.join(out, tokenizer_lib.FILENAME))
  return shard_writer.as_json({"source": source, "tokenizer_sha256": digest,
                               "dtype": np.dtype(dtype).name})


def _file_sha256(path: str) -> str | None:
  try:
    return shards.file_sha256(path)
  except OSError:
    return None


def _writers(out: str, source: dict, tokenizer, drop_first_separator: bool) -> dict:
  """Saves the tokenizer; a writer per split, going on from the finished shards."""
  tokenizer.save(out)
  dtype = shards.token_dtype(tokenizer.vocab_size)
  made_from = fingerprint(out, source, dtype)
  writers = {split: shard_writer.SplitWriter(
      out, split, dtype, source["shard_tokens"], made_from,
      shard_writer.find_resume(out, split, made_from, dtype), drop_first_separator)
             for split in SPLITS}
  kept = [f"{len(w.resume.shards)} {split}" for split, w in writers.items() if w.resume.shards]
  if kept:
    print(f"going on from the finished shards in {out}: {' and '.join(kept)}", file=sys.stderr,
          flush=True)
  return writers


def _streams(source: dict) -> list:
  """(documents, split) pairs; split None: each document's split is drawn from its index."""
  field = source["text_field"]
  if source["source"] == "hf":
    return [(documents_lib.HubDocuments(source["name"], source["path"], field), None)]
  train = documents_lib.FileDocuments(source["input"], field)
  if source["val_input"]:
    return [(train, "train"), (documents_lib.FileDocuments(source["val_input"], field), "val")]
  return [(train, None)]


def _total_bytes(streams) -> int | None:
  sizes = [documents.total_bytes for documents, _ in streams]
  return None if None in sizes else sum(sizes)


def _separator(tokenizer) -> int:
  """The token before each document: end-of-text, or a newline for char."""
  if tokenizer.kind == "char":
    if "\n" not in tokenizer.chars:
      raise UserError("the char tokenizer has no newline, which separates documents: prepare "
                      "with --tokenizer=char to make the vocabulary from the corpus")
    return int(tokenizer.encode("\n")[0])
  if tokenizer.end_of_text_id is None:
    raise UserError(f"the tokenizer has neither a {tokenizer_lib.BPETokenizer.END_OF_TEXT} token "
                    "nor an eos_token (tokenizer_config.json), one of which goes before each "
                    "document: pass a tokenizer that has one")
  return int(tokenizer.end_of_text_id)


def _saved_char_tokenizer(out: str, records: list[dict]):
  """The char tokenizer an unfinished prepare of these arguments saved, if it is there."""
  digest = _file_sha256(os.path.join(out, tokenizer_lib.FILENAME))
  if digest and any(r["fingerprint"]["tokenizer_sha256"] == digest for r in records):
    tokenizer = tokenizer_lib.load_tokenizer(out)
    if tokenizer.kind == "char":
      return tokenizer
  return None


def _char_tokenizer(source: dict, streams, pool) -> tokenizer_lib.CharTokenizer:
  """A first pass over all documents for their characters (and the newline separator)."""
  chars, count, read = {"\n"}, 0, 0
  progress = ProgressLine("reading the characters", _total_bytes(streams))
  try:
    for documents, _ in streams:
      batches = ((len(texts), (texts,)) for texts in _batches(documents))
      for number, found in pool.imap(encoding.chunk_characters, batches):
        chars.update(found)
        count += number
        progress.update(count, None, read + documents.bytes_read)
      read += documents.bytes_read
  finally:
    progress.close()
  if not count:
    raise UserError(empty_split_message(source, "train", {"train": 0, "val": 0}))
  return tokenizer_lib.CharTokenizer("".join(chars))


def _batches(documents):
  texts, size = [], 0
  for text in documents:
    texts.append(text)
    size += len(text)
    if size >= encoding.CHUNK_CHARS:
      yield texts
      texts, size = [], 0
  if texts:
    yield texts


@dataclasses.dataclass
class _Tally:
  """Documents read per split, tokens made, bytes of earlier streams; shown as progress."""
  progress: ProgressLine
  documents: dict
  tokens: int = 0
  bytes_before: int = 0

  def show(self, stream) -> None:
    self.progress.update(self.documents["train"] + self.documents["val"], self.tokens,
                         self.bytes_before + stream.bytes_read)


def _encode(streams, val_fraction, writers: dict, pool, task) -> dict:
  """Tokenizes the streams into the writers; returns each split's number of documents."""
  tally = _Tally(ProgressLine("tokenizing", _total_bytes(streams)), dict.fromkeys(SPLITS, 0))
  try:
    for documents, split in streams:
      chunks = _chunks(documents, split, val_fraction, writers, tally, task)
      for (in_val, firsts), (tokens, lengths) in pool.imap(encoding.encode_chunk, chunks):
        _append(writers, in_val, firsts, tokens, lengths)
        tally.tokens += len(tokens)
        tally.show(documents)
      tally.bytes_before += documents.bytes_read
  finally:
    tally.progress.close()
  return tally.documents


def _chunks(documents, split, val_fraction, writers, tally: _Tally, task):
  """((in_val, first document of each split), (task, texts)) for chunks of the documents
  still to tokenize; those in finished shards are counted but not sent."""
  texts, in_val, firsts, size = [], [], {}, 0
  for index, text in enumerate(documents):
    to = split or ("val" if documents_lib.held_out(index, val_fraction) else "train")
    number = tally.documents[to]
    tally.documents[to] += 1
    tally.show(documents)
    if not writers[to].wants(number):
      continue
    firsts.setdefault(to, number)
    texts.append(text)
    in_val.append(to == "val")
    size += len(text)
    if size >= encoding.CHUNK_CHARS:
      yield (np.array(in_val), firsts), (task, texts)
      texts, in_val, firsts, size = [], [], {}, 0
  if texts:
    yield (np.array(in_val), firsts), (task, texts)


def _append(writers: dict, in_val: np.ndarray, firsts: dict, tokens, lengths) -> None:
  """Gives each split's writer its documents of a chunk."""
  if len(firsts) == 1:
    (split, first), = firsts.items()
    writers[split].append(tokens, lengths, first)
    return
  for split, first in firsts.items():
    mine = in_val if split == "val" else ~in_val
    writers[split].append(tokens[np.repeat(mine, lengths)], lengths[mine], first)

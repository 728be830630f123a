"""Token arrays and the batches drawn from them.

A batch row's offset is a pure function of (seed, stream, step, row), where
row numbers the rows of the global batch: a counter-based hash, written once
over NumPy or TensorFlow ops. Resuming at step k therefore replays exactly the
batches a run would have seen, without any iterator state to save, and N
processes, each making its own rows, together make the batch one process would.
"""

import dataclasses
import hashlib
import importlib.util
from typing import Callable, Iterator, NamedTuple

import numpy as np

from jaxgpt.data import chat
from jaxgpt.data import shards
from jaxgpt.data import sources
from jaxgpt.data import tfhost
from jaxgpt.data.tokenizer import Tokenizer, build_tokenizer
from jaxgpt.errors import UserError

TRAIN_STREAM = 0
EVAL_STREAM = 1


# A split's tokens: an int32 array in memory, or token shards read lazily from disk; or
# chat conversations in rows (data.source=chat).
Tokens = np.ndarray | shards.TokenShards | chat.ChatRows


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Tokens
  val: Tokens
  tokenizer: Tokenizer


def build_dataset(config, tokenizer=None) -> Dataset:
  """Tokenizes `config.data` with `tokenizer` (a saved run's, or GPT-2's), or else with a
  new character tokenizer of the text; `data.source=tokens` reads prepared shards."""
  if config.data.source == "tokens":
    return _token_shards_dataset(config.data.path, config.model.block_size, tokenizer)
  if config.data.source == "chat":
    if tokenizer is None:
      raise UserError("data.source=chat needs a tokenizer with a chat template: pass "
                      "--config.init_from=<a chat model's folder or hub name>, or "
                      "--config.data.tokenizer=gpt2 --config.data.tokenizer_path=FOLDER of one")
    return Dataset(*chat.load_splits(config.data, tokenizer, config.model.block_size), tokenizer)
  train_text, val_text = sources.load_splits(config.data)
  if tokenizer is None:
    tokenizer = build_tokenizer(config.data.tokenizer, train_text + val_text)
  dataset = Dataset(tokenizer.encode(train_text), tokenizer.encode(val_text),
                    tokenizer)
  for name, tokens, fix in (
      ("train", dataset.train, "lower --config.data.val_fraction, or give more text"),
      ("val", dataset.val, "raise --config.data.val_fraction, or give more text")):
    _check_length(tokens, config.model.block_size, f"the {name} split", fix)
  return dataset


def _token_shards_dataset(directory: str, block_size: int, saved_tokenizer) -> Dataset:
  """The dataset `python -m jaxgpt.prepare` wrote: its shards checked, read lazily; its tokenizer,
  which must be a resumed run's own."""
  info = shards.read_dataset(directory)
  tokenizer = shards.dataset_tokenizer(directory, info)
  if saved_tokenizer is not None and _identity(saved_tokenizer) != _identity(tokenizer):
    raise UserError(
        f"the dataset at {directory} was tokenized with another tokenizer than this run's "
        f"({tokenizer.kind}, {tokenizer.vocab_size} ids, against the run's "
        f"{saved_tokenizer.kind}, {saved_tokenizer.vocab_size}): resume with the run's own "
        "dataset, or train on this one in a new --workdir")
  dataset = Dataset(shards.load_split(directory, info, "train"),
                    shards.load_split(directory, info, "val"), tokenizer)
  source = info.get("source")  # how prepare made it (a hand-written dataset.json may not say)
  val_fix = ("prepare it again with more text in --val_input"
             if isinstance(source, dict) and source.get("val_input")
             else "prepare it again with a larger --val_fraction or more text")
  for name, tokens, fix in (("train", dataset.train, "prepare it again from more text"),
                            ("val", dataset.val, val_fix)):
    _check_length(tokens, block_size, f"the {name} split of {directory}", fix)
  return dataset


def fingerprint(dataset: Dataset) -> str:
  """A short hash of the training and validation tokens (of the shards' checksums)."""
  digest = hashlib.sha256()
  for tokens in (dataset.train, dataset.val):
    if isinstance(tokens, shards.TokenShards):
      digest.update(tokens.checksums.encode())
    elif isinstance(tokens, chat.ChatRows):
      for array in (tokens.tokens, tokens.trained, tokens.segments):
        digest.update(np.ascontiguousarray(array).tobytes())
    else:
      digest.update(np.ascontiguousarray(tokens, np.int32).tobytes())
  return digest.hexdigest()[:16]


def _identity(tokenizer) -> str:
  return tokenizer.chars if tokenizer.kind == "char" else tokenizer.hf_json()


def _check_length(tokens: Tokens, block_size: int, what: str,
                  fix: str = "give more text") -> None:
  """A window of block_size + 1 tokens (the inputs and, one further on, the targets) fits."""
  if isinstance(tokens, chat.ChatRows):
    return  # any number of rows of block_size + 1
  if len(tokens) < block_size + 1:
    raise UserError(
        f"{what} has {len(tokens)} tokens, too short for model.block_size={block_size} (a "
        f"window is {block_size + 1} tokens): lower --config.model.block_size, or {fix}")
  if len(tokens) >= 2**32 and not isinstance(tokens, shards.TokenShards):
    raise UserError(
        f"{what} has {len(tokens)} tokens; at most 2**32-1 fit in memory: prepare it "
        "as token shards (python -m jaxgpt.prepare) and train with data.source=tokens")


class _Ops(NamedTuple):
  """The uint32 operations the hash needs, from NumPy or from TensorFlow."""
  to_uint32: Callable  # any integer, taken modulo 2**32
  xor: Callable
  shift_right: Callable
  multiply: Callable  # wraps modulo 2**32
  remainder: Callable


_NUMPY_OPS = _Ops(
    to_uint32=lambda x: np.asarray(x, np.int64).astype(np.uint32),
    xor=np.bitwise_xor,
    shift_right=np.right_shift,
    multiply=lambda x, c: np.multiply(x, np.uint32(c)),
    remainder=np.remainder)


def _tf_ops(tf) -> _Ops:
  return _Ops(
      to_uint32=lambda x: tf.cast(tf.cast(x, tf.int64), tf.uint32),
      xor=tf.bitwise.bitwise_xor,
      shift_right=lambda x, n: tf.bitwise.right_shift(x, tf.constant(n, tf.uint32)),
      multiply=lambda x, c: tf.multiply(x, tf.constant(c, tf.uint32)),
      remainder=tf.math.floormod)


def _lowbias32(x, ops: _Ops):
  """Chris Wellons' lowbias32 integer hash."""
  x = ops.xor(x, ops.shift_right(x, 16))
  x = ops.multiply(x, 0x7feb352d)
  x = ops.xor(x, ops.shift_right(x, 15))
  x = ops.multiply(x, 0x846ca68b)
  return ops.xor(x, ops.shift_right(x, 16))


def row_ids(process_index: int, batch_size: int, process_count: int = 1,
            micro_batches: int = 1) -> np.ndarray:
  """The global row numbers of this process's `batch_size` rows.

  The trainer splits the local rows into `micro_batches` equal parts and puts
  each part after the same part of the processes before it; the global batch is
  then the same rows, in the same micro-batches, for any number of processes.
  """
  part = batch_size // micro_batches
  local = np.arange(batch_size, dtype=np.int64)
  ids = (local // part) * part * process_count + process_index * part + local % part
  return ids.astype(np.uint32)


def _offsets(ops: _Ops, num_offsets: int, seed, stream, step, rows):
  """Window starts in [0, num_offsets) for `rows`, chained so counters never cancel."""
  h = _lowbias32(ops.to_uint32(seed), ops)
  for counter in (stream, step, rows):
    h = _lowbias32(ops.xor(h, ops.to_uint32(counter)), ops)
  if num_offsets < 2**32:
    return ops.remainder(h, ops.to_uint32(num_offsets))
  # Corpora of 2**32 tokens or more (shards only, so NumPy only): a second hash gives the
  # low 32 bits of a 64-bit draw.
  low = _lowbias32(ops.xor(h, ops.to_uint32(0x9E3779B9)), ops)
  wide = (h.astype(np.uint64) << np.uint64(32)) | low.astype(np.uint64)
  return wide % np.uint64(num_offsets)


def _windows(tokens: Tokens, starts, length: int) -> np.ndarray:
  """int32 [len(starts), length]: the tokens from each start on."""
  starts = np.asarray(starts).astype(np.int64)
  if isinstance(tokens, shards.TokenShards):
    return tokens.windows(starts, length)
  return np.asarray(tokens, np.int32)[starts[:, None] + np.arange(length)]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The batches one process draws: its `batch_size` rows of `block_size` tokens, of the
  global batch of `process_count` processes split into `micro_batches` parts, from the
  stream `stream` of `seed`."""
  seed: int
  process_index: int
  batch_size: int
  block_size: int
  stream: int = TRAIN_STREAM
  process_count: int = 1
  micro_batches: int = 1

  def row_ids(self) -> np.ndarray:
    return row_ids(self.process_index, self.batch_size, self.process_count, self.micro_batches)


def get_batch(tokens: Tokens, spec: BatchSpec, step: int) -> tuple[np.ndarray, ...]:
  """This process's (inputs, targets) for `step`, both int32 [batch, block]; for chat rows
  (inputs, targets, segments), drawn a row at a time."""
  if isinstance(tokens, chat.ChatRows):
    rows = _offsets(_NUMPY_OPS, tokens.num_rows, spec.seed, spec.stream, step, spec.row_ids())
    return tokens.batch(rows.astype(np.int64))
  _check_length(tokens, spec.block_size, "the token array")
  starts = _offsets(_NUMPY_OPS, len(tokens) - spec.block_size, spec.seed, spec.stream, step,
                    spec.row_ids())
  windows = _windows(tokens, starts, spec.block_size + 1)
  return windows[:, :-1], windows[:, 1:]


def eval_batches(tokens, seed, process_index, batch_size, block_size,
                 num_batches, process_count: int = 1) -> list[tuple[np.ndarray, ...]]:
  """The fixed evaluation set: the same batches at every evaluation."""
  spec = BatchSpec(seed, process_index, batch_size, block_size, stream=EVAL_STREAM,
                   process_count=process_count)
  return [get_batch(tokens, spec, i) for i in range(num_batches)]


def _tensorflow_installed() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


class BatchStream:
  """Local batches for steps start_step, start_step+1, ..., end_step-1.

  Uses tf.data (batches made ahead on a background thread) when TensorFlow is
  installed, else NumPy; both give bit-identical batches. Chat rows use NumPy.
  """

  def __init__(self, tokens, seed, process_index, batch_size, block_size,
               start_step, end_step, use_tf: bool | None = None,
               process_count: int = 1, micro_batches: int = 1):
    _check_length(tokens, block_size, "the token array")
    in_memory = not isinstance(tokens, (shards.TokenShards, chat.ChatRows))
    self._tokens = np.asarray(tokens, np.int32) if in_memory else tokens
    self._spec = BatchSpec(seed, process_index, batch_size, block_size,
                           process_count=process_count, micro_batches=micro_batches)
    self._start_step, self._end_step = start_step, end_step
    self._use_tf = _tensorflow_installed() if use_tf is None else use_tf
    self._use_tf &= not isinstance(tokens, chat.ChatRows)

  @property
  def uses_tf(self) -> bool:
    return self._use_tf

  def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
    if self._use_tf:
      return self._tf_batches()
    return self._numpy_batches()

  def _numpy_batches(self):
    for step in range(self._start_step, self._end_step):
      yield get_batch(self._tokens, self._spec, step)

  def _tf_batches(self):
    tf = tfhost.import_tensorflow()
    if isinstance(self._tokens, shards.TokenShards):
      return self._tf_batches_from_shards(tf)
    tokens = tf.constant(self._tokens)
    ops = _tf_ops(tf)
    spec = self._spec
    rows = tf.constant(spec.row_ids())
    window = tf.range(spec.block_size + 1, dtype=tf.int64)

    @tf.autograph.experimental.do_not_convert
    def make_batch(step):
      starts = _offsets(ops, len(self._tokens) - spec.block_size, spec.seed, spec.stream, step,
                        rows)
      windows = tf.gather(tokens, tf.cast(starts, tf.int64)[:, None] + window)
      return windows[:, :-1], windows[:, 1:]

    return self._tf_steps(tf).map(make_batch).prefetch(2).as_numpy_iterator()

  def _tf_batches_from_shards(self, tf):
    """Memory-mapped shards have no TensorFlow form: tf.data runs the NumPy batch function
    on its background thread, ahead of the step."""
    shape = (self._spec.batch_size, self._spec.block_size)
    failures = []  # a UserError reaches the loop wrapped in TensorFlow's error: keep it

    def numpy_batch(step):
      try:
        return get_batch(self._tokens, self._spec, int(step))
      except UserError as e:
        failures.append(e)
        raise

    @tf.autograph.experimental.do_not_convert
    def make_batch(step):
      x, y = tf.numpy_function(numpy_batch, [step], (tf.int32, tf.int32), stateful=False)
      return tf.ensure_shape(x, shape), tf.ensure_shape(y, shape)

    batches = self._tf_steps(tf).map(make_batch).prefetch(2).as_numpy_iterator()
    # Looked up now: a stream left unfinished is closed at exit, after TensorFlow's modules
    # are torn down, and `tf.errors` would then be None.
    op_error = tf.errors.OpError
    try:
      yield from batches
    except op_error:
      if failures:
        raise failures[0] from None
      raise

  def _tf_steps(self, tf):
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False  # Its tuning threads cost more than they give here.
    options.experimental_optimization.apply_default_optimizations = False
    return tf.data.Dataset.range(self._start_step, self._end_step).with_options(options)

"""Tests for jaxgpt.data.pipeline."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from jaxgpt.data import BatchSpec, BatchStream, build_dataset, eval_batches, get_batch
from jaxgpt.data.tokenizer import CharTokenizer
from jaxgpt.errors import UserError

TOKENS = np.arange(1000, dtype=np.int32)  # token == position: offsets are visible


def config(path, block_size=8):
  return ml_collections.ConfigDict({
      "data": {"source": "text", "path": str(path), "tfds_name": "",
               "val_fraction": 0.1, "tokenizer": "char"},
      "model": {"block_size": block_size},
  })


def test_targets_are_inputs_shifted():
  x, y = get_batch(TOKENS, BatchSpec(seed=0, process_index=0, batch_size=5, block_size=16), 3)
  assert x.shape == y.shape == (5, 16)
  assert x.dtype == y.dtype == np.int32
  np.testing.assert_array_equal(y, x + 1)
  np.testing.assert_array_equal(x[:, 1:], x[:, :1] + np.arange(1, 16))


def test_batches_are_a_pure_function():
  spec = BatchSpec(seed=1, process_index=0, batch_size=8, block_size=16)
  first, _ = get_batch(TOKENS, spec, 7)
  np.testing.assert_array_equal(first, get_batch(TOKENS, spec, 7)[0])
  assert not np.array_equal(first[:, 0], get_batch(TOKENS, spec, 8)[0][:, 0])
  for change in ({"process_index": 1}, {"seed": 2}, {"stream": 1}):
    other, _ = get_batch(TOKENS, dataclasses.replace(spec, **change), 7)
    assert not np.array_equal(first[:, 0], other[:, 0]), change


def test_offsets_stay_in_bounds():
  tokens = np.arange(20, dtype=np.int32)
  for step in range(50):
    x, y = get_batch(tokens, BatchSpec(seed=3, process_index=0, batch_size=16, block_size=18),
                     step)
    assert x.min() >= 0 and y.max() <= 19


def test_eval_batches_are_fixed_and_differ_from_training():
  first = eval_batches(TOKENS, 0, 0, 4, 8, num_batches=3)
  again = eval_batches(TOKENS, 0, 0, 4, 8, num_batches=3)
  assert len(first) == 3
  for (x1, _), (x2, _) in zip(first, again):
    np.testing.assert_array_equal(x1, x2)
  assert not np.array_equal(first[0][0], get_batch(TOKENS, BatchSpec(0, 0, 4, 8), 0)[0])


def assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for (x, y), (x_expected, y_expected) in zip(got, expected):
    np.testing.assert_array_equal(x, x_expected)
    np.testing.assert_array_equal(y, y_expected)
    assert x.dtype == np.int32


def test_numpy_stream_equals_get_batch():
  stream = BatchStream(TOKENS, 5, 1, 4, 8, start_step=2, end_step=6, use_tf=False)
  assert not stream.uses_tf
  expected = [get_batch(TOKENS, BatchSpec(5, 1, 4, 8), step) for step in range(2, 6)]
  assert_same_batches(list(stream), expected)


@pytest.mark.slow
@pytest.mark.parametrize("seed, start_step", [(0, 0), (-1, 2**33 - 2), (2**40 + 3, 5)])
def test_tf_stream_equals_numpy_stream(seed, start_step):
  pytest.importorskip("tensorflow")
  args = (TOKENS, seed, 3, 6, 8, start_step, start_step + 4)
  stream = BatchStream(*args, use_tf=True)
  assert stream.uses_tf
  assert_same_batches(list(stream), list(BatchStream(*args, use_tf=False)))


def test_resumed_stream_equals_tail():
  full = list(BatchStream(TOKENS, 0, 0, 4, 8, 0, 6, use_tf=False))
  resumed = list(BatchStream(TOKENS, 0, 0, 4, 8, 3, 6, use_tf=False))
  assert_same_batches(resumed, full[3:])


def test_build_dataset(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text("to be or not to be " * 10, encoding="utf-8")
  dataset = build_dataset(config(path))
  assert dataset.tokenizer.decode(dataset.train) + dataset.tokenizer.decode(
      dataset.val) == path.read_text(encoding="utf-8")
  assert len(dataset.val) == 19 and dataset.train.dtype == np.int32


def test_build_dataset_reuses_tokenizer(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text("ab" * 100, encoding="utf-8")
  tokenizer = CharTokenizer("abc")
  assert build_dataset(config(path), tokenizer=tokenizer).tokenizer is tokenizer
  with pytest.raises(UserError, match="'b'"):
    build_dataset(config(path), tokenizer=CharTokenizer("a"))


def test_split_too_short(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text("x" * 100, encoding="utf-8")  # 90 characters to train on, 10 held out
  with pytest.raises(UserError, match="val split.*block_size=16.*raise --config.data.val_f"):
    build_dataset(config(path, block_size=16))
  with pytest.raises(UserError, match="train split.*lower --config.data.val_fraction"):
    build_dataset(config(path, block_size=95))
  assert len(build_dataset(config(path, block_size=9)).val) == 10  # exactly one window


def test_too_few_tokens_for_get_batch():
  with pytest.raises(UserError, match="too short"):
    get_batch(np.arange(8, dtype=np.int32), BatchSpec(0, 0, 2, block_size=8), 0)
  x, y = get_batch(np.arange(9, dtype=np.int32), BatchSpec(0, 0, 2, block_size=8), 0)
  np.testing.assert_array_equal(x, [np.arange(8)] * 2)
  np.testing.assert_array_equal(y, [np.arange(1, 9)] * 2)

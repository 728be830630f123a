"""Token shards: the format, the lazy reader, batches from shards, and training on them."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from jaxgpt.data import BatchSpec, BatchStream, get_batch, pipeline, shards
from jaxgpt.errors import UserError
from jaxgpt.trainer import Trainer

from helpers import assert_clean_error, logged_losses, run, text_config, tiny_config



@pytest.mark.parametrize("dtype, magic, version", [(np.uint16, 20240520, 1),
                                                   (np.uint32, 20240801, 7)])
def test_a_shard_is_llm_c_format_and_reads_back(tmp_path, dtype, magic, version):
  tokens = np.array([0, 1, 65535, 7], np.int64) if dtype == np.uint16 else \
      np.array([0, 70000, 2**31], np.int64)
  path = str(tmp_path / "a.bin")
  entry = shards.write_shard(path, tokens, dtype)
  assert entry["file"] == "a.bin" and entry["tokens"] == len(tokens)
  header = np.fromfile(path, "<i4", count=256)
  assert (header[0], header[1], header[2]) == (magic, version, len(tokens))
  assert not header[3:].any()
  assert os.path.getsize(path) == 1024 + len(tokens) * np.dtype(dtype).itemsize
  np.testing.assert_array_equal(shards.open_shard(path, len(tokens)), tokens)
  assert os.listdir(tmp_path) == ["a.bin"]


def test_token_dtype_fits_the_vocabulary():
  assert shards.token_dtype(50257) == np.uint16
  assert shards.token_dtype(2**16) == np.uint16
  assert shards.token_dtype(2**16 + 1) == np.uint32


@pytest.mark.parametrize("damage, words", [
    (lambda p: open(p, "r+b").truncate(1030), ["truncated"]),
    (lambda p: open(p, "r+b").truncate(100), ["truncated"]),
    (lambda p: open(p, "r+b").write(b"\0\0\0\0"), ["magic"]),
    (os.remove, ["cannot be read"]),
])
def test_a_damaged_shard_is_named(tmp_path, damage, words):
  path = str(tmp_path / "train_000003.bin")
  shards.write_shard(path, np.arange(100), np.uint16)
  damage(path)
  with pytest.raises(UserError) as error:
    shards.open_shard(path, 100)
  assert "train_000003.bin" in str(error.value)
  for word in words:
    assert word in str(error.value)


def test_a_count_that_differs_from_dataset_json_is_named(tmp_path):
  path = str(tmp_path / "s.bin")
  shards.write_shard(path, np.arange(10), np.uint16)
  with pytest.raises(UserError, match="lists 11"):
    shards.open_shard(path, 11)


def _split_into_shards(tmp_path, tokens, sizes):
  pieces, start = [], 0
  for i, size in enumerate(sizes):
    path = str(tmp_path / f"{i}.bin")
    shards.write_shard(path, tokens[start:start + size], np.uint16)
    pieces.append(shards.open_shard(path))
    start += size
  return shards.TokenShards(pieces)


def test_windows_cross_shard_ends(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 500, 1000)
  lazy = _split_into_shards(tmp_path, tokens, [3, 0, 400, 1, 596])
  assert len(lazy) == 1000
  starts = np.array([0, 1, 2, 3, 398, 402, 403, 1000 - 50, 500])
  expected = tokens[starts[:, None] + np.arange(50)]
  got = lazy.windows(starts, 50)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, expected)


def test_a_shard_damaged_during_training_is_named(tmp_path):
  lazy = _split_into_shards(tmp_path, np.arange(1000), [600, 400])
  with open(tmp_path / "1.bin", "r+b") as f:
    f.truncate(1024 + 20)  # 10 of its 400 tokens left
  lazy.windows(np.array([10]), 50)  # the first shard still reads
  with pytest.raises(UserError, match=r"1\.bin cannot be read .*shorter"):
    lazy.windows(np.array([590]), 50)


@pytest.mark.parametrize("use_tf", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_batch_stream_names_a_damaged_shard(tmp_path, use_tf):
  if use_tf:
    pytest.importorskip("tensorflow")
  lazy = _split_into_shards(tmp_path, np.arange(1000), [500, 500])
  with open(tmp_path / "0.bin", "r+b") as f:
    f.truncate(1024)
  with pytest.raises(UserError, match=r"0\.bin cannot be read"):
    list(BatchStream(lazy, 0, 0, 8, 16, 0, 3, use_tf=use_tf))


def test_batches_from_shards_equal_batches_from_memory(tmp_path):
  tokens = np.random.default_rng(1).integers(0, 60, 5000).astype(np.int32)
  lazy = _split_into_shards(tmp_path, tokens, [1000, 2500, 1500])
  for step in (0, 7):
    spec = BatchSpec(3, 1, 8, 32, process_count=2)
    for got, expected in zip(get_batch(lazy, spec, step), get_batch(tokens, spec, step)):
      np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_tf_data_and_numpy_give_the_same_batches_from_shards(tmp_path):
  pytest.importorskip("tensorflow")
  tokens = np.random.default_rng(2).integers(0, 60, 3000).astype(np.int32)
  lazy = _split_into_shards(tmp_path, tokens, [1000, 2000])
  args = (lazy, 5, 0, 4, 16, 3, 8)
  numpy_batches = list(BatchStream(*args, use_tf=False))
  tf_batches = list(BatchStream(*args, use_tf=True))
  assert len(tf_batches) == 5
  for (x1, y1), (x2, y2) in zip(numpy_batches, tf_batches):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_offsets_of_corpora_past_2_to_the_32_tokens():
  rows = np.arange(4096, dtype=np.uint32)
  num_offsets = 3 * 2**32
  starts = pipeline._offsets(pipeline._NUMPY_OPS, num_offsets, 0, 0, 5, rows)  # pylint: disable=protected-access
  assert starts.dtype == np.uint64 and starts.max() < num_offsets
  assert (starts >= 2**32).mean() > 0.5, "the high part of the corpus is drawn from"
  again = pipeline._offsets(pipeline._NUMPY_OPS, num_offsets, 0, 0, 5, rows)  # pylint: disable=protected-access
  np.testing.assert_array_equal(starts, again)


@pytest.mark.slow
def test_training_on_shards_equals_training_on_the_text(text_file, token_dir, tmp_path):
  Trainer(text_config(text_file), str(tmp_path / "text")).run()
  from_shards = text_config(text_file)
  from_shards.data.update(source="tokens", path=token_dir)
  Trainer(from_shards, str(tmp_path / "shards")).run()
  assert logged_losses(tmp_path / "shards") == logged_losses(tmp_path / "text")
  assert logged_losses(tmp_path / "shards", "val_loss") == logged_losses(tmp_path / "text", "val_loss")
  with open(tmp_path / "shards" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["data"]["tokenizer"] == "char"


@pytest.mark.slow
def test_the_plays_prepared_train_like_the_plays(tmp_path):
  """`prepare --source=shakespeare_plays --tokenizer=char` then data.source=tokens: the
  same batches, so the same losses, as data.source=shakespeare_plays."""
  run("prepare", "--source=shakespeare_plays", "--tokenizer=char", f"--out={tmp_path / 'plays'}",
      "--shard_tokens=1000000")
  assert len(shards.read_dataset(tmp_path / "plays")["splits"]["train"]) > 1
  plays = tiny_config(train=dict(max_steps=6, log_every=1, eval_every=6))
  prepared = plays.copy_and_resolve_references()  # before the run sets data.fingerprint
  prepared.data.update(source="tokens", path=str(tmp_path / "plays"))
  Trainer(plays, str(tmp_path / "from_plays")).run()
  Trainer(prepared, str(tmp_path / "from_tokens")).run()
  assert logged_losses(tmp_path / "from_tokens") == logged_losses(tmp_path / "from_plays")
  assert logged_losses(tmp_path / "from_tokens", "val_loss") == logged_losses(tmp_path / "from_plays",
                                                                  "val_loss")


@pytest.mark.slow
def test_resuming_on_a_dataset_with_another_tokenizer_is_refused(text_file, token_dir, tmp_path):
  c = tiny_config(data=dict(source="tokens", path=token_dir), train=dict(max_steps=5))
  Trainer(c, str(tmp_path / "run")).run()
  other = write_other_dataset(tmp_path / "other")
  c.data.path = other
  with pytest.raises(UserError, match="another tokenizer"):
    Trainer(c, str(tmp_path / "run"))


def write_other_dataset(directory):
  from conftest import write_token_dataset  # pylint: disable=g-import-not-at-top
  return write_token_dataset("xyz " * 2000, directory)


def _train_on(token_folder, workdir, *args):
  return run("train", "--config.data.source=tokens", f"--config.data.path={token_folder}",
             f"--workdir={workdir}", "--config.model.n_layer=1", "--config.model.n_embd=32",
             "--config.model.n_head=2", "--config.model.block_size=16",
             "--config.train.batch_size=8", "--config.train.max_steps=2",
             "--config.train.eval_steps=1", "--config.train.sample_tokens=0",
             "--config.data.pipeline=numpy", *args, check=False)


@pytest.mark.slow
def test_resuming_on_the_same_tokens_in_other_shards_says_the_shards_differ(text_file, tmp_path):
  """The batches are drawn from the shards, so other shards are other data even with the same
  tokens; the refusal says so rather than only that the data differs."""
  from conftest import write_token_dataset  # pylint: disable=g-import-not-at-top
  text = open(text_file, encoding="utf-8").read()
  first = write_token_dataset(text, tmp_path / "first")
  resharded = write_token_dataset(text, tmp_path / "resharded", shard_chars=3000)
  assert _train_on(first, tmp_path / "run").returncode == 0
  assert_clean_error(_train_on(resharded, tmp_path / "run", "--config.train.max_steps=4"),
                     "training data differs", "same data only as the same shards")


@pytest.mark.slow
def test_bad_token_folders_are_one_line(token_dir, tmp_path):
  assert_clean_error(_train_on(tmp_path, tmp_path / "a"), "dataset.json", "jaxgpt.prepare")
  damaged = tmp_path / "damaged"
  shutil.copytree(token_dir, damaged)
  with open(damaged / "train_000001.bin", "r+b") as f:
    f.truncate(2000)
  assert_clean_error(_train_on(damaged, tmp_path / "b"), "train_000001.bin", "truncated")
  assert_clean_error(_train_on(token_dir, tmp_path / "c", "--config.model.block_size=2000"),
                     "too short", "block_size")
  assert_clean_error(run("train", "--config.data.source=tokens", f"--workdir={tmp_path / 'd'}",
                         check=False), "data.path")


def _llm_c_shard(path, tokens):
  """A shard as llm.c's write_datafile writes it (GPT-2 ids, uint16)."""
  header = np.zeros(256, np.int32)
  header[:3] = (20240520, 1, len(tokens))
  with open(path, "wb") as f:
    f.write(header.tobytes())
    f.write(np.asarray(tokens, np.uint16).tobytes())


def _llm_c_dataset(folder):
  """llm.c-style shards of a small BPE's ids, Hugging Face's tokenizer.json as it is, and a
  dataset.json written by hand from the README's schema: returns that dataset.json."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from helpers import LINES  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES] * 20, vocab_size=300, min_frequency=1,
                          special_tokens=["<|endoftext|>"], show_progress=False)
  bpe.save(str(folder / "tokenizer.json"))
  ids = bpe.encode(LINES * 40).ids
  splits = {"train": [], "val": []}
  for split, name, part in (("train", "fineweb_train_000001.bin", ids[:3000]),
                            ("train", "fineweb_train_000002.bin", ids[3000:-500]),
                            ("val", "fineweb_val_000000.bin", ids[-500:])):
    _llm_c_shard(folder / name, part)
    splits[split].append({"file": name, "tokens": len(part),
                          "sha256": shards.file_sha256(str(folder / name))})
  info = {"format": "jaxgpt-tokens", "version": 1, "vocab_size": bpe.get_vocab_size(),
          "splits": splits}
  (folder / "dataset.json").write_text(json.dumps(info))
  return info


@pytest.mark.slow
def test_a_hand_written_llm_c_dataset_trains_and_each_missing_key_is_named(tmp_path):
  folder = tmp_path / "llmc"
  info = _llm_c_dataset(folder)
  trained = _train_on(folder, tmp_path / "run")
  assert trained.returncode == 0, trained.stderr
  assert "val_loss" in (tmp_path / "run" / "metrics.jsonl").read_text()
  removals = [("format",), ("version",), ("vocab_size",), ("splits",), ("splits", "val"),
              ("splits", "train", 1, "file"), ("splits", "train", 0, "tokens"),
              ("splits", "val", 0, "sha256")]
  for keys in removals:
    broken = json.loads(json.dumps(info))
    parent = broken
    for key in keys[:-1]:
      parent = parent[key]
    del parent[keys[-1]]
    (folder / "dataset.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match=f'"{keys[-1]}"') as error:
      shards.read_dataset(str(folder))
    assert "README" in str(error.value)
  assert_clean_error(_train_on(folder, tmp_path / "run2"), "dataset.json", '"sha256"')


def test_ids_past_the_vocabulary_are_named_where_batches_are_read(tmp_path):
  tokens = np.arange(100) % 50
  tokens[70] = 60
  shards.write_shard(str(tmp_path / "0.bin"), tokens, np.uint16)
  lazy = shards.TokenShards([shards.open_shard(str(tmp_path / "0.bin"))], vocab_size=50)
  lazy.windows(np.array([0]), 60)
  with pytest.raises(UserError, match=r"0\.bin holds id 60, past the vocabulary's 50 ids"):
    lazy.windows(np.array([40]), 40)
  with pytest.raises(UserError, match=r"0\.bin holds id 60"):
    list(BatchStream(lazy, 0, 0, 8, 16, 0, 3, use_tf=False))


def _tokens_config(folder):
  return tiny_config(data=dict(source="tokens", path=str(folder)))


def test_a_tokenizer_that_is_not_the_datasets_is_refused_at_start(token_dir, tmp_path):
  from jaxgpt.data import CharTokenizer  # pylint: disable=g-import-not-at-top
  swapped = tmp_path / "swapped"
  shutil.copytree(token_dir, swapped)
  CharTokenizer("abc").save(str(swapped))
  with pytest.raises(UserError, match=r"tokenizer.json has 3 ids but dataset.json says"):
    pipeline.build_dataset(_tokens_config(swapped))


def test_a_token_folder_says_what_it_lacks(token_dir, tmp_path):
  no_tokenizer = tmp_path / "no_tokenizer"
  shutil.copytree(token_dir, no_tokenizer)
  os.remove(no_tokenizer / "tokenizer.json")
  with pytest.raises(UserError, match=r"no_tokenizer has no tokenizer.json, the tokenizer its "
                     r"shards were made with.*README"):
    pipeline.build_dataset(_tokens_config(no_tokenizer))
  info = json.loads((no_tokenizer / "dataset.json").read_text())
  del info["format"]
  (no_tokenizer / "dataset.json").write_text(json.dumps(info))
  with pytest.raises(UserError, match=r'has no "format" \("jaxgpt-tokens"\).*README'):
    pipeline.build_dataset(_tokens_config(no_tokenizer))


def test_a_file_for_the_dataset_folder_is_named_a_file(text_file):
  with pytest.raises(UserError, match=r"plays.txt is a file, not a folder of token shards: "
                     r"pass the folder .*--out=DIR.*data.source=text$"):
    pipeline.build_dataset(_tokens_config(text_file))


def _valid_dataset_json():
  shard = {"file": "train_000000.bin", "tokens": 10, "sha256": "0" * 64}
  return {"format": "jaxgpt-tokens", "version": 1, "vocab_size": 60,
          "splits": {"train": [shard], "val": [dict(shard, file="val_000000.bin")]}}


@pytest.mark.parametrize("key, value, words", [
    ("tokens", "37953", ['has "tokens": "37953" in "splits"."train"[0], not',
                         "an integer of 0 or more"]),
    ("tokens", -5, ['has "tokens": -5 in', "an integer of 0 or more"]),
    ("file", "../plays.txt", ['has "file": "../plays.txt" in', "in the dataset folder"]),
    ("file", "..", ['has "file": ".." in', "in the dataset folder"]),
    ("sha256", "abc", ['has "sha256": "abc" in', "as sha256sum prints it"]),
])
def test_a_mistyped_key_says_what_is_wrong_with_its_value(tmp_path, key, value, words):
  info = _valid_dataset_json()
  shards.check_schema(info, "dataset.json")
  info["splits"]["train"][0][key] = value
  (tmp_path / "dataset.json").write_text(json.dumps(info))
  with pytest.raises(UserError) as error:
    shards.read_dataset(str(tmp_path))
  for word in words + ["README"]:
    assert word in str(error.value)
  assert "has no" not in str(error.value)


def test_a_mistyped_top_level_key_shows_its_value():
  for key, value, shown in (("vocab_size", "60", '"vocab_size": "60", not'),
                            ("version", True, '"version": true, not 1'),
                            ("splits", [1] * 30, '"splits": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, '
                             '..., not an object')):  # a long value cut short
    info = dict(_valid_dataset_json(), **{key: value})
    with pytest.raises(UserError, match=re.escape(shown)):
      shards.check_schema(info, "dataset.json")

"""Tests run on CPU with 8 simulated devices; each test picks the devices its mesh uses."""

import os
import sys
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
# One persistent compilation cache for the whole session, shared with the commands the tests
# start: many tests compile the same small programs, and reading one back is much faster.
_CACHE = tempfile.mkdtemp(prefix="jaxgpt-test-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def require_transformers():
  """transformers (with PyTorch) for the parity tests. CI installs it (.ci/run) and sets
  JAXGPT_REQUIRE_TRANSFORMERS=1, so there these tests fail rather than skip without it."""
  if os.environ.get("JAXGPT_REQUIRE_TRANSFORMERS"):
    import transformers  # pylint: disable=g-import-not-at-top
    return transformers
  return pytest.importorskip("transformers")


def tiny_config(**model):
  """A config small enough to train in a test: 2 layers, 32 wide, block 16."""
  c = config_lib.base_config()
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0, vocab_multiple=8)
  c.model.update(**model)
  c.train.update(batch_size=8, max_steps=10, warmup_steps=2, eval_every=5, eval_steps=2,
                 log_every=5, checkpoint_every=5, sample_tokens=0)
  c.data.pipeline = "numpy"
  return c


LINES = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
         "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
         "MERCUTIO:\nA plague o' both your houses!\n\n")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  """A small plain-text file of speeches, for runs with data.source=text."""
  path = tmp_path_factory.mktemp("data") / "plays.txt"
  path.write_text(LINES * 60, encoding="utf-8")
  return str(path)


@pytest.fixture
def tiny():
  return tiny_config()


def write_token_dataset(text: str, directory, val_fraction=0.1, shard_chars=2000) -> str:
  """The token folder `python -m jaxgpt.prepare` makes of `text`, split as data.source=text
  splits it, each split in shards of `shard_chars` characters."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxgpt.data import CharTokenizer, shards  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  tokenizer = CharTokenizer.from_text(text)
  cut = int(len(text) * (1 - val_fraction))
  splits = {}
  for split, part in (("train", text[:cut]), ("val", text[cut:])):
    tokens = tokenizer.encode(part)
    pieces = [tokens[i:i + shard_chars] for i in range(0, len(tokens), shard_chars)]
    splits[split] = [shards.write_shard(os.path.join(directory, f"{split}_{i:06d}.bin"), piece,
                                        shards.token_dtype(tokenizer.vocab_size))
                     for i, piece in enumerate(pieces)]
  tokenizer.save(str(directory))
  info = {"format": shards.FORMAT, "version": shards.FORMAT_VERSION, "tokenizer": "char",
          "vocab_size": tokenizer.vocab_size, "end_of_text_id": None, "dtype": "uint16",
          "source": {}, "splits": splits, "documents": {"train": 1, "val": 1}}
  with open(os.path.join(directory, shards.DATASET_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f)
  return str(directory)


@pytest.fixture(scope="session")
def token_dir(text_file, tmp_path_factory):
  """text_file as token shards, split and tokenized as data.source=text does."""
  with open(text_file, encoding="utf-8") as f:
    return write_token_dataset(f.read(), tmp_path_factory.mktemp("tokens"))

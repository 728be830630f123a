"""Tests run on CPU with 8 simulated devices; each test picks the devices its mesh uses."""

import atexit
import os
import shutil
import subprocess
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
# Implicit rank promotion (adding a (T, S) mask to a (B, H, T, S) array) hides shape bugs;
# here, and in the commands the tests start, it is an error.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
# One persistent compilation cache for the whole session, shared with pytest's worker
# processes (started after this runs, with this environment) and the commands the tests start:
# many tests compile the same small programs, and reading one back is much faster. The process
# that makes it removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxgpt-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # pylint: disable=wrong-import-position

from helpers import LINES, require_transformers, write_chat_tokenizer, write_token_dataset  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  """A small plain-text file of speeches, for runs with data.source=text."""
  path = tmp_path_factory.mktemp("data") / "plays.txt"
  path.write_text(LINES * 60, encoding="utf-8")
  return str(path)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
  """transformers' GPT-2 (2 layers, 32 wide, 64 positions) with a BPE trained on LINES."""
  transformers = require_transformers()
  torch = pytest.importorskip("torch")
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES] * 20, vocab_size=300, min_frequency=1,
                          special_tokens=["<|endoftext|>"], show_progress=False)
  tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer)  # pylint: disable=protected-access
  end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  config = transformers.GPT2Config(
      vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
      bos_token_id=end, eos_token_id=end, initializer_range=0.3)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config)
  folder = str(tmp_path_factory.mktemp("gpt2"))
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


@pytest.fixture(scope="session")
def token_dir(text_file, tmp_path_factory):
  """text_file as token shards, split and tokenized as data.source=text does."""
  with open(text_file, encoding="utf-8") as f:
    return write_token_dataset(f.read(), tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def small_disk(tmp_path):
  """A 64 MB filesystem of its own (tmpfs), which a test may fill or make read-only."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
  try:
    yield disk
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.fixture(scope="session")
def chat_tokenizer_folder(tmp_path_factory):
  """A Hugging Face tokenizer folder with a ChatML chat template (helpers.write_chat_tokenizer)."""
  return write_chat_tokenizer(tmp_path_factory.mktemp("chat_tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(chat_tokenizer_folder):
  """chat_tokenizer_folder's tokenizer, as jaxgpt reads it."""
  from jaxgpt.data import BPETokenizer  # pylint: disable=g-import-not-at-top
  return BPETokenizer.from_folder(chat_tokenizer_folder)

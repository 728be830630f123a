"""Tests run on CPU with 8 simulated devices; each test picks the devices its mesh uses."""

import os
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
# Implicit rank promotion (adding a (T, S) mask to a (B, H, T, S) array) hides shape bugs;
# here, and in the commands the tests start, it is an error.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
# One persistent compilation cache for the whole session, shared with the commands the tests
# start: many tests compile the same small programs, and reading one back is much faster.
_CACHE = tempfile.mkdtemp(prefix="jaxgpt-test-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # pylint: disable=wrong-import-position

from helpers import LINES, tiny_config, write_token_dataset  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
  """A small plain-text file of speeches, for runs with data.source=text."""
  path = tmp_path_factory.mktemp("data") / "plays.txt"
  path.write_text(LINES * 60, encoding="utf-8")
  return str(path)


@pytest.fixture
def tiny():
  return tiny_config()


@pytest.fixture(scope="session")
def token_dir(text_file, tmp_path_factory):
  """text_file as token shards, split and tokenized as data.source=text does."""
  with open(text_file, encoding="utf-8") as f:
    return write_token_dataset(f.read(), tmp_path_factory.mktemp("tokens"))

"""Tests for jaxgpt.data.tokenizer."""

import json

import numpy as np
import pytest

from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.data.tokenizer import CharTokenizer, build_tokenizer, load_tokenizer
from jaxgpt.errors import UserError


def test_round_trip():
  tok = CharTokenizer.from_text("hello, world\n")
  assert tok.vocab_size == len(set("hello, world\n"))
  ids = tok.encode("world hello")
  assert ids.dtype == np.int32
  assert tok.decode(ids) == "world hello"


def test_ids_are_sorted_character_indices():
  tok = CharTokenizer("cab")
  assert tok.encode("abc").tolist() == [0, 1, 2]


def test_unknown_char_names_char_and_position():
  tok = CharTokenizer.from_text("abc")
  with pytest.raises(UserError, match=r"'Z' at position 2.*training text"):
    tok.encode("abZc")


def test_decode_skips_padded_ids():
  tok = CharTokenizer.from_text("ab")
  assert tok.decode([0, 7, 1, 2]) == "ab"


def test_save_load_round_trip(tmp_path):
  tok = CharTokenizer.from_text("To be, or not to be?\n")
  tok.save(str(tmp_path))
  assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == "char"
  loaded = load_tokenizer(str(tmp_path))
  assert loaded.chars == tok.chars
  assert loaded.encode("not be").tolist() == tok.encode("not be").tolist()
  assert not list(tmp_path.glob("*.tmp"))


def test_load_missing_file(tmp_path):
  with pytest.raises(UserError, match="no tokenizer"):
    load_tokenizer(str(tmp_path))


def test_load_unknown_kind(tmp_path):
  (tmp_path / tokenizer_lib.FILENAME).write_text('{"kind": "bpe9"}')
  with pytest.raises(UserError, match="bpe9"):
    load_tokenizer(str(tmp_path))


def test_build_tokenizer_choices():
  assert build_tokenizer("char", "xyz").vocab_size == 3
  with pytest.raises(UserError, match="data.tokenizer=char"):
    build_tokenizer("gpt2", "xyz")
  with pytest.raises(UserError, match="char, gpt2"):
    build_tokenizer("words", "xyz")

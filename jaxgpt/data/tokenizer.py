"""Tokenizers: characters, or GPT-2's byte-level BPE; saved as `tokenizer.json` in a run's
workdir, and written as Hugging Face tokenizer files on export."""

import contextlib
import dataclasses
import json
import os
from typing import Protocol

import numpy as np

from jaxgpt import config as config_lib, files
from jaxgpt.errors import UserError, first_line

FILENAME = "tokenizer.json"  # a run's tokenizer; Hugging Face folders use the same name
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class Tokenizer(Protocol):
  """What the trainer, sampling and export need of a tokenizer."""
  kind: str  # a data.tokenizer value
  vocab_size: int  # ids are below this
  end_of_text_id: int | None  # GPT-2's <|endoftext|>; None for characters

  def encode(self, text: str) -> np.ndarray: ...
  def decode(self, ids) -> str: ...
  def hf_json(self) -> str: ...  # the same tokenizer for Hugging Face's `tokenizers`
  def vocabulary(self) -> dict[str, int]: ...  # every token and its id
  def save(self, directory: str) -> None: ...


def same_ids(a: Tokenizer, b: Tokenizer) -> bool:
  """Whether the two tokenizers give every token the same id (so a model of one reads the
  other's token ids), of whatever kind: a character-level export's tokenizer.json reads as a
  Hugging Face tokenizer of the same characters."""
  return a.vocabulary() == b.vocabulary()


class UnknownCharacter(UserError):
  """Text with a character that a character-level tokenizer does not have: the workdir's
  char tokenizer, or a character-level export's tokenizer.json read as a BPETokenizer."""

  def __init__(self, text: str, position: int, whose: str):
    super().__init__(f"character {text[position]!r} at position {position} is not in the "
                     f"vocabulary: {whose} only knows the characters of the training text; "
                     "remove that character or train on text that has it")
    self.character = text[position]


class CharTokenizer:
  """One token per character; ids are the indices of the sorted characters."""

  kind = "char"
  end_of_text_id = None

  def __init__(self, chars: str):
    self.chars = "".join(sorted(set(chars)))
    self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
    # A table from code point to id (0 for unknown ones, which `encode` then finds): one
    # lookup a character, 20x faster than a binary search over the vocabulary.
    self._ids = np.zeros(int(self._codepoints.max(initial=0)) + 2, np.int32)
    self._ids[self._codepoints] = np.arange(len(self.chars), dtype=np.int32)

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls(text)

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def vocabulary(self) -> dict[str, int]:
    return {c: i for i, c in enumerate(self.chars)}

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = self._ids[np.minimum(codepoints, len(self._ids) - 1)]
    known = self._codepoints[ids] == codepoints
    if not known.all():
      raise UnknownCharacter(text, int(np.argmin(known)), "the char tokenizer")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    """Ids past the vocabulary (the model's padded rows) are skipped."""
    return "".join(self.chars[i] for i in np.asarray(ids).ravel()
                   if 0 <= i < self.vocab_size)

  def hf_json(self) -> str:
    return _char_hf_json(self.chars)

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": self.kind, "chars": self.chars})


@dataclasses.dataclass(frozen=True)
class Specials:
  """What a Hugging Face folder's tokenizer_config.json and generation_config.json add to its
  tokenizer.json: the chat template, the special tokens a template and a prompt begin with
  and end with, and the tokens that end a model's turn (generation stops at them)."""
  chat_template: str | None = None  # Jinja, as transformers' apply_chat_template reads it
  bos_token: str | None = None
  eos_token: str | None = None
  stop_tokens: tuple[str, ...] = ()  # end-of-turn tokens besides eos_token
  add_bos: bool = False  # a prompt begins with bos_token (Llama's post-processor adds it)

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "stop_tokens": list(self.stop_tokens)}

  @classmethod
  def from_json(cls, spec: dict) -> "Specials":
    return cls(**{**spec, "stop_tokens": tuple(spec.get("stop_tokens", ()))})


class BPETokenizer:
  """A Hugging Face tokenizer (tokenizer.json, read with the `tokenizers` library): GPT-2's
  byte-level BPE, or a pretrained model's own with its Specials.

  `vocab_size` is the model's vocabulary, which may be larger than the tokenizer's; ids past
  the tokenizer's are skipped when decoding.
  """

  kind = "gpt2"
  END_OF_TEXT = "<|endoftext|>"

  def __init__(self, hf_json: str, vocab_size: int = 0, specials: Specials | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._hf_json = hf_json
    self._tokenizer = tokenizers.Tokenizer.from_str(hf_json)
    self.num_tokens = self._tokenizer.get_vocab_size()
    self.vocab_size = max(vocab_size, self.num_tokens)
    self.specials = specials or Specials()

  @property
  def end_of_text_id(self) -> int | None:
    """GPT-2's <|endoftext|> where the vocabulary has it, else the eos token: what ends a
    document."""
    end = self.token_id(self.END_OF_TEXT)
    if end is None and self.specials.eos_token:
      end = self.token_id(self.specials.eos_token)
    return end

  @property
  def begin_of_text_id(self) -> int | None:
    """The token a model's tokenizer may begin a text with (Llama's <|begin_of_text|>)."""
    return self.token_id(self.specials.bos_token) if self.specials.bos_token else None

  @property
  def chat_template(self) -> str | None:
    return self.specials.chat_template

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """The ids that end a sample: the end-of-text token and the end-of-turn tokens."""
    names = (self.specials.eos_token, *self.specials.stop_tokens)
    ids = [self.end_of_text_id, *(self._tokenizer.token_to_id(n) for n in names if n)]
    return tuple(sorted({i for i in ids if i is not None}))

  def token_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)

  def vocabulary(self) -> dict[str, int]:
    """Every token (special ones included) and its id."""
    return self._tokenizer.get_vocab(with_added_tokens=True)

  @classmethod
  def from_folder(cls, folder: str, vocab_size: int = 0) -> "BPETokenizer":
    """From `tokenizer.json` (with the folder's Specials), or else GPT-2's original
    `vocab.json` and `merges.txt`."""
    if not os.path.isdir(folder):
      raise UserError(f"tokenizer folder {folder} does not exist: pass the folder that holds "
                      "the tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    path = os.path.join(folder, FILENAME)
    if os.path.isfile(path):
      with _readable_tokenizer(path):
        with open(path, encoding="utf-8") as f:
          tokenizer = cls(f.read(), vocab_size)
      tokenizer.specials = _folder_specials(folder, tokenizer)
      return tokenizer
    vocab, merges = (os.path.join(folder, name) for name in ("vocab.json", "merges.txt"))
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
      raise UserError(f"{folder} has no tokenizer files (tokenizer.json, or GPT-2's vocab.json "
                      "and merges.txt): pass a folder that holds them, such as a Hugging Face "
                      "model's")
    import tokenizers  # pylint: disable=g-import-not-at-top
    with _readable_tokenizer(f"{vocab} and {merges}"):
      bpe = tokenizers.ByteLevelBPETokenizer(vocab, merges)
    return cls(bpe._tokenizer.to_str(), vocab_size)  # pylint: disable=protected-access

  def encode(self, text: str) -> np.ndarray:
    """The ids of `text` alone (special tokens written in it, such as a chat template's,
    become their ids; none is added)."""
    return np.array(self._encoding(text).ids, np.int32)

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """`encode`'s ids, and each token's (start, end) character offsets in `text`."""
    encoding = self._encoding(text)
    return (np.array(encoding.ids, np.int32),
            np.array(encoding.offsets, np.int64).reshape(-1, 2))

  def _encoding(self, text: str):
    try:
      return self._tokenizer.encode(text, add_special_tokens=False)
    except Exception as e:  # pylint: disable=broad-except  # `tokenizers` raises a bare one
      raise self._unencodable(text, e) from None

  def _unencodable(self, text: str, error: Exception) -> UserError:
    """The error for text this tokenizer cannot encode: a word-level vocabulary without an
    unknown token (a character-level export's) has no id for one of its pieces."""
    pre_tokenizer = self._tokenizer.pre_tokenizer
    pieces = pre_tokenizer.pre_tokenize_str(text) if pre_tokenizer else [(text, (0, len(text)))]
    for piece, (start, _) in pieces:
      if len(piece) == 1 and self.token_id(piece) is None:
        return UnknownCharacter(text, start, "the model's character-level tokenizer")
    return UserError(f"the model's tokenizer cannot encode the text ({first_line(error)}): "
                     "pass text that its vocabulary covers")

  def encode_prompt(self, text: str) -> np.ndarray:
    """The ids of a prompt: `encode`, after the begin-of-text token where the model's
    tokenizer puts one."""
    ids = self.encode(text)
    bos = self.begin_of_text_id
    if self.specials.add_bos and bos is not None and not (ids.size and ids[0] == bos):
      ids = np.concatenate([np.array([bos], np.int32), ids])
    return ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Each text's ids, from one call into `tokenizers` (on its own threads unless
    TOKENIZERS_PARALLELISM=false)."""
    try:
      encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    except Exception:  # pylint: disable=broad-except  # one by one, to name what fails
      encodings = [self._encoding(text) for text in texts]
    return [e.ids for e in encodings]

  def decode(self, ids) -> str:
    """Ids past the tokenizer's vocabulary (the model's padded rows) are skipped."""
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).ravel()
                                   if 0 <= i < self.num_tokens], skip_special_tokens=False)

  def hf_json(self) -> str:
    return self._hf_json

  def save(self, directory: str) -> None:
    spec = {"kind": self.kind, "vocab_size": self.vocab_size,
            "tokenizer": json.loads(self._hf_json)}
    if self.specials != Specials():
      spec["specials"] = self.specials.to_json()
    _write_spec(directory, spec)


@contextlib.contextmanager
def _readable_tokenizer(what: str):
  """A UserError for tokenizer files the `tokenizers` library cannot read (it raises a bare
  Exception)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{what} cannot be read as a Hugging Face tokenizer ({first_line(e)}): "
                    "restore the model's tokenizer files from its original copy") from None


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    raise UserError(f"{path} cannot be read ({e}): restore it from the model's "
                    "original folder") from None
  return value if isinstance(value, dict) else {}


def _token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _folder_chat_template(folder: str, settings: dict) -> str | None:
  """tokenizer_config.json's chat_template (a string, or named templates: the default), or
  chat_template.jinja, where newer transformers save it."""
  template = settings.get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  path = os.path.join(folder, CHAT_TEMPLATE_FILE)
  if not template and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      template = f.read()
  return template if isinstance(template, str) and template else None


def _folder_specials(folder: str, tokenizer: "BPETokenizer") -> Specials:
  settings = _read_json(os.path.join(folder, "tokenizer_config.json"))
  generation = _read_json(os.path.join(folder, "generation_config.json"))
  bos, eos = _token_text(settings.get("bos_token")), _token_text(settings.get("eos_token"))
  stop_ids = generation.get("eos_token_id", [])
  stop_ids = stop_ids if isinstance(stop_ids, list) else [stop_ids]
  stops = [tokenizer._tokenizer.id_to_token(i) for i in stop_ids if isinstance(i, int)]  # pylint: disable=protected-access
  bos_id = bos and tokenizer.token_id(bos)
  # empty text: a character-level vocabulary may lack any one character
  first = tokenizer._tokenizer.encode("", add_special_tokens=True).ids[:1]  # pylint: disable=protected-access
  return Specials(chat_template=_folder_chat_template(folder, settings), bos_token=bos,
                  eos_token=eos, stop_tokens=tuple(s for s in stops if s and s != eos),
                  add_bos=bos_id is not None and first == [bos_id])


def _char_hf_json(chars: str) -> str:
  """A `tokenizers` tokenizer equal to CharTokenizer: one token per character, joined back
  without spaces, so Hugging Face tools read a character-level run too."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)},
                                                    unk_token=None))
  tokenizer.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
  tokenizer.decoder = decoders.Fuse()
  # transformers 5 reads a qwen2 folder's tokenizer as Qwen2Tokenizer, which keeps only the
  # vocabulary and the added tokens of tokenizer.json: its byte-level pre-tokenizer would drop
  # spaces and newlines, but added tokens are matched before it (and before any normalizer).
  tokenizer.add_tokens([tokenizers.AddedToken(c, normalized=False) for c in chars])
  return tokenizer.to_str()


def write_hf_tokenizer(tokenizer: Tokenizer, folder: str, max_length: int) -> None:
  """Writes `tokenizer.json` and `tokenizer_config.json` that `transformers` loads."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, FILENAME), "w", encoding="utf-8") as f:
    f.write(tokenizer.hf_json())
  settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "clean_up_tokenization_spaces": False}
  specials = getattr(tokenizer, "specials", Specials())
  if specials != Specials():
    settings.update(bos_token=specials.bos_token, eos_token=specials.eos_token)
    if specials.chat_template:
      settings["chat_template"] = specials.chat_template
  elif tokenizer.end_of_text_id is not None:
    settings.update(bos_token=BPETokenizer.END_OF_TEXT, eos_token=BPETokenizer.END_OF_TEXT)
  else:  # none, rather than a tokenizer class's default one added past the model's vocabulary
    settings.update(dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token")))
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)


def _write_spec(directory: str, spec: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  files.write_atomically(os.path.join(directory, FILENAME), json.dumps(spec))


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
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(
        f"{path!r} cannot be read ({e}): restore it, or retrain in a new workdir"
    ) from None
  if not isinstance(spec, dict):
    spec = {"kind": spec}
  try:
    if spec.get("kind") == "char":
      return CharTokenizer(spec["chars"])
    if spec.get("kind") == "gpt2":
      return BPETokenizer(json.dumps(spec["tokenizer"]), spec["vocab_size"],
                          Specials.from_json(spec.get("specials", {})))
    if "kind" not in spec and "model" in spec:  # a Hugging Face tokenizer.json, as given
      return BPETokenizer(json.dumps(spec))
  except Exception as e:  # pylint: disable=broad-except  # a hand-edited file fails in many ways
    raise UserError(f"{path!r} is damaged ({type(e).__name__}: {e}): restore it, or retrain "
                    "in a new workdir") from None
  raise UserError(
      f"{path!r} holds an unknown tokenizer kind {spec.get('kind')!r}: this"
      f" jaxgpt reads {' and '.join(config_lib.TOKENIZERS)}; use the jaxgpt version that wrote it")


def build_tokenizer(kind: str, text: str, folder: str = "", vocab_size: int = 0):
  """A new tokenizer: `char` covers `text`; `gpt2` is read from the Hugging Face `folder`."""
  if kind == "char":
    return CharTokenizer.from_text(text)
  if kind == "gpt2":
    return BPETokenizer.from_folder(folder, vocab_size)
  raise UserError(
      f"unknown data.tokenizer {kind!r}: choose one of {', '.join(config_lib.TOKENIZERS)}")


def saved_tokenizer(workdir: str, kind: str | None):
  """The tokenizer a resumed run must keep using (of `kind`, if given), or None for a new run."""
  if not os.path.exists(os.path.join(workdir, FILENAME)):
    return None
  tokenizer = load_tokenizer(workdir)
  if kind is not None and tokenizer.kind != kind:
    raise UserError(f"{workdir} was trained with the {tokenizer.kind} tokenizer but "
                    f"data.tokenizer={kind}: pass --config.data.tokenizer={tokenizer.kind} "
                    "or use a new --workdir")
  return tokenizer

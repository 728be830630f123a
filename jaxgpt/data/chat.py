"""Chat conversations (data.source=chat) as training rows: JSONL of {"messages": [{"role",
"content"}, ...]}, each conversation rendered with the tokenizer's chat template
(jaxgpt/chat_template.py), its assistant turns' tokens marked as the ones to train on, and
the conversations laid out in rows of block_size + 1 tokens: packed (several to a row, each
its own segment, attending only within itself) or padded (one to a row).

A row's segment ids number its conversations from 1; 0 is padding. The training batch's
targets are -1 wherever no loss is taken (jaxgpt/steps.py).
"""

import dataclasses
import json
import os

import numpy as np

from jaxgpt import chat_template, files
from jaxgpt.errors import UserError

ASSISTANT = "assistant"
OPEN_ROWS = 64  # packing: a conversation goes into the first of the newest rows with room


@dataclasses.dataclass(frozen=True)
class ChatRows:
  """Conversations laid out in rows, each (num_rows, block_size + 1)."""
  tokens: np.ndarray  # int32
  trained: np.ndarray  # bool: the token is an assistant's, predicted with a loss
  segments: np.ndarray  # int32: the row's conversation 1, 2, ...; 0 is padding

  @property
  def num_rows(self) -> int:
    return len(self.tokens)

  def num_targets(self) -> int:
    """The tokens predicted with a loss: assistant tokens after another of their conversation."""
    same = self.segments[:, 1:] == self.segments[:, :-1]
    return int(np.count_nonzero(self.trained[:, 1:] & same))

  def __len__(self) -> int:
    """The conversations' tokens (padding not counted)."""
    return int(np.count_nonzero(self.segments))

  def batch(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, segments), each (len(rows), block_size): targets are -1 where no
    loss is taken (not an assistant token, or the first of another conversation)."""
    tokens, trained, segments = self.tokens[rows], self.trained[rows], self.segments[rows]
    same = segments[:, 1:] == segments[:, :-1]
    targets = np.where(trained[:, 1:] & same, tokens[:, 1:], -1).astype(np.int32)
    return tokens[:, :-1], targets, segments[:, :-1]


def assistant_turns(rows: ChatRows):
  """(context, answer) token arrays of every assistant turn in the rows: what evaluating a
  chat model scores (the answer's tokens given the conversation before it)."""
  for tokens, trained, segments in zip(rows.tokens, rows.trained, rows.segments):
    for segment in np.unique(segments[segments > 0]):
      ids, marks = tokens[segments == segment], trained[segments == segment]
      edges = np.flatnonzero(np.diff(np.concatenate([[0], marks.astype(np.int8), [0]])))
      for start, end in zip(edges[::2], edges[1::2]):
        if start > 0:
          yield ids[:start], ids[start:end]


def read_conversations(path: str) -> list[tuple[int, list[dict]]]:
  """(line number, `messages`) of each line of a JSONL file; a malformed line is a UserError
  naming it."""
  conversations = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode(files.UTF8 if number == 1 else "utf-8")
      except UnicodeDecodeError:
        raise UserError(f"{path}:{number} is not UTF-8 text: convert the file to UTF-8, e.g. "
                        "with iconv") from None
      if line.strip():
        conversations.append((number, _messages(line, f"{path}:{number}")))
  if not conversations:
    raise UserError(f"data.path {path} holds no conversations: write one JSON object a line, "
                    '{"messages": [{"role": "user", "content": ...}, ...]}')
  return conversations


def _messages(line: str, where: str) -> list[dict]:
  fix = ('each line must be {"messages": [{"role": "user", "content": "..."}, '
         '{"role": "assistant", "content": "..."}, ...]}')
  try:
    record = json.loads(line)
  except ValueError as e:
    raise UserError(f"{where} is not JSON ({e}): {fix}") from None
  messages = record.get("messages") if isinstance(record, dict) else None
  if not isinstance(messages, list) or not messages:
    raise UserError(f"{where} has no list of messages: {fix}")
  for message in messages:
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)):
      raise UserError(f"{where} has a message without a string role and content ({message!r}"
                      f"): {fix}")
  if not any(m["role"] == ASSISTANT for m in messages):
    raise UserError(f"{where} has no assistant message, so nothing to train on: {fix}")
  return messages


def encode(tokenizer, messages: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
  """A conversation's examples, each its ids and which of them are trained: the whole
  conversation with every assistant turn trained, where the template renders the first turns
  the same on their own as within it (ChatML, Llama's); else one example an assistant turn,
  the conversation up to it as the model sees it when it answers, only that turn trained
  (Qwen3's template writes an empty <think></think> into the last assistant turn alone)."""
  turns = [_turn(tokenizer, messages, i) for i, message in enumerate(messages)
           if message["role"] == ASSISTANT]
  text = chat_template.render(tokenizer, messages)
  if all(text.startswith(through) for _, through in turns):
    return [_marked(tokenizer, text, [(len(prompt), len(through)) for prompt, through in turns])]
  return [_marked(tokenizer, through, [(len(prompt), len(through))]) for prompt, through in turns]


def _turn(tokenizer, messages: list[dict], i: int) -> tuple[str, str]:
  """The conversation before assistant message i with the generation prompt, and through
  message i: the turn is the text between their ends."""
  prompt = chat_template.render(tokenizer, messages[:i], add_generation_prompt=True)
  through = chat_template.render(tokenizer, messages[:i + 1])
  if not through.startswith(prompt):
    raise UserError("the tokenizer's chat template renders an assistant turn that does not "
                    "begin with the template's generation prompt, so the turn cannot be "
                    "found: use a template that writes the conversation before a turn the "
                    "same way with and without the turn")
  return prompt, through


def _marked(tokenizer, text: str, spans) -> tuple[np.ndarray, np.ndarray]:
  """The ids of `text`, and whether each is in one of the character spans."""
  ids, offsets = tokenizer.encode_with_offsets(text)
  # A token across a span's edge holds answer text: it is trained. Offsets trimmed of
  # whitespace (some tokenizers' post-processors) can be empty: such a token spans a character.
  starts, ends = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)
  trained = np.zeros(len(ids), bool)
  for start, end in spans:
    trained |= (starts < end) & (ends > start)
  return ids, trained


def layout(conversations: list, row_length: int, pack: bool) -> ChatRows:
  """Encoded conversations (ids, trained) in rows of `row_length`: packed (each into the
  first of the last few rows with room for it) or one to a row; a conversation longer than a
  row is cut to it."""
  conversations = [(ids[:row_length], trained[:row_length]) for ids, trained in conversations]
  rows = _packed_rows([len(ids) for ids, _ in conversations], row_length) if pack else [
      [i] for i in range(len(conversations))]
  tokens = np.zeros((len(rows), row_length), np.int32)
  trained_rows = np.zeros((len(rows), row_length), bool)
  segments = np.zeros((len(rows), row_length), np.int32)
  for r, members in enumerate(rows):
    at = 0
    for segment, i in enumerate(members, start=1):
      ids, trained = conversations[i]
      tokens[r, at:at + len(ids)], trained_rows[r, at:at + len(ids)] = ids, trained
      segments[r, at:at + len(ids)] = segment
      at += len(ids)
  return ChatRows(tokens, trained_rows, segments)


def _packed_rows(lengths: list[int], row_length: int) -> list[list[int]]:
  """The conversations (indices) of each row: first fit among the last OPEN_ROWS rows,
  which fills rows much better than starting a new row whenever the next one does not fit,
  at a bounded cost per conversation."""
  rows, room = [], []
  for i, length in enumerate(lengths):
    first = len(rows) - min(len(rows), OPEN_ROWS)
    fit = next((r for r in range(first, len(rows)) if room[r] >= length), None)
    if fit is not None:
      rows[fit].append(i)
      room[fit] -= length
    else:
      rows.append([i])
      room.append(row_length - length)
  return rows


def load_splits(data_config, tokenizer, block_size: int) -> tuple[ChatRows, ChatRows]:
  """(train, validation) rows: the last data.val_fraction of the conversations (at least one)
  are held out."""
  path = data_config.path
  if not os.path.isfile(path):
    raise UserError(f"data.path {path!r} is not a file: pass --config.data.path=FILE, a JSONL "
                    "file of conversations, for data.source=chat")
  conversations = _encoded_conversations(path, tokenizer)
  if len(conversations) < 2:
    raise UserError(f"data.path {path} holds {len(conversations)} conversation: at least two "
                    "are needed, one to train on and one to validate with")
  held_out = min(max(1, round(len(conversations) * data_config.val_fraction)),
                 len(conversations) - 1)
  splits = []
  for name, split in (("train", conversations[:-held_out]), ("val", conversations[-held_out:])):
    examples = [example for examples in split for example in examples]
    splits.append(layout(examples, block_size + 1, data_config.chat_packing))
    _check_targets(splits[-1], examples, name, block_size)
  return tuple(splits)


def load_held_out(path: str, tokenizer, block_size: int, pack: bool) -> ChatRows:
  """Every conversation of a JSONL file as one held-out set (jaxgpt.eval --data=FILE)."""
  examples = [example for examples in _encoded_conversations(path, tokenizer)
              for example in examples]
  rows = layout(examples, block_size + 1, pack)
  _check_targets(rows, examples, "held-out", block_size)
  return rows


def is_conversations_file(path: str) -> bool:
  """Whether a file's first line with text is a conversation ({"messages": ...}), not text."""
  with open(path, "rb") as f:
    first = next((line for line in f if line.strip()), b"")
  try:
    value = json.loads(first.decode(files.UTF8))
  except ValueError:  # not JSON, or not UTF-8
    return False
  return isinstance(value, dict) and "messages" in value


def _encoded_conversations(path: str, tokenizer) -> list:
  """Each conversation's examples (encode); one the template cannot render is a UserError
  naming its line."""
  conversations = []
  for number, messages in read_conversations(path):
    try:
      conversations.append(encode(tokenizer, messages))
    except UserError as e:  # the template's: which conversation it could not render
      raise UserError(f"{path}:{number}: {e}") from None
  return conversations


def _check_targets(rows: ChatRows, examples, split: str, block_size: int) -> None:
  """Rows cut to block_size + 1 tokens may have lost every answer: such a split trains (or
  validates) on nothing, at a loss of 0."""
  if rows.num_targets():
    return
  first = min((int(np.argmax(trained)) for _, trained in examples if trained.any()),
              default=None)
  if first is None:
    raise UserError(f"the {split} split's assistant turns render as no tokens: give the "
                    "assistant messages content")
  raise UserError(f"no assistant token of the {split} split's conversations fits in "
                  f"model.block_size={block_size} (the earliest answer begins at token {first}"
                  f" of its conversation): raise --config.model.block_size to {first} or "
                  "more, or shorten what comes before the answers")

"""Held-out loss: the mean loss per token over a whole token set, its standard error, the
perplexity, and bits per byte (the loss in bits over the UTF-8 bytes the predicted tokens
stand for, which compares models with different tokenizers).

The set is cut into windows of block_size + 1 tokens that overlap by one, so every token but
the first is predicted once, from up to block_size tokens of context.
"""

import functools
import json
import math
import re

import numpy as np

from jaxgpt.data import chat
from jaxgpt.scoring import Scorer

WINDOWS_PER_CALL = 1024  # windows read and scored at a time: memory stays flat on any set


class TooShort(ValueError):
  """A held-out set with less than one token predicted from another (or no answer to score);
  `by_limit`: the set is long enough, but not the part that `limit` lets be read."""

  def __init__(self, message: str, by_limit: bool = False):
    super().__init__(message)
    self.by_limit = by_limit


def evaluate(scorer: Scorer, tokens, tokenizer, limit: int | None = None) -> dict:
  """loss (nats per token), stderr, ppl, bpb and tokens over `tokens` (an int array or
  TokenShards; or chat rows, whose assistant tokens are scored); `limit` caps the number of
  tokens read."""
  if isinstance(tokens, chat.ChatRows):
    return _evaluate_answers(scorer, tokens, tokenizer, limit)
  total = len(tokens) if limit is None else min(limit, len(tokens))
  if total < 2:
    raise TooShort(f"{total} token(s) to read, and a held-out loss needs at least 2 (one "
                   "predicted from the other)", by_limit=total < len(tokens))
  byte_lengths = token_byte_lengths(tokenizer)
  losses = []
  num_bytes = 0
  block_size = scorer.model.config.block_size
  starts = np.arange(0, total - 1, block_size)
  for first in range(0, len(starts), WINDOWS_PER_CALL):
    windows = [_window(tokens, start, min(start + block_size + 1, total))
               for start in starts[first:first + WINDOWS_PER_CALL]]
    for window, scored in zip(windows, scorer.score([(w[:1], w[1:]) for w in windows])):
      losses.append(scored.token_losses)
      num_bytes += int(byte_lengths[window[1:]].sum())
  return summary(np.concatenate(losses), num_bytes)


def _evaluate_answers(scorer: Scorer, rows: chat.ChatRows, tokenizer, limit: int | None) -> dict:
  """The loss over the assistant turns' tokens, each given the conversation before it."""
  requests, total = [], 0
  for context, answer in chat.assistant_turns(rows):
    if limit is not None and total >= limit:
      break
    requests.append((context, answer))
    total += len(answer)
  if not requests:
    raise TooShort("the conversations have no assistant turn to score")
  losses = [scored.token_losses for scored in scorer.score(requests)]
  byte_lengths = token_byte_lengths(tokenizer)
  num_bytes = sum(int(byte_lengths[answer].sum()) for _, answer in requests)
  return summary(np.concatenate(losses), num_bytes)


def summary(token_losses: np.ndarray, num_bytes: int) -> dict:
  token_losses = np.asarray(token_losses, np.float64)
  n = len(token_losses)
  mean = float(token_losses.mean())
  stderr = float(token_losses.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  bpb = float(token_losses.sum() / math.log(2) / num_bytes) if num_bytes else float("nan")
  return {"loss": mean, "stderr": stderr, "ppl": math.exp(mean), "bpb": bpb, "tokens": n}


def _window(tokens, start: int, end: int) -> np.ndarray:
  if isinstance(tokens, np.ndarray):
    return np.asarray(tokens[start:end], np.int32)
  return tokens.windows(np.array([start]), end - start)[0]


def token_byte_lengths(tokenizer) -> np.ndarray:
  """The UTF-8 bytes each id stands for; special tokens and padded ids count 0."""
  lengths = np.zeros(tokenizer.vocab_size, np.int64)
  if tokenizer.kind == "char":
    lengths[:len(tokenizer.chars)] = [len(c.encode("utf-8")) for c in tokenizer.chars]
    return lengths
  spec = json.loads(tokenizer.hf_json())
  special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
  vocab = dict(spec["model"]["vocab"])
  vocab.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
  byte_count = _byte_counter(_decoder_types(spec.get("decoder")))
  for token, i in vocab.items():
    if i not in special and 0 <= i < len(lengths):
      lengths[i] = byte_count(token)
  return lengths


def _byte_counter(decoders: set):
  """How many bytes a token of a vocabulary stands for: byte-level BPE (GPT-2's, Llama 3's,
  Qwen's) writes each byte as one character; SentencePiece's (Llama 2's, Mistral's) writes a
  space as "▁" and a byte without a token of its own as "<0xNN>"."""
  byte_level = _byte_level_alphabet() if "ByteLevel" in decoders or not decoders else set()
  metaspace = bool(decoders & {"Metaspace", "Replace"})
  byte_fallback = "ByteFallback" in decoders

  def count(token: str) -> int:
    if set(token) <= byte_level:  # added tokens are written as themselves
      return len(token)
    if byte_fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
      return 1
    return len((token.replace("\u2581", " ") if metaspace else token).encode("utf-8"))
  return count


def _decoder_types(decoder) -> set:
  """The types of a tokenizer.json decoder and of the decoders a Sequence holds."""
  if not decoder:
    return set()
  inner = [_decoder_types(d) for d in decoder.get("decoders") or []]
  return {decoder.get("type")}.union(*inner)


@functools.cache
def _byte_level_alphabet() -> frozenset:
  """The 256 characters byte-level BPE (GPT-2's, Llama 3's, Qwen's) writes bytes as, one a
  byte: printable Latin-1 as itself, the other bytes shifted past 255."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  shifted = [256 + n for n in range(256 - len(printable))]
  return frozenset(map(chr, printable + shifted))

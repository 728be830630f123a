"""HellaSwag, scored completion-style as build-nanogpt's and llm.c's hellaswag.py score it.

Each example is a context and four endings; the model scores `" " + ending` after the
context (only the ending's tokens). `acc` picks the ending with the lowest summed loss,
`acc_norm` the lowest mean loss per ending token (their "acc_norm"), and `acc_char` the
highest log-likelihood per character of `" " + ending` (lm-evaluation-harness's acc_norm).
"""

import http.client
import json
import os
import urllib.request

import numpy as np

from jaxgpt import runtime
from jaxgpt.errors import UserError, first_line

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
NUM_ENDINGS = 4


def resolve(path: str, flag: str) -> str:
  """`path`, or for "val" the official validation file, fetched once into ~/.cache/jaxgpt;
  `flag` is how the command names the file, for the advice if the fetch fails."""
  if path != "val":
    return path
  cached = os.path.join(runtime.USER_CACHE_DIR, os.path.basename(VAL_URL))
  if not os.path.isfile(cached):
    os.makedirs(runtime.USER_CACHE_DIR, exist_ok=True)
    try:
      urllib.request.urlretrieve(VAL_URL, cached + ".partial")
    except (OSError, http.client.HTTPException) as e:  # offline; a connection cut short
      if os.path.exists(cached + ".partial"):
        os.remove(cached + ".partial")
      raise UserError(f"{flag}=val could not fetch {VAL_URL} ({first_line(e)}): download it "
                      f"on a machine that is online and pass {flag}=FILE, or put it at "
                      f"{cached}") from None
    os.replace(cached + ".partial", cached)
    print(f"HellaSwag's validation set is cached in {cached}", flush=True)
  return cached


def read_examples(path: str, limit: int | None = None) -> list[dict]:
  """The examples of a HellaSwag JSONL file (ctx, endings, label), checked line by line."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"HellaSwag file {path} cannot be read ({first_line(e)}): pass a "
                    "hellaswag_val.jsonl-format file") from None
  if not lines:
    raise UserError(f"HellaSwag file {path} holds no examples: pass a hellaswag_val.jsonl-"
                    "format file")
  return [_example(line, number, path) for number, line in enumerate(lines[:limit], 1)]


def _example(line: str, number: int, path: str) -> dict:
  where = f"HellaSwag file {path}, line {number}"
  fix = ("each line must be a JSON object with ctx (text), endings (4 texts) and label (0 to "
         "3), as in hellaswag_val.jsonl")
  try:
    example = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where} is not JSON ({e.msg}): {fix}") from None
  if not isinstance(example, dict):
    raise UserError(f"{where} is not a JSON object: {fix}")
  for key in ("ctx", "endings", "label"):
    if key not in example:
      raise UserError(f"{where} has no {key!r}: {fix}")
  endings, label = example["endings"], example["label"]
  if not isinstance(example["ctx"], str) or not example["ctx"]:
    raise UserError(f"{where} has a ctx that is not a non-empty text: {fix}")
  if (not isinstance(endings, list) or len(endings) != NUM_ENDINGS
      or not all(isinstance(e, str) for e in endings)):
    raise UserError(f"{where} has endings that are not {NUM_ENDINGS} texts: {fix}")
  if isinstance(label, str) and label.isdecimal():
    label = int(label)
  if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < NUM_ENDINGS:
    raise UserError(f"{where} has label {example['label']!r}, not 0 to {NUM_ENDINGS - 1}: {fix}")
  return {"ctx": example["ctx"], "endings": endings, "label": label, "where": where}


def requests(examples: list[dict], tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
  """(context ids, ending ids) for every ending of every example, in order; the context after
  the begin-of-text token where the model's tokenizer adds one (Llama's), as lm-eval's `hf`
  backend encodes it."""
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top  # loads JAX
  pairs = []
  for number, example in enumerate(examples, 1):
    try:
      context = generate.prompt_ids(tokenizer, example["ctx"])
      pairs += [(context, tokenizer.encode(" " + ending)) for ending in example["endings"]]
    except UserError as e:
      raise UserError(f"{example.get('where', f'HellaSwag example {number}')}: {e}") from None
  return pairs


def accuracies(examples: list[dict], ending_losses: list[np.ndarray]) -> dict:
  """acc, acc_norm and acc_char from each ending's per-token losses (requests' order)."""
  correct = {"acc": 0, "acc_norm": 0, "acc_char": 0}
  for i, example in enumerate(examples):
    losses = ending_losses[i * NUM_ENDINGS:(i + 1) * NUM_ENDINGS]
    sums = np.array([float(np.sum(x)) for x in losses])
    choices = {
        "acc": sums,
        "acc_norm": np.array([float(np.mean(x)) for x in losses]),
        "acc_char": sums / np.array([len(" " + e) for e in example["endings"]]),
    }
    for name, scores in choices.items():
      correct[name] += int(np.argmin(scores) == example["label"])
  return {**{name: count / len(examples) for name, count in correct.items()},
          "examples": len(examples)}


def evaluate(scorer, tokenizer, examples: list[dict]) -> dict:
  """acc, acc_norm, acc_char and the number of examples."""
  scored = scorer.score(requests(examples, tokenizer))
  return accuracies(examples, [s.token_losses for s in scored])


class DuringTraining:
  """HellaSwag every train.hellaswag_every steps (and at the last one), on the run's own mesh
  and parameters: its examples are read, tokenized and fitted to the context when the run
  starts, so a file the run cannot score stops it then, before anything is saved."""

  def __init__(self, config, model, mesh, tokenizer):
    t = config.train
    self.every, self.last_step = t.hellaswag_every, t.max_steps
    self.examples = (read_examples(resolve(config.data.hellaswag_path,
                                           "--config.data.hellaswag_path"))
                     if self.every else [])
    self.requests = requests(self.examples, tokenizer)
    longest = max((len(ending) for _, ending in self.requests), default=0)
    if longest > model.config.block_size:
      raise UserError(f"HellaSwag cannot be scored with this model (an ending of {longest} "
                      f"tokens does not fit its block_size={model.config.block_size}): pass a "
                      "data.hellaswag_path of shorter examples, or a longer block_size")
    self.model, self.mesh = model, mesh
    self.scorer = None

  def due(self, step: int) -> bool:
    return bool(self.every) and (step % self.every == 0 or step == self.last_step)

  def __call__(self, params) -> dict:
    """hellaswag_acc and hellaswag_acc_norm (acc_char is jaxgpt.eval's) with these params."""
    from jaxgpt.scoring import Scorer  # pylint: disable=g-import-not-at-top
    if self.scorer is None:  # one Scorer serves every evaluation
      self.scorer = Scorer(self.model, params, self.mesh)
    self.scorer.params = params
    scored = self.scorer.score(self.requests)
    result = accuracies(self.examples, [s.token_losses for s in scored])
    return {"hellaswag_acc": result["acc"], "hellaswag_acc_norm": result["acc_norm"]}

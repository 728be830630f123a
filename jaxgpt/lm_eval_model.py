"""jaxgpt as an lm-evaluation-harness model, so that every harness task runs on a jaxgpt run or
on pretrained weights: `python -m jaxgpt.eval --lm_eval_tasks=hellaswag,arc_easy`.

Requests are tokenized as the harness's own Hugging Face backend (`hf`) tokenizes them:
trailing spaces of a context move to the continuation, a text begins with the begin-of-text
token where the model's tokenizer adds one (Llama's, Mistral's), and an empty context or a
rolling window's first is conditioned on the begin-of-text token, else the tokenizer's eos
(GPT-2's <|endoftext|>, Qwen's <|im_end|> or <|endoftext|>). Then they are scored in
jaxgpt's fixed shapes (jaxgpt/scoring.py) and generated with jaxgpt's compiled decoding,
greedily.
"""

import contextlib
import functools
import glob
import os
import traceback
from unittest import mock

import numpy as np

from jaxgpt import generate
from jaxgpt.errors import UserError, first_line

INSTALL = 'pip install "jaxgpt[eval]" (or pip install lm_eval)'


def run_tasks(run, scorer, tasks: list[str], limit: int | None,
              include_path: str | None = None) -> dict:
  """{task: {metric: value}} from lm_eval.simple_evaluate with this model."""
  try:
    import lm_eval  # pylint: disable=g-import-not-at-top
    from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"--lm_eval_tasks needs lm-evaluation-harness, which is not installed: "
                    f"{INSTALL}") from None
  manager = TaskManager(include_path=include_path)
  unknown = [task for task in tasks if not manager.match_tasks([task])]
  unreadable = unknown and include_path and _unreadable_yaml(include_path)
  if unreadable:  # lm-eval skips a task file it cannot parse without a word
    raise UserError(f"lm-eval has no task {', '.join(unknown)}, and {unreadable}: correct "
                    "that file's YAML")
  if unknown:
    raise UserError(f"lm-eval has no task {', '.join(unknown)}: pass names that "
                    "`lm_eval ls tasks` lists, or --lm_eval_include=DIR for your own task YAML")
  try:
    with _no_git_hash():
      output = lm_eval.simple_evaluate(model=harness_model(run, scorer), tasks=tasks,
                                       limit=limit, task_manager=manager, log_samples=False)
  except (OSError, ConnectionError) as e:
    raise UserError(f"lm-eval could not load the data of {', '.join(tasks)} ({first_line(e)}): "
                    "connect to the internet once so that it caches them, or point a local "
                    "task's data files at files that exist") from None
  except Exception as e:  # pylint: disable=broad-except
    if _through_jaxgpt(e):  # the model's side: a request too long (DoesNotFit), or a bug
      raise
    where = f"under {include_path} " if include_path else ""
    raise UserError(f"lm-eval could not run {', '.join(tasks)} ({type(e).__name__}: "
                    f"{first_line(e)}): correct the task's YAML or data {where}(a template's "
                    "field names, a malformed data line, a target past the choices)") from None
  return {task: {metric.split(",")[0]: value for metric, value in metrics.items()
                 if isinstance(value, float) and "stderr" not in metric}
          for task, metrics in output["results"].items()}


def _no_git_hash():
  """lm-eval records `git describe` of the current folder in its results, and outside a git
  repository git prints "fatal: not a git repository" on stderr; jaxgpt reports no hash."""
  import lm_eval.evaluator  # pylint: disable=g-import-not-at-top
  if not hasattr(lm_eval.evaluator, "get_git_commit_hash"):
    return contextlib.nullcontext()
  return mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None)


def _through_jaxgpt(error: Exception) -> bool:
  """Whether jaxgpt's code (beyond the call into lm-eval) raised `error` or called what did."""
  package = os.path.dirname(os.path.abspath(__file__)) + os.sep
  frames = traceback.extract_tb(error.__traceback__)[1:]
  return any(os.path.abspath(frame.filename).startswith(package) for frame in frames)


def _unreadable_yaml(folder: str) -> str | None:
  """The first task file under `folder` that is not YAML, and why; None if all parse."""
  import yaml  # pylint: disable=g-import-not-at-top

  class Loader(yaml.SafeLoader):  # lm-eval's tags (!function) need not be resolved here
    pass
  Loader.add_multi_constructor("!", lambda loader, tag, node: None)
  for path in sorted(glob.glob(os.path.join(folder, "**", "*.yaml"), recursive=True)):
    try:
      with open(path, encoding="utf-8") as f:
        yaml.load(f, Loader=Loader)  # pylint: disable=no-value-for-parameter
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
      mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)
      why = ": ".join(filter(None, [getattr(e, "context", None), getattr(e, "problem", None)]))
      return (f"{path}{f' line {mark.line + 1}' if mark else ''} cannot be read "
              f"({why or first_line(e)})")
  return None


def harness_model(run, scorer):
  """An lm_eval TemplateLM over a loaded run (jaxgpt.run_loader) and its Scorer."""
  from lm_eval.api.model import TemplateLM  # pylint: disable=g-import-not-at-top
  from lm_eval import utils  # pylint: disable=g-import-not-at-top

  class JaxgptLM(TemplateLM):
    """A jaxgpt model, scored and sampled through jaxgpt's compiled programs."""

    def __init__(self):
      super().__init__()
      self.run, self.scorer = run, scorer
      self.max_length = run.model.config.block_size

    @property
    def eot_token_id(self) -> int:
      end = self.run.tokenizer.end_of_text_id
      return end if end is not None else int(self.run.tokenizer.encode(
          generate.default_prompt(self.run.tokenizer))[0])

    @functools.cached_property
    def prefix_token_id(self) -> int:
      """What an empty context and the first rolling window are conditioned on: as the
      harness's `hf` backend has it, the begin-of-text token, else the tokenizer's eos."""
      tokenizer = self.run.tokenizer
      bos = getattr(tokenizer, "begin_of_text_id", None)
      specials = getattr(tokenizer, "specials", None)
      eos = tokenizer.token_id(specials.eos_token) if specials and specials.eos_token else None
      return next((i for i in (bos, eos) if i is not None), self.eot_token_id)

    @functools.cached_property
    def _prefix_text(self) -> str:
      return self.run.tokenizer.decode([self.prefix_token_id])

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
      """As `hf` encodes: with the begin-of-text token where the model's tokenizer adds one,
      unless the string already begins with the prefix token."""
      tokenizer = self.run.tokenizer
      plain = add_special_tokens is False or (
          add_special_tokens is None
          and string.startswith(self._prefix_text))
      ids = tokenizer.encode(string) if plain else generate.prompt_ids(tokenizer, string)
      return [int(i) for i in ids]

    def _loglikelihood_tokens(self, requests, **kwargs) -> list[tuple[float, bool]]:
      scored = self.scorer.score([(np.asarray(context), np.asarray(continuation))
                                  for _, context, continuation in requests])
      return [(-s.loss, s.greedy) for s in scored]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
      """Each string's total log-likelihood over disjoint windows; every string's windows
      are scored together."""
      windows, owners = [], []
      for n, (string,) in enumerate(request.args for request in requests):
        for context, continuation in map(utils.make_disjoint_window,
                                         utils.get_rolling_token_windows(
                                             token_list=self.tok_encode(string),
                                             prefix_token=self.prefix_token_id,
                                             max_seq_len=self.max_length, context_len=1)):
          windows.append((None, context, continuation))
          owners.append(n)
      totals = [0.0] * len(requests)
      for n, (score, _) in zip(owners, self._loglikelihood_tokens(windows)):
        totals[n] += score
      return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
      return [self._greedy_text(context, dict(kwargs))
              for context, kwargs in (request.args for request in requests)]

    def _greedy_text(self, context: str, kwargs: dict) -> str:
      """Greedy text after `context`, cut before the first of kwargs' `until` strings."""
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(kwargs.get("max_gen_toks", 256))
      ids = self.tok_encode(context)[-max(self.max_length - max_new, 1):]
      text, new_ids = "", []
      stops = set(generate.stop_ids(self.run.tokenizer))
      with self.run.context():
        for new_BxN in generate.generate(self.run.model, self.run.params, ids, max_new,
                                         generate.Sampling(temperature=0)):
          new_ids += [int(i) for i in new_BxN[0]]
          end = next((n for n, i in enumerate(new_ids) if i in stops), None)
          ended = end is not None
          if ended:
            new_ids = new_ids[:end]
          text = self.run.tokenizer.decode(new_ids)
          if ended or any(stop in text for stop in until):
            break
      cuts = [text.index(stop) for stop in until if stop in text]
      return text[:min(cuts)] if cuts else text

  return JaxgptLM()

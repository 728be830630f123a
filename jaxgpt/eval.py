"""python -m jaxgpt.eval (--workdir=DIR [--checkpoint=latest|best|STEP] | --init_from=NAME|FOLDER)
                       [--data=val|FILE|DATASET_DIR[,...]] [--hellaswag=FILE|val]
                       [--lm_eval_tasks=T1,T2] [--limit=N] [--json]

How good a model is. For each held-out set of --data: the mean loss per token (nats), its
standard error, the perplexity, bits per byte and the number of tokens predicted, over the
whole set unless --limit caps its tokens. `val` is the run's own validation split, a FILE is
UTF-8 text, a DATASET_DIR a folder `python -m jaxgpt.prepare` wrote (its val split).
--hellaswag scores HellaSwag's endings as build-nanogpt and llm.c do (acc, acc_norm) and as
lm-evaluation-harness normalises by characters (acc_char). --lm_eval_tasks runs any
lm-evaluation-harness task with this model (`pip install "jaxgpt[eval]"`). Prints a table,
or with --json one JSON object on a line of its own.
"""

import json
import math
import os
import sys

from absl import flags

from jaxgpt import cli, files, peers, runtime
from jaxgpt.errors import UserError, run_cli

_RUN = cli.define_run_flags(__name__, "evaluate", "Evaluate pretrained weights instead: gpt2, "
                            "gpt2-medium, gpt2-large, gpt2-xl, a hub name such as "
                            "Qwen/Qwen3-0.6B, or a Hugging Face GPT-2 or Llama-family folder.",
                            "pretrained weights")
_DATA = flags.DEFINE_list("data", [], "Held-out sets: val (the run's validation split), a text "
                          "file (JSON lines of conversations: their assistant turns), or a "
                          "prepared token dataset folder (its val split).")
_HELLASWAG = flags.DEFINE_string("hellaswag", None, "A hellaswag_val.jsonl-format file, or val "
                                 "(the official file, fetched once into ~/.cache/jaxgpt).")
_LM_EVAL_TASKS = flags.DEFINE_list("lm_eval_tasks", [], "lm-evaluation-harness tasks, e.g. "
                                   "hellaswag,arc_easy (needs `pip install \"jaxgpt[eval]\"`).")
_LM_EVAL_INCLUDE = flags.DEFINE_string("lm_eval_include", None, "A folder of your own "
                                       "lm-eval task YAML files (lm_eval's --include_path).")
_LIMIT = flags.DEFINE_integer("limit", None, "At most this many tokens of each held-out set, "
                              "HellaSwag examples, and examples of each lm-eval task.")
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object instead of a table.")
_ROWS = flags.DEFINE_integer("rows", None, "Packed rows scored at a time (rounded up to a "
                             "multiple of the data-parallel devices); default about 4,096 "
                             "tokens a call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype "
                           "(parameters, logits and losses stay float32); bfloat16 is faster "
                           "where the processor has it (GPU, TPU, Intel AMX).")


def _check_flags() -> None:
  _RUN.check()
  if not (_DATA.value or _HELLASWAG.value or _LM_EVAL_TASKS.value):
    raise UserError("nothing to evaluate: pass --data=val (or a text file or dataset folder), "
                    "--hellaswag=FILE or --lm_eval_tasks=TASKS")
  if _LIMIT.value is not None and _LIMIT.value < 1:
    raise UserError(f"--limit={_LIMIT.value} evaluates nothing: pass a positive number, or "
                    "leave it out to evaluate everything")
  if _ROWS.value is not None and _ROWS.value < 1:
    raise UserError(f"--rows={_ROWS.value} is out of range: pass 1 or more")
  _check_data_names(_DATA.value)
  if _LM_EVAL_INCLUDE.value and not os.path.isdir(_LM_EVAL_INCLUDE.value):
    raise UserError(f"--lm_eval_include={_LM_EVAL_INCLUDE.value} is not a folder: pass the "
                    "folder that holds your task YAML files")
  if "val" in _DATA.value and not _RUN.workdir.value:
    raise UserError("--data=val is a run's own validation split: pass --workdir, or a text file "
                    "or dataset folder with --init_from")


def _check_data_names(specs: list[str]) -> None:
  """Each --data set has a name of its own: the results are keyed by it."""
  names = {}
  for spec in specs:
    if not spec.strip():
      raise UserError(f"--data={','.join(specs)} has an empty entry: separate the sets with "
                      "single commas, without one at the end")
    name = _data_name(spec)
    if spec in names.values():
      raise UserError(f"--data names {spec} twice: drop the repeated one")
    if name in names:
      raise UserError(f"--data names two sets {name} ({names[name]} and {spec}), whose results "
                      "would share one key: give one of them another file or folder name")
    names[name] = spec


def _data_name(spec: str) -> str:
  """A --data set's name in the results: val, or its file's or folder's base name."""
  return spec if spec == "val" else os.path.basename(
      os.path.abspath(os.path.expanduser(spec)).rstrip(os.sep))


def evaluate(run, data: list[str], hellaswag_examples: list[dict] | None = None,
             lm_eval_tasks: tuple[str, ...] = (), limit: int | None = None,
             rows: int | None = None, lm_eval_include: str | None = None) -> dict:
  """The results jaxgpt.eval prints, as one dict (see the module's docstring)."""
  from jaxgpt import hellaswag, heldout, scoring  # pylint: disable=g-import-not-at-top
  scorer = scoring.Scorer(run.model, run.params, run.mesh, rows)
  results = {}
  for spec in data:
    name, tokens = _heldout_tokens(run, spec)
    try:
      results[name] = _scored(lambda: heldout.evaluate(scorer, tokens, run.tokenizer, limit),
                              f"--data={spec}")
    except heldout.TooShort as e:
      fix = "pass --limit=2 or more" if e.by_limit else "pass a longer text or another set"
      raise UserError(f"--data={spec}: {e}: {fix}") from None
  if hellaswag_examples:
    results["hellaswag"] = _scored(
        lambda: hellaswag.evaluate(scorer, run.tokenizer, hellaswag_examples), "--hellaswag")
  if lm_eval_tasks:
    from jaxgpt import lm_eval_model  # pylint: disable=g-import-not-at-top
    results["lm_eval"] = _scored(lambda: lm_eval_model.run_tasks(
        run, scorer, list(lm_eval_tasks), limit, lm_eval_include), "--lm_eval_tasks")
  return results


def _scored(evaluation, flag: str):
  """`evaluation()`, with a request longer than the model's context as a UserError naming the
  `flag` it came from."""
  from jaxgpt import scoring  # pylint: disable=g-import-not-at-top
  try:
    return evaluation()
  except scoring.DoesNotFit as e:
    raise UserError(f"{flag}: {e}: evaluate shorter texts or answers, or a model with a longer "
                    "context") from None


def _heldout_tokens(run, spec: str):
  """(the set's name, its tokens) for a --data entry."""
  if spec == "val":
    return "val", _run_val_split(run)
  path, name = os.path.abspath(os.path.expanduser(spec)), _data_name(spec)
  if os.path.isdir(path):
    return name, _dataset_val_split(run, path)
  if not os.path.isfile(path):
    raise UserError(f"--data={spec} is neither val, a text file nor a dataset folder: pass one")
  from jaxgpt.data import chat  # pylint: disable=g-import-not-at-top
  if chat.is_conversations_file(path):  # its assistant turns are scored, as chat training's
    return name, chat.load_held_out(path, run.tokenizer, run.model.config.block_size,
                                    run.config.data.chat_packing)
  text = files.read_utf8(path, f"--data={spec}")
  try:
    return name, run.tokenizer.encode(text)
  except UserError as e:  # a character the model's tokenizer lacks
    raise UserError(f"--data={spec}: {e}") from None


def _run_val_split(run):
  """The validation split of the run's own data; refused where that data is not here or has
  changed since the run trained on it (its split would not be the run's)."""
  from jaxgpt import data  # pylint: disable=g-import-not-at-top
  from jaxgpt.data.tokenizer import UnknownCharacter  # pylint: disable=g-import-not-at-top
  path, fingerprint = run.config.data.path, run.config.data.fingerprint
  if path and "://" not in path and not os.path.exists(path):
    where, fix = ((" does not exist", "restore it") if os.path.isabs(path) else
                  (", relative to the folder the run was started in, is not here",
                   "run eval from that folder"))
    raise UserError(f"--data=val is the validation split of the run's data, and its data.path="
                    f"{path!r}{where}: {fix}, or pass a held-out text or dataset folder as "
                    "--data=PATH")
  try:
    dataset = data.build_dataset(run.config, tokenizer=run.tokenizer)
  except UnknownCharacter:  # text the run's char tokenizer never saw
    dataset = None
  if dataset is None or fingerprint not in ("", data.fingerprint(dataset)):
    raise UserError(f"--data=val: the run's data (data.path={path!r}) has changed since the run "
                    "trained on it, so its validation split is not the run's: restore the data, "
                    "or pass it as --data=PATH to score it as another held-out set")
  return dataset.val


def _dataset_val_split(run, path: str):
  from jaxgpt.data import shards  # pylint: disable=g-import-not-at-top
  from jaxgpt.data.tokenizer import same_ids  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(path, shards.DATASET_FILE)):
    raise UserError(f"--data={path} holds no {shards.DATASET_FILE}: pass a folder that python "
                    "-m jaxgpt.prepare --out=DIR wrote, a UTF-8 text file, or val")
  info = shards.read_dataset(path)  # a dataset without a val split is a UserError here
  if not same_ids(shards.dataset_tokenizer(path, info), run.tokenizer):
    raise UserError(f"--data={path} was tokenized with another tokenizer than the model's: "
                    "prepare the text with the model's tokenizer (--tokenizer=FOLDER)")
  return shards.load_split(path, info, "val")


def format_table(results: dict) -> str:
  """The results as aligned lines, one per held-out set or task."""
  lines = []
  for name, result in results.items():
    if name == "lm_eval":
      lines += [f"lm-eval {task:<20} " + "  ".join(f"{metric} {value:.4f}"
                                                   for metric, value in metrics.items())
                for task, metrics in result.items()]
    elif name == "hellaswag":
      lines.append(f"hellaswag  acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
                   f"acc_char {result['acc_char']:.4f}  ({result['examples']:,} examples)")
    else:
      lines.append(f"{name:<10} loss {result['loss']:.4f} ± {result['stderr']:.4f}  ppl "
                   f"{result['ppl']:.3f}  bpb {result['bpb']:.4f}  ({result['tokens']:,} tokens)")
  return "\n".join(lines)


def _json_safe(value):
  """NaN and infinities as null: strict JSON has neither."""
  if isinstance(value, dict):
    return {key: _json_safe(v) for key, v in value.items()}
  return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.initialize_distributed()  # several processes (a TPU pod) evaluate together
  runtime.start_backend()
  cli.parse_flags(argv, __doc__)
  # With several processes, one that fails (a file missing on its host) stops them all.
  with peers.watch(peers.TIMEOUT_SECS, after=""):
    peers.check_same_command("\n".join((sys.argv if argv is None else argv)[1:]),
                             peers.TIMEOUT_SECS, "its flags differ")
    _evaluate_and_print()


def _evaluate_and_print() -> None:
  _check_flags()
  from jaxgpt import hellaswag  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  examples = None  # read first: a bad file is reported before the model loads
  if _HELLASWAG.value:
    examples = hellaswag.read_examples(hellaswag.resolve(_HELLASWAG.value, "--hellaswag"),
                                       _LIMIT.value)
  run = _RUN.load().with_dtype(_DTYPE.value)
  results = evaluate(run, _DATA.value, examples, tuple(_LM_EVAL_TASKS.value), _LIMIT.value,
                     _ROWS.value, _LM_EVAL_INCLUDE.value)
  if jax.process_index() == 0:
    print(json.dumps(_json_safe(results)) if _JSON.value else format_table(results), flush=True)


if __name__ == "__main__":
  run_cli(main)

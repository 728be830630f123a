"""python -m jaxgpt.sample --workdir=DIR | --init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl|FOLDER
                         [--prompt=TEXT | --prompt_file=FILE | --interactive]
                         [--max_new_tokens=N] [--num_samples=N] [--temperature=T] [--top_k=K]
                         [--top_p=P] [--seed=S] [--stop=TEXT] [--checkpoint=latest|best|STEP]

Writes new text from a trained run (its config, tokenizer and newest checkpoint), or from
pretrained GPT-2 weights (the Hugging Face cache or hub, or a local Hugging Face folder).
The first sample is printed as it is generated; with --num_samples > 1 the others follow
once it is done. Each sample is followed by a line of dashes. The time spent compiling
(first calls only) and the generation speed go to stderr.
--interactive loads the run once, then reads prompts from stdin, one a line, until EOF.
"""

import os
import sys

from absl import flags

from jaxgpt import cli, runtime
from jaxgpt.config import INT32_MAX
from jaxgpt.errors import UserError, run_cli

_RUN = cli.define_run_flags(__name__, "sample from", "Sample from pretrained GPT-2 instead: "
                            "gpt2, gpt2-medium, gpt2-large, gpt2-xl or a Hugging Face GPT-2 "
                            "folder.", "pretrained GPT-2")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue; default a newline (or, for a "
                              "run whose text has none, its first character).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A UTF-8 file whose text to continue.")
_INTERACTIVE = flags.DEFINE_boolean("interactive", False, "Read prompts from stdin, one a "
                                    "line, until EOF; the run is loaded once.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens holding this "
                            "probability; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
_STOP = flags.DEFINE_string("stop", "", "End each sample before the first occurrence of this "
                            "text (not printed).")

SEPARATOR = "---------------"


def _check_flags() -> None:
  _RUN.check()
  for name, ok, accepted in (
      ("max_new_tokens", _MAX_NEW_TOKENS.value >= 0, "0 or more"),
      ("num_samples", _NUM_SAMPLES.value > 0, "1 or more"),
      ("temperature", 0 <= _TEMPERATURE.value < float("inf"), "0 (greedy) or more"),
      ("top_k", 0 <= _TOP_K.value <= INT32_MAX, f"0 (all tokens) to {INT32_MAX}"),
      ("top_p", 0 < _TOP_P.value <= 1, "more than 0 and at most 1"),
      ("seed", 0 <= _SEED.value <= INT32_MAX, f"0 to {INT32_MAX}")):
    if not ok:
      raise UserError(f"--{name}={flags.FLAGS[name].value} is out of range: pass {accepted}")
  _check_utf8(_STOP.value, "--stop")
  given = [f"--{name}" for name in ("prompt", "prompt_file", "interactive")
           if flags.FLAGS[name].present]
  if len(given) > 1:
    raise UserError(f"{' and '.join(given)} were both given: pass only one of them")


def _check_utf8(text: str, what: str) -> None:
  """Python keeps bytes of the command line or stdin that are not UTF-8 as lone surrogates,
  which no tokenizer or terminal takes."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise UserError(f"{what} is not valid UTF-8 text (byte 0x{ord(text[e.start]) & 0xff:02x} "
                    f"at character {e.start}): pass UTF-8 text") from None


def _file_prompt(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError:
    raise UserError(f"--prompt_file {os.path.abspath(path)} does not exist: pass the path "
                    "of a text file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"--prompt_file {path} cannot be read as UTF-8 text ({e}): pass a "
                    "UTF-8 text file") from None


def _write_samples(run, prompt: str, sampling) -> None:
  """Streams the first sample to stdout, then the others; the timing goes to stderr."""
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  if not prompt:
    raise UserError("the prompt is empty: give at least one character")
  _check_utf8(prompt, "the prompt")
  run.tokenizer.encode(prompt)  # a prompt it cannot encode fails before anything is printed
  timing = generate.Timing()
  rest = [""] * (_NUM_SAMPLES.value - 1)
  sys.stdout.write(prompt)
  for pieces in generate.generate_text(run.model, run.params, run.tokenizer, prompt,
                                       _MAX_NEW_TOKENS.value, sampling, _NUM_SAMPLES.value,
                                       _SEED.value, _STOP.value, timing):
    sys.stdout.write(pieces[0])
    sys.stdout.flush()
    rest = [text + piece for text, piece in zip(rest, pieces[1:])]
  print(f"\n{SEPARATOR}")
  for text in rest:
    print(f"{prompt}{text}\n{SEPARATOR}")
  sys.stdout.flush()
  print(timing.summary(), file=sys.stderr, flush=True)


def _interactive(run, sampling) -> None:
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is then reported
  while True:
    if sys.stdin.isatty():
      print("prompt> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
      return
    try:
      _write_samples(run, line.rstrip("\n") or generate.default_prompt(run.tokenizer), sampling)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.start_backend()
  cli.parse_flags(argv, __doc__)
  _check_flags()
  prompt = _file_prompt(_PROMPT_FILE.value) if _PROMPT_FILE.value else _PROMPT.value
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  run = _RUN.load()
  sampling = generate.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
  generate.check_memory(run.model, run.params, _NUM_SAMPLES.value)
  with run.context():
    if _INTERACTIVE.value:
      _interactive(run, sampling)
    else:
      _write_samples(run, generate.default_prompt(run.tokenizer) if prompt is None else prompt,
                     sampling)


if __name__ == "__main__":
  run_cli(main)

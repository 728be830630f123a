"""python -m jaxgpt.sample --workdir=DIR | --init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl|ORG/NAME|FOLDER
                         [--prompt=TEXT | --prompt_file=FILE | --interactive]
                         [--chat [--system=TEXT]]
                         [--max_new_tokens=N] [--num_samples=N] [--temperature=T] [--top_k=K]
                         [--top_p=P] [--seed=S] [--stop=TEXT] [--checkpoint=latest|best|STEP]
                         [--dtype=float32|bfloat16] [--quantize=none|int8]

Writes new text from a trained run (its config, tokenizer and newest checkpoint), or from a
pretrained model's weights (GPT-2 or the Llama family: the Hugging Face cache or hub, or a
local Hugging Face folder).
The first sample is printed as it is generated; with --num_samples > 1 the others follow
once it is done. Each sample is followed by a line of dashes. The time spent compiling
(first calls only) and the generation speed go to stderr.
A sample ends at the tokenizer's end-of-text or end-of-turn token (not printed).
--interactive loads the run once, then reads prompts from stdin, one a line, until EOF.
--chat sends the prompt to a chat model as the user's message (in the tokenizer's chat
template) and prints the answer alone; --interactive --chat holds one conversation.
--quantize=int8 samples with int8 weights (a quarter of the bytes a token reads; see
jaxgpt/quantize.py), --dtype=bfloat16 with bfloat16 weights and compute.
"""

import contextlib
import os
import sys

from absl import flags

from jaxgpt import cli, files, runtime
from jaxgpt.config import INT32_MAX, backend_precision
from jaxgpt.errors import UserError, report, run_cli

_RUN = cli.define_run_flags(__name__, "sample from", "Sample from a pretrained model instead: "
                            "gpt2, gpt2-medium, gpt2-large, gpt2-xl, a hub name such as "
                            "HuggingFaceTB/SmolLM2-135M-Instruct, or a Hugging Face GPT-2 or "
                            "Llama-family folder.", "a pretrained model")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue; default a newline (or, for a "
                              "run whose text has none, its first character).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A UTF-8 file whose text to continue.")
_INTERACTIVE = flags.DEFINE_boolean("interactive", False, "Read prompts from stdin, one a "
                                    "line, until EOF; the run is loaded once. With --chat, "
                                    "each line is the user's next message in one conversation.")
_CHAT = flags.DEFINE_boolean("chat", False, "The prompt is a user's message to a chat model: "
                             "it goes in the tokenizer's chat template, and only the answer is "
                             "printed, up to the end of its turn.")
_SYSTEM = flags.DEFINE_string("system", None, "With --chat: a system message before the "
                              "user's.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch (one "
                                    "with --interactive --chat).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens holding this "
                            "probability; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
_STOP = flags.DEFINE_string("stop", "", "End each sample before the first occurrence of this "
                            "text (not printed).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "The weights' and the "
                           "compute's dtype (logits stay float32); default bfloat16 on GPU and "
                           "TPU, float32 on CPU (where XLA's bfloat16 matmuls of a few rows "
                           "are slow).")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", "int8"], "int8: every weight matrix "
                              "in int8 with a scale per output channel, multiplied in int8 (the "
                              "fastest on CPU; the default run's validation loss moves by 0.002: "
                              "see BENCHMARKS.md).")

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
    raise UserError(f"{' and '.join(given)} were given together: pass only one of them")
  if _CHAT.value:
    _check_chat_flags(given)
  elif _SYSTEM.value is not None:
    raise UserError("--system is a chat's system message: pass --chat with it")


def _check_chat_flags(given: list[str]) -> None:
  if not given:
    raise UserError("--chat needs the user's message: pass --prompt, --prompt_file or "
                    "--interactive")
  if _INTERACTIVE.value and _NUM_SAMPLES.value > 1:
    raise UserError(f"--num_samples={_NUM_SAMPLES.value} with --interactive --chat: a "
                    "conversation goes on from one answer a turn; pass --num_samples=1")
  _check_utf8(_SYSTEM.value or "", "--system")


def _check_utf8(text: str, what: str) -> None:
  """Python keeps bytes of the command line or stdin that are not UTF-8 as lone surrogates,
  which no tokenizer or terminal takes."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise UserError(f"{what} is not valid UTF-8 text (byte 0x{ord(text[e.start]) & 0xff:02x} "
                    f"at character {e.start}): pass UTF-8 text") from None


def _file_prompt(path: str) -> str:
  if not os.path.exists(path):
    raise UserError(f"--prompt_file {os.path.abspath(path)} does not exist: pass the path "
                    "of a text file")
  return files.read_utf8(path, f"--prompt_file {path}")


def _check_prompt(prompt: str) -> None:
  if not prompt:
    raise UserError("the prompt is empty: give at least one character")
  _check_utf8(prompt, "the prompt")


def _write_samples(run, prompt: str, sampling, shown: str, chat: bool = False) -> str:
  """Streams the first sample to stdout, then the others, each after `shown` (the prompt, or
  nothing); the timing goes to stderr. Returns the first sample's new text. `chat`: the
  prompt is a chat template's text (generate.prompt_ids)."""
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  generate.prompt_ids(run.tokenizer, prompt, chat)  # one it cannot encode fails before output
  timing = generate.Timing()
  first, rest = "", [""] * (_NUM_SAMPLES.value - 1)
  sys.stdout.write(shown)
  for pieces in generate.generate_text(run.model, run.params, run.tokenizer, prompt,
                                       _MAX_NEW_TOKENS.value, sampling, _NUM_SAMPLES.value,
                                       _SEED.value, _STOP.value, timing, chat):
    sys.stdout.write(pieces[0])
    sys.stdout.flush()
    first += pieces[0]
    rest = [text + piece for text, piece in zip(rest, pieces[1:])]
  print(f"\n{SEPARATOR}")
  for text in rest:
    print(f"{shown}{text}\n{SEPARATOR}")
  sys.stdout.flush()
  print(timing.summary(), file=sys.stderr, flush=True)
  return first


def _continue(run, prompt: str, sampling) -> None:
  _check_prompt(prompt)
  _write_samples(run, prompt, sampling, shown=prompt)


def _check_chat_template(run) -> None:
  """Before anything is generated (in --interactive, before the first line)."""
  if not getattr(run.tokenizer, "chat_template", None):
    raise UserError(f"--chat needs a chat template, and the tokenizer of "
                    f"{run.workdir or _RUN.init_from.value} has none: sample without --chat, or "
                    "from a chat model (--init_from=its folder, or a run trained with "
                    "--config.data.tokenizer_path=its folder)")


def _chat_turn(run, conversation: list[dict], message: str, sampling) -> list[dict]:
  """Writes the answers to the user's `message` after `conversation`, whose oldest turns are
  dropped if it no longer fits the context with room for the answer; returns the conversation
  with the message and the first answer."""
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  _check_prompt(message)
  block_size = run.model.config.block_size
  # An answer longer than half the context pushes the conversation's start out anyway.
  max_prompt = block_size - min(_MAX_NEW_TOKENS.value, generate.refill_length(block_size))
  asked = conversation + [{"role": "user", "content": message}]
  prompt, kept = generate.chat_prompt(run.tokenizer, asked, max_prompt)
  if len(kept) < len(asked):
    print(f"dropped the oldest {(len(asked) - len(kept)) // 2} turn(s) of the conversation: "
          f"it no longer fit the model's context of {block_size} tokens with room for the "
          "answer", file=sys.stderr, flush=True)
  answer = _write_samples(run, prompt, sampling, shown="", chat=True)
  return kept + [{"role": "assistant", "content": answer}]


def _system_messages() -> list[dict]:
  return [] if _SYSTEM.value is None else [{"role": "system", "content": _SYSTEM.value}]


def _stdin_lines():
  """Lines of stdin, without their newline, until EOF; on a terminal, after a prompt sign."""
  sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is then reported
  while True:
    if sys.stdin.isatty():
      print("prompt> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
      return
    yield line.rstrip("\n")


@contextlib.contextmanager
def _reported():
  """A UserError in an interactive line is reported on stderr, and the next line goes on."""
  try:
    yield
  except UserError as e:
    report(e)


def _interactive(run, sampling) -> None:
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  for line in _stdin_lines():
    with _reported():
      _continue(run, line or generate.default_prompt(run.tokenizer), sampling)


def _interactive_chat(run, sampling) -> None:
  conversation = _system_messages()
  for line in _stdin_lines():
    with _reported():
      conversation = _chat_turn(run, conversation, line, sampling)


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.start_backend()
  cli.parse_flags(argv, __doc__)
  _check_flags()
  prompt = _file_prompt(_PROMPT_FILE.value) if _PROMPT_FILE.value else _PROMPT.value
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  run = _RUN.load().for_sampling(_DTYPE.value or backend_precision(), _QUANTIZE.value)
  sampling = generate.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
  generate.check_memory(run.model, run.params, _NUM_SAMPLES.value)
  if _CHAT.value:
    _check_chat_template(run)
  with run.context():
    if _CHAT.value and _INTERACTIVE.value:
      _interactive_chat(run, sampling)
    elif _CHAT.value:
      _chat_turn(run, _system_messages(), prompt, sampling)
    elif _INTERACTIVE.value:
      _interactive(run, sampling)
    else:
      _continue(run, generate.default_prompt(run.tokenizer) if prompt is None else prompt,
                sampling)


if __name__ == "__main__":
  run_cli(main)

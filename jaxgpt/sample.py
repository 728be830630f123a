"""python -m jaxgpt.sample --workdir=DIR [--prompt=TEXT] [--max_new_tokens=N] [--num_samples=N]
                         [--temperature=T] [--top_k=K] [--top_p=P] [--seed=S]

Writes new text from a trained run: loads its config, tokenizer and newest checkpoint.
"""

import time

from absl import flags

from jaxgpt import cli, runtime
from jaxgpt.errors import UserError, run_cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to sample from (as printed by train).")
_PROMPT = flags.DEFINE_string("prompt", "\n", "Text to continue.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens; 0 keeps all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Keep the smallest set of tokens holding this "
                            "probability; 1 keeps all.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed for sampling.")


def _check_flags() -> None:
  if not _WORKDIR.value:
    raise UserError("--workdir is required: pass the run folder that `python -m jaxgpt.train` "
                    "printed")
  for name, ok in (("max_new_tokens", _MAX_NEW_TOKENS.value >= 0),
                   ("num_samples", _NUM_SAMPLES.value > 0),
                   ("temperature", _TEMPERATURE.value >= 0),
                   ("top_k", _TOP_K.value >= 0),
                   ("top_p", 0 < _TOP_P.value <= 1)):
    if not ok:
      raise UserError(f"--{name}={flags.FLAGS[name].value} is out of range (see --help)")


def main(argv=None):
  runtime.configure_cpu_devices()
  cli.parse_flags(argv, __doc__)
  _check_flags()
  from jaxgpt import run_loader, generate  # pylint: disable=g-import-not-at-top
  run = run_loader.load_run(_WORKDIR.value)
  prompt_ids = run.tokenizer.encode(_PROMPT.value)
  sampling = generate.Sampling(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                               top_p=_TOP_P.value)
  started = time.perf_counter()
  with run.context():
    chunks = list(generate.generate(run.model, run.params, prompt_ids, _MAX_NEW_TOKENS.value,
                                    sampling,
                                    num_samples=_NUM_SAMPLES.value, seed=_SEED.value))
  seconds = time.perf_counter() - started
  for i in range(_NUM_SAMPLES.value):
    tokens = [t for chunk in chunks for t in chunk[i]]
    print(_PROMPT.value + run.tokenizer.decode(tokens))
    print("---------------")
  print(f"{_NUM_SAMPLES.value * _MAX_NEW_TOKENS.value} tokens in {seconds:.2f} s "
        "(compilation included)", flush=True)


if __name__ == "__main__":
  run_cli(main)

"""python -m jaxgpt.export --workdir=DIR --out=FOLDER [--checkpoint=latest|best|STEP]

Writes a run's model as a Hugging Face GPT-2 folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) that `transformers` loads with
GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained, giving the same logits.
LoRA adapters are merged into the weights they adapt. A character-level run's tokenizer is
written as a `tokenizers` word-level tokenizer over single characters. A model with a
non-GPT-2 option (model.position, norm, qk_norm, mlp, tie_embeddings) is not exported.
"""

import os

from absl import flags

from jaxgpt import cli, runtime
from jaxgpt.errors import UserError, run_cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to export (as printed by train).")
_OUT = flags.DEFINE_string("out", None, "The folder to write; it must not hold a model yet.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest (the newest readable), best "
                                  "(lowest validation loss) or a step number.")


def _check_flags() -> None:
  for name, flag in (("workdir", _WORKDIR), ("out", _OUT)):
    if not flag.value:
      raise UserError(f"--{name} is required: python -m jaxgpt.export --workdir=DIR --out=FOLDER")
  out = os.path.abspath(_OUT.value)
  if os.path.isdir(out) and os.listdir(out):
    raise UserError(f"--out={out} already has files in it: pass a new or empty folder "
                    "(nothing is overwritten)")


def export_run(run, out: str) -> None:
  """Writes a loaded run as a Hugging Face GPT-2 folder, LoRA adapters merged."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxgpt import hf_gpt2, lora  # pylint: disable=g-import-not-at-top
  model_config, params = run.model.config, run.params
  if model_config.lora_rank:
    params = lora.merge(params, model_config.lora_rank, model_config.lora_alpha)
    model_config = dataclasses.replace(model_config, lora_rank=0, lora_targets=())
  hf_gpt2.export(params, model_config, run.tokenizer, out)


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.start_backend()
  cli.parse_flags(argv, __doc__)
  _check_flags()
  from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
  run = run_loader.load_run(_WORKDIR.value, _CHECKPOINT.value)
  from jaxgpt import hf_gpt2  # pylint: disable=g-import-not-at-top
  hf_gpt2.check_exportable(run.model.config)  # before --out is made
  out = os.path.abspath(_OUT.value)
  try:
    os.makedirs(out, exist_ok=True)
    export_run(run, out)
  except OSError as e:
    raise UserError(f"--out={out} cannot be written ({e.strerror or e}): pass a folder you "
                    "can write to") from None
  print(f"wrote step {run.step} of {os.path.abspath(_WORKDIR.value)} to {out}\n"
        f"load it with: transformers.GPT2LMHeadModel.from_pretrained({out!r})", flush=True)


if __name__ == "__main__":
  run_cli(main)

"""python -m jaxgpt.export --workdir=DIR --out=FOLDER [--checkpoint=latest|best|STEP]

Writes a run's model as a Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) that `transformers` loads with
AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained, giving the same logits.
The model options pick the architecture (jaxgpt/hf_export.py): GPT-2's defaults write GPT-2
(GPT2LMHeadModel); model.position=rope, norm=rmsnorm and mlp=swiglu write Llama
(LlamaForCausalLM), and with model.qk_norm=True (and model.bias=False) Qwen3
(Qwen3ForCausalLM). Any other combination stops with an error before --out is made.
LoRA adapters are merged into the weights they adapt. A character-level run's tokenizer is
written as a `tokenizers` word-level tokenizer over single characters.
"""

import os
import shutil

from absl import flags

from jaxgpt import cli, runtime
from jaxgpt.errors import UserError, run_cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to export (as printed by train).")
_OUT = flags.DEFINE_string("out", None, "The folder to write; it must not hold a model yet.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", cli.CHECKPOINT_HELP)


def _check_flags() -> None:
  for name, flag in (("workdir", _WORKDIR), ("out", _OUT)):
    if not flag.value:
      raise UserError(f"--{name} is required: python -m jaxgpt.export --workdir=DIR --out=FOLDER")
  out = os.path.abspath(_OUT.value)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out={out} is a file: pass a new or empty folder (nothing is "
                    "overwritten)")
  if os.path.isdir(out) and os.listdir(out):
    raise UserError(f"--out={out} already has files in it: pass a new or empty folder "
                    "(nothing is overwritten)")


def export_run(run, out: str) -> str:
  """Writes a loaded run as a Hugging Face folder of its architecture, LoRA adapters merged;
  returns the transformers class that loads it."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxgpt import hf_export, hf_gpt2, hf_llama, lora, pretrained  # pylint: disable=g-import-not-at-top
  model_config, params = run.model.config, run.params
  architecture = hf_export.check_exportable(model_config)
  if model_config.lora_rank:
    params = lora.merge(params, model_config.lora_rank, model_config.lora_alpha)
    model_config = dataclasses.replace(model_config, lora_rank=0, lora_targets=())
  if architecture == "GPT-2":
    hf_gpt2.export(params, model_config, run.tokenizer, out)
  else:  # with the config.json of the model the run was fine-tuned from, if any
    base = pretrained.saved_hf_config(run.workdir) if run.workdir else None
    hf_llama.export(params, model_config, run.tokenizer, out, base)
  return hf_export.HF_CLASSES[architecture][1]


def _export_whole(run, out: str) -> str:
  """export_run into a new folder beside `out`, renamed to `out` once complete: a failed or
  interrupted export leaves no half-written model, and removes only the folder it made."""
  parent, name = os.path.split(out.rstrip(os.sep))
  partial = os.path.join(parent, f".{name}.{os.getpid()}.partial")
  os.makedirs(partial)  # not an existing one: it would not be this export's to remove
  try:
    hf_class = export_run(run, partial)
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked at start); Windows renames onto no folder
    os.rename(partial, out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return hf_class


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.start_backend()
  cli.parse_flags(argv, __doc__)
  _check_flags()
  from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
  run = run_loader.load_run(_WORKDIR.value, _CHECKPOINT.value)
  from jaxgpt import hf_export  # pylint: disable=g-import-not-at-top
  hf_export.check_exportable(run.model.config)  # before --out is made
  out = os.path.abspath(_OUT.value)
  try:
    hf_class = _export_whole(run, out)
  except OSError as e:
    raise UserError(f"--out={out} cannot be written ({e.strerror or e}): pass a folder you "
                    "can write to") from None
  print(f"wrote step {run.step} of {os.path.abspath(_WORKDIR.value)} to {out}\n"
        f"load it with: transformers.{hf_class}.from_pretrained({out!r}) (or "
        "AutoModelForCausalLM)", flush=True)


if __name__ == "__main__":
  run_cli(main)

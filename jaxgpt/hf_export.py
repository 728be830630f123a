"""Which Hugging Face transformers architecture a run's model exports as, and the files that
every export writes: config.json, model.safetensors and the tokenizer's files.

The model options (jaxgpt/model.py) decide the architecture. GPT-2's defaults export as GPT-2
(jaxgpt/hf_gpt2.py); rotary positions, RMSNorm and a SwiGLU MLP export as Llama, with biases
on q, k and v only as Qwen2, and with QK-norm as Qwen3 (jaxgpt/hf_llama.py). Any other
combination has no transformers equivalent. Options an architecture does not name may take
any value: `zero_init_proj` changes only the start, an untied head is the Llama family's
`lm_head`, and biases are GPT-2's (zeros when the model has none) and Llama's
`attention_bias` and `mlp_bias` (Qwen2's and Qwen3's MLPs have none). The Llama family also
takes grouped-query attention, any head size and Llama 3's rope scaling; GPT-2 none of them.
"""

import json
import os

import jax
import numpy as np

from jaxgpt import layers
from jaxgpt.config import gpt2_architecture
from jaxgpt.data.tokenizer import write_hf_tokenizer
from jaxgpt.errors import UserError
from jaxgpt.model import GPTConfig

HF_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_LLAMA = {"position": "rope", "norm": "rmsnorm", "qk_norm": False, "mlp": "swiglu",
          "qkv_bias": False}
# The model options each architecture needs (the others may take any value).
ARCHITECTURES = {"GPT-2": gpt2_architecture(), "Llama": _LLAMA,
                 "Qwen2": {**_LLAMA, "qkv_bias": True, "bias": False},
                 "Qwen3": {**_LLAMA, "qk_norm": True, "bias": False}}
# Each architecture's transformers model_type and model class.
HF_CLASSES = {"GPT-2": ("gpt2", "GPT2LMHeadModel"), "Llama": ("llama", "LlamaForCausalLM"),
              "Qwen2": ("qwen2", "Qwen2ForCausalLM"), "Qwen3": ("qwen3", "Qwen3ForCausalLM")}
GENERATION_CONFIG_FILE = "generation_config.json"


def _differences(model_config: GPTConfig, options: dict) -> dict:
  """The options the model would need to change to be exported as `options`' architecture."""
  return {name: value for name, value in options.items()
          if getattr(model_config, name) != value}


def check_exportable(model_config: GPTConfig) -> str:
  """The architecture (a key of ARCHITECTURES) that the model exports as, or a UserError
  naming the options that the closest architectures lack, what each one needs, and the flags
  that make a new run export as the closest."""
  differences = {name: _differences(model_config, options)
                 for name, options in ARCHITECTURES.items()}
  fewest = min(map(len, differences.values()))
  if not fewest:
    architecture = next(name for name, diff in differences.items() if not diff)
    _check_gpt2_heads(model_config, architecture)
    return architecture
  closest = [name for name, diff in differences.items() if len(diff) == fewest]
  lacks = [f"{name} has no " + ", ".join(f"model.{option}={getattr(model_config, option)!r}"
                                         for option in differences[name]) for name in closest]
  *others, last = (f"{name} ({', '.join(f'{n}={v!r}' for n, v in options.items())})"
                   for name, options in ARCHITECTURES.items())
  flags = " ".join(f"--config.model.{option}={value}"
                   for option, value in differences[closest[0]].items())
  raise UserError(f"this run's model options have no Hugging Face transformers equivalent "
                  f"({'; '.join(lacks)}): export writes only models with the options of "
                  f"{', '.join(others)} or {last}; a trained run keeps its options: train a "
                  f"new run with {flags} to export it as {closest[0]}")


def _check_gpt2_heads(c: GPTConfig, architecture: str) -> None:
  if architecture == "GPT-2" and (c.group_size != 1 or c.head_size * c.n_head != c.n_embd
                                  or c.rope_scaling):
    raise UserError("GPT-2 has no grouped-query attention, head size other than n_embd / "
                    "n_head or rope scaling, which this run's model has (model.n_kv_head, "
                    "model.head_dim, model.rope_scaling): export writes them only as the "
                    "Llama family; train a new run with --config.model.position=rope "
                    "--config.model.norm=rmsnorm --config.model.mlp=swiglu to export it as "
                    "Llama")


def exported_params(params, model_config: GPTConfig, architectures: tuple) -> tuple:
  """(architecture, parameters): the model's architecture, which must be one of
  `architectures` (those the caller writes), and its parameters on the host as float32 NumPy
  arrays, the blocks unrolled and the vocabulary's padding cut from `wte` and `lm_head`.
  LoRA adapters must already be merged (jaxgpt.lora.merge)."""
  architecture = check_exportable(model_config)
  if architecture not in architectures:
    raise ValueError(f"a {architecture} model, but this writes only {', '.join(architectures)}")
  params = jax.tree.map(lambda x: np.asarray(x, np.float32),
                        layers.unstack_layers(jax.device_get(params)))
  v = model_config.vocab_size
  params["wte"] = params["wte"][:v]
  if "lm_head" in params:
    params["lm_head"] = params["lm_head"][:, :v]
  return architecture, params


def _default_permissions(path: str) -> None:
  """safetensors creates its file readable by its owner only; give it the mode that the
  other files (and `open`) get under the user's umask."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def write_folder(folder: str, architecture: str, tensors: dict, hf_config: dict, tokenizer,
                 model_config: GPTConfig) -> None:
  """Writes `tensors` (Hugging Face name: array) as model.safetensors, `hf_config` with the
  keys every architecture shares as config.json, and the tokenizer's files."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  weights = os.path.join(folder, WEIGHTS_FILE)
  save_file({name: np.ascontiguousarray(value, np.float32) for name, value in tensors.items()},
            weights, metadata={"format": "pt"})
  _default_permissions(weights)
  model_type, hf_class = HF_CLASSES[architecture]
  eos = tokenizer.end_of_text_id
  bos = getattr(tokenizer, "begin_of_text_id", None)
  hf_config = {"bos_token_id": eos if bos is None else bos, "eos_token_id": eos, **hf_config,
               "architectures": [hf_class], "model_type": model_type,
               "vocab_size": model_config.vocab_size,
               "tie_word_embeddings": model_config.tie_embeddings, "dtype": "float32"}
  hf_config.pop("torch_dtype", None)
  _write_json(os.path.join(folder, HF_CONFIG_FILE), hf_config)
  stop_ids = list(getattr(tokenizer, "stop_ids", ()))
  if len(stop_ids) > 1:  # transformers' generate stops at each end-of-turn token too
    _write_json(os.path.join(folder, GENERATION_CONFIG_FILE),
                {"bos_token_id": hf_config["bos_token_id"], "eos_token_id": stop_ids})
  write_hf_tokenizer(tokenizer, folder, model_config.block_size)


def _write_json(path: str, value: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)

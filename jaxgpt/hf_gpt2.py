"""Hugging Face GPT-2 folders (config.json, model.safetensors, tokenizer files): the model
options and weights jaxgpt/pretrained.py reads from one, and a run written back out as one.

The mapping is done here, without transformers or torch: GPT-2 stores its Linear layers
as Conv1D, whose (in, out) weights are already the layout of a Dense kernel; they only need
reshaping to jaxgpt's (D, 3, H, K) and (H, K, D) attention kernels. The vocabulary is padded
with zero rows on the way in and cut back on the way out.
"""

import flax.traverse_util
import numpy as np

from jaxgpt import hf_export, pretrained
from jaxgpt.config import gpt2_architecture
from jaxgpt.errors import UserError, first_line
from jaxgpt.model import GPTConfig, unrolled_name

MODEL_TYPES = ("gpt2",)
NAME = "GPT-2"


def model_options(hf: dict, path: str) -> tuple[dict, int]:
  """The model options of a GPT-2 config.json and its context length; variants jaxgpt's
  GPT-2 does not implement are refused."""
  unsupported = {
      "activation_function": hf.get("activation_function", "gelu_new") not in
                             ("gelu_new", "gelu_pytorch_tanh"),
      "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False),
      "scale_attn_weights": not hf.get("scale_attn_weights", True),
      "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
  }
  for key, bad in unsupported.items():
    if bad:
      raise UserError(f"{path} sets {key}={hf.get(key)!r}, which jaxgpt's GPT-2 does not "
                      "implement: use a standard GPT-2 checkpoint")
  try:
    options = {**gpt2_architecture(), "n_layer": int(hf["n_layer"]), "n_head": int(hf["n_head"]),
               "n_embd": int(hf["n_embd"]), "bias": True, "n_kv_head": 0, "head_dim": 0,
               "rope_scaling": "",
               "norm_eps": float(hf.get("layer_norm_epsilon", GPTConfig.norm_eps)),
               "mlp_width": int(hf.get("n_inner") or 0)}
    return options, int(hf["n_positions"])
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{path} lacks a usable {first_line(e)}: pass a complete GPT-2 "
                    "config.json") from None


def _tensor_table(c: GPTConfig):
  """(Hugging Face name, jaxgpt parameter path, Hugging Face shape) of every GPT-2 tensor."""
  d = c.n_embd
  rows = [("wte.weight", ("wte",), (c.vocab_size, d)),
          ("wpe.weight", ("wpe",), (c.block_size, d))]

  def layer_norm(hf, ours):
    rows.extend([(f"{hf}.weight", ours + ("scale",), (d,)),
                 (f"{hf}.bias", ours + ("bias",), (d,))])

  def conv1d(hf, ours, n_in, n_out):
    rows.extend([(f"{hf}.weight", ours + ("kernel",), (n_in, n_out)),
                 (f"{hf}.bias", ours + ("bias",), (n_out,))])

  for i in range(c.n_layer):
    hf, ours = f"h.{i}", (unrolled_name(i),)
    layer_norm(f"{hf}.ln_1", ours + ("ln_1",))
    conv1d(f"{hf}.attn.c_attn", ours + ("attn", "c_attn"), d, 3 * d)
    conv1d(f"{hf}.attn.c_proj", ours + ("attn", "c_proj"), d, d)
    layer_norm(f"{hf}.ln_2", ours + ("ln_2",))
    conv1d(f"{hf}.mlp.c_fc", ours + ("mlp", "c_fc"), d, c.mlp_features)
    conv1d(f"{hf}.mlp.c_proj", ours + ("mlp", "c_proj"), c.mlp_features, d)
  layer_norm("ln_f", ("ln_f",))
  return rows


def import_rules(c: GPTConfig) -> list:
  """How each parameter is read: the vocabulary padded, the positions cut to block_size."""
  pad_vocab = pretrained.padded_vocab(c)
  rules = []
  for name, path, hf_shape in _tensor_table(c):
    if name == "wte.weight":
      make = pad_vocab
    elif name == "wpe.weight":
      make = lambda w, shape=hf_shape, path=path: _reshaped(w[:c.block_size], shape, path)
    else:
      make = lambda w, shape=hf_shape, path=path: _reshaped(w, shape, path)
    rules.append(pretrained.Rule(path, (name,), make))
  return rules


def _reshaped(value: np.ndarray, hf_shape, path) -> np.ndarray:
  """The tensor, checked against config.json's shape (pretrained.load_params reshapes Conv1D
  weights to jaxgpt's (D, 3, H, K) and (H, K, D) attention kernels)."""
  if value.shape != tuple(hf_shape):
    raise UserError(f"{'.'.join(path)} has shape {value.shape} in the folder but its config.json "
                    f"implies {tuple(hf_shape)}: the folder's weights and config.json do not "
                    "match")
  return value


def export(params, model_config: GPTConfig, tokenizer, folder: str) -> None:
  """Writes a Hugging Face GPT-2 folder that `transformers` loads (GPT2LMHeadModel).

  Parameters a bias-free model lacks are written as zeros, which computes the same.
  """
  c = model_config
  architecture, params = hf_export.exported_params(params, c, ("GPT-2",))
  flat = flax.traverse_util.flatten_dict(params)
  tensors = {f"transformer.{name}": (np.zeros(hf_shape, np.float32) if path not in flat
                                     else flat[path].reshape(hf_shape))
             for name, path, hf_shape in _tensor_table(c)}
  hf_config = {
      "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
      "n_head": c.n_head, "n_inner": c.mlp_width or None, "activation_function": "gelu_new",
      "layer_norm_epsilon": c.norm_eps, "resid_pdrop": c.dropout,
      "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
  }
  hf_export.write_folder(folder, architecture, tensors, hf_config, tokenizer, c)

"""Hugging Face GPT-2 folders (config.json, model.safetensors, tokenizer files): find one,
read its weights straight onto the mesh, and write a run back out as one.

The mapping is done here, without transformers or torch: GPT-2 stores its Linear layers
as Conv1D, whose (in, out) weights are already the layout of a Dense kernel; they only need
reshaping to jaxgpt's (D, 3, H, K) and (H, K, D) attention kernels. The vocabulary is padded
with zero rows on the way in and cut back on the way out.
"""

import json
import os

import flax.traverse_util
import jax
import numpy as np

from jaxgpt import hf_export, layers
from jaxgpt.data.tokenizer import FILENAME as TOKENIZER_FILE, BPETokenizer
from jaxgpt.errors import UserError, first_line
from jaxgpt.model import GPTConfig, unrolled_name

HUB_REPOS = {name: f"openai-community/{name}"
             for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
HF_CONFIG_FILE, WEIGHTS_FILE = hf_export.HF_CONFIG_FILE, hf_export.WEIGHTS_FILE
WEIGHTS_INDEX = "model.safetensors.index.json"
_HUB_FILES = [HF_CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX, "model-*.safetensors",
              TOKENIZER_FILE, "vocab.json", "merges.txt"]


def resolve(init_from: str) -> str:
  """The local folder for `gpt2`..`gpt2-xl` (Hugging Face cache, else download) or a path."""
  if init_from not in HUB_REPOS:
    folder = os.path.abspath(os.path.expanduser(init_from))
    if not os.path.isfile(os.path.join(folder, HF_CONFIG_FILE)):
      raise UserError(f"init_from={init_from!r} is neither {', '.join(HUB_REPOS)} nor a "
                      f"Hugging Face GPT-2 folder ({folder}/{HF_CONFIG_FILE} is missing): pass one")
    return folder
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  repo = HUB_REPOS[init_from]
  try:
    return huggingface_hub.snapshot_download(repo, allow_patterns=_HUB_FILES,
                                             local_files_only=True)
  except Exception:  # pylint: disable=broad-except
    pass  # not cached yet: download it
  try:
    return huggingface_hub.snapshot_download(repo, allow_patterns=_HUB_FILES)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{init_from} is not in the Hugging Face cache and could not be downloaded "
                    f"from {repo} ({first_line(e)}): connect to the internet once, or pass "
                    "--init_from=FOLDER with a downloaded copy") from None


def read_config(folder: str) -> dict:
  """The GPT-2 shape from config.json; architectures jaxgpt cannot reproduce are refused."""
  path = os.path.join(folder, HF_CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} cannot be read ({first_line(e)}): pass a Hugging Face GPT-2 "
                    "folder") from None
  if hf.get("model_type", "gpt2") != "gpt2":
    raise UserError(f"{path} describes a {hf['model_type']!r} model: jaxgpt loads only GPT-2 "
                    "(model_type gpt2)")
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
  return {**{key: int(hf[key]) for key in ("n_layer", "n_head", "n_embd", "n_positions",
                                           "vocab_size")},
          "layer_norm_epsilon": float(hf.get("layer_norm_epsilon", GPTConfig.norm_eps)),
          "n_inner": int(hf.get("n_inner") or 0)}


def configure(config, folder: str) -> None:
  """Gives `config` (unlocked) the pretrained model's shape and the GPT-2 tokenizer.

  `model.block_size` is kept if shorter than the model's context (the position table is
  cut, as nanoGPT's crop_block_size does); everything else about the shape is the model's.
  """
  hf = read_config(folder)
  config.model.update(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                      bias=True, block_size=min(config.model.block_size, hf["n_positions"]),
                      norm_eps=hf["layer_norm_epsilon"], mlp_width=hf["n_inner"])
  config.data.tokenizer = "gpt2"


def load_tokenizer(folder: str) -> BPETokenizer:
  """The folder's tokenizer, sized to the model's vocabulary (which may be larger)."""
  vocab_size = read_config(folder)["vocab_size"]
  tokenizer = BPETokenizer.from_folder(folder, vocab_size)
  if tokenizer.num_tokens > vocab_size:
    raise UserError(f"the tokenizer in {folder} has {tokenizer.num_tokens} tokens but the model "
                    f"only {vocab_size}: pass a folder whose tokenizer matches its model")
  return tokenizer


def run_tokenizer(config, pretrained: str | None):
  """GPT-2's tokenizer from the pretrained folder, data.tokenizer_path or the hub; None for
  a character tokenizer, which build_dataset makes from the text."""
  if config.data.tokenizer != "gpt2" or config.data.source == "tokens":
    return None
  if pretrained:
    return load_tokenizer(pretrained)
  return BPETokenizer.from_folder(config.data.tokenizer_path or resolve("gpt2"))


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


class _Weights:
  """Reads tensors by name from model.safetensors (or its shards), one at a time."""

  def __init__(self, folder: str):
    index_path = os.path.join(folder, WEIGHTS_INDEX)
    if os.path.isfile(index_path):
      with open(index_path, encoding="utf-8") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
      files = [WEIGHTS_FILE]
    else:
      raise UserError(f"{folder} has no {WEIGHTS_FILE}: jaxgpt reads safetensors weights only "
                      "(save the model with transformers' save_pretrained to get one)")
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self._open, self._names, self.folder = {}, {}, folder
    for file in files:
      self._open[file] = safe_open(os.path.join(folder, file), framework="numpy")
      self._names.update({key.removeprefix("transformer."): (file, key)
                          for key in self._open[file].keys()})

  def get(self, name: str) -> np.ndarray:
    if name not in self._names:
      raise UserError(f"{self.folder}/{WEIGHTS_FILE} has no tensor {name}: pass a complete "
                      "GPT-2 checkpoint")
    file, key = self._names[name]
    try:
      return np.asarray(self._open[file].get_tensor(key), np.float32)
    except (TypeError, ValueError) as e:
      raise UserError(f"tensor {key} in {self.folder} cannot be read as float32 "
                      f"({first_line(e)}): save the model in float32 or float16") from None


def _to_jaxgpt(name: str, value: np.ndarray, hf_shape, target_shape, c: GPTConfig):
  """One Hugging Face tensor in jaxgpt's shape: positions cut, vocabulary padded."""
  if name == "wpe.weight":
    if value.shape[0] < c.block_size or value.shape[1:] != hf_shape[1:]:
      raise UserError(f"wpe.weight has shape {value.shape} but the model needs at least "
                      f"{hf_shape}: its config.json does not match its weights")
    value = value[:c.block_size]
  elif value.shape != tuple(hf_shape):
    raise UserError(f"{name} has shape {value.shape} but config.json implies {hf_shape}: the "
                    "folder's weights and config.json do not match")
  if name == "wte.weight":
    value = np.pad(value, ((0, c.padded_vocab_size - c.vocab_size), (0, 0)))
  return value.reshape(target_shape)


def load_params(folder: str, model_config: GPTConfig, abstract_params) -> dict:
  """The folder's weights as jaxgpt parameters of the shapes and shardings in
  `abstract_params` (ShapeDtypeStructs), each array created shard by shard on the devices
  that hold it (so a model larger than one device loads); read layer by layer, then stacked
  for the scanned form."""
  weights = _Weights(folder)
  targets = flax.traverse_util.flatten_dict(layers.unstack_layers(abstract_params))
  params = {}
  for name, path, hf_shape in _tensor_table(model_config):
    if path not in targets:
      continue  # a bias-free model has no biases to load
    target = targets[path]
    value = _to_jaxgpt(name, weights.get(name), hf_shape, target.shape, model_config)
    params[path] = jax.make_array_from_callback(target.shape, target.sharding,
                                                lambda index, v=value: v[index])
  return layers.converted(flax.traverse_util.unflatten_dict(params), abstract_params)


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

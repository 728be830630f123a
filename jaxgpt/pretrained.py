"""Pretrained models from Hugging Face folders (init_from): find the folder (a path, or a hub
name from the Hugging Face cache or the hub), read its config.json, give the run the model's
options and tokenizer, and read its weights onto the mesh tensor by tensor.

Each architecture's own mapping lives in its module: GPT-2's in jaxgpt/hf_gpt2.py; Llama's,
Mistral's, Qwen2's and Qwen3's (SmolLM2 is a Llama) in jaxgpt/hf_llama.py. A module gives
`model_options(hf_config, path)`, the model options and context length its config.json
means (a UserError for anything jaxgpt would only approximate), and `import_rules(config)`,
how each jaxgpt parameter is made from the folder's tensors.

Weights are read from the safetensors files directly: each tensor is read from its offset,
converted to float32 and placed on the devices that hold it before the next is read, so the
host holds about one tensor (and the pieces of a parameter made of several) at a time,
whatever the size of the shards.
"""

import dataclasses
import json
import os
from typing import Callable

import flax.traverse_util
import jax
import numpy as np

from jaxgpt import files, hf_export, hub, layers
from jaxgpt.data.tokenizer import FILENAME as TOKENIZER_FILE, BPETokenizer
from jaxgpt.errors import UserError, first_line

HF_CONFIG_FILE, WEIGHTS_FILE = hf_export.HF_CONFIG_FILE, hf_export.WEIGHTS_FILE
WEIGHTS_INDEX = "model.safetensors.index.json"
_HUB_FILES = [HF_CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX, "model-*.safetensors",
              TOKENIZER_FILE, "vocab.json", "merges.txt", "tokenizer_config.json",
              "generation_config.json", "special_tokens_map.json", "chat_template.jinja"]
SAVED_CONFIG_FILE = "pretrained_config.json"  # the pretrained config.json, kept in the workdir


@dataclasses.dataclass(frozen=True)
class Rule:
  """One jaxgpt parameter (its path in the unrolled form) made from the folder's tensors."""
  path: tuple
  names: tuple  # the Hugging Face tensors it is made from
  make: Callable[..., np.ndarray]  # those tensors, in order -> the parameter in jaxgpt's shape


def padded_vocab(c) -> Callable[[np.ndarray], np.ndarray]:
  """A (vocab_size, D) table of the folder, rows added up to the model's padded_vocab_size;
  a table of another size than config.json's vocab_size is a UserError."""
  def pad(table: np.ndarray) -> np.ndarray:
    if table.shape[0] != c.vocab_size:
      raise UserError(f"the folder's {table.shape[0]} rows of token weights do not match its "
                      f"{HF_CONFIG_FILE}'s vocab_size={c.vocab_size}: pass a folder whose "
                      f"weights and {HF_CONFIG_FILE} belong together")
    return np.pad(table, ((0, c.padded_vocab_size - c.vocab_size), (0, 0)))
  return pad


def resolve(init_from: str) -> str:
  """The local folder of `init_from`: a path, GPT-2's short names, or a hub name
  (ORG/NAME) from the Hugging Face cache, else downloaded."""
  folder = _local_folder(init_from)
  if folder:
    _check_not_a_run(folder, init_from)
    return folder
  folder = os.path.abspath(os.path.expanduser(init_from))
  gpt2_repo = hub.GPT2_REPOS.get(init_from)
  if not gpt2_repo and (init_from.count("/") != 1 or _is_path(init_from)
                        or os.path.exists(folder)):
    raise UserError(f"init_from={init_from!r} is not a Hugging Face model folder ({folder}/"
                    f"{HF_CONFIG_FILE} is missing) nor a hub name such as gpt2 or "
                    "HuggingFaceTB/SmolLM2-135M: pass one")
  return hub.snapshot(
      gpt2_repo or init_from, _HUB_FILES, _missing_model, init_from,
      "connect to the internet once (and log in with `hf auth login` for gated models), or "
      "point init_from at a downloaded copy's folder (--config.init_from=FOLDER for train, "
      "--init_from=FOLDER for sample and eval)")


def _local_folder(init_from: str) -> str | None:
  """The folder `init_from` names from here when it holds a config.json, else None."""
  folder = os.path.abspath(os.path.expanduser(init_from))
  return folder if os.path.isfile(os.path.join(folder, HF_CONFIG_FILE)) else None


def _is_path(init_from: str) -> bool:
  """A name that can only be a path, never a hub name (ORG/NAME)."""
  return init_from.startswith(("./", "../", "~")) or os.path.isabs(init_from)


def _check_not_a_run(folder: str, init_from: str) -> None:
  """A jaxgpt run's workdir has a config.json too, but not a Hugging Face one."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  config = files.read_json(os.path.join(folder, HF_CONFIG_FILE))
  if isinstance(config, dict) and config_lib.is_run_config(config):
    raise UserError(f"init_from={init_from} is a jaxgpt run's workdir, not a Hugging Face model "
                    f"folder: sample or evaluate it with --workdir={init_from}; to train it "
                    f"further, resume it with python -m jaxgpt.train --workdir={init_from}, or "
                    f"export it (python -m jaxgpt.export --workdir={init_from} --out=FOLDER) "
                    "and fine-tune --config.init_from=FOLDER")


def absolute_init_from(init_from: str) -> str:
  """init_from as a run's config.json records it: a local folder from the root (the run is
  resumed from any folder), a hub name as typed."""
  return _local_folder(init_from) or init_from


def same_model(given: str, saved: str, workdir: str) -> bool:
  """Whether init_from=`given` names the model that the run in `workdir`, saved with
  init_from=`saved`, started from: the same folder by another path, or where the saved
  folder is gone, a moved copy of it (with the config.json the run kept)."""
  folder, saved_folder = _local_folder(given), _local_folder(saved)
  if folder is None:
    return False
  if saved_folder is not None:
    return os.path.samefile(folder, saved_folder)
  kept = saved_hf_config(workdir)
  return os.path.isabs(saved) and kept is not None and read_hf_config(folder) == kept


def _missing_model(folder: str) -> str | None:
  if not os.path.isfile(os.path.join(folder, HF_CONFIG_FILE)):
    return HF_CONFIG_FILE
  if not any(os.path.isfile(os.path.join(folder, f)) for f in (WEIGHTS_FILE, WEIGHTS_INDEX)):
    return WEIGHTS_FILE
  return None


def read_hf_config(folder: str) -> dict:
  return read_hf_config_file(os.path.join(folder, HF_CONFIG_FILE))


def read_hf_config_file(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} cannot be read ({first_line(e)}): pass a Hugging Face model "
                    "folder") from None
  if not isinstance(hf, dict):
    raise UserError(f"{path} is not a JSON object: pass a Hugging Face model folder")
  return hf


def save_hf_config(folder: str, workdir: str) -> None:
  """Keeps the pretrained model's config.json in the run's workdir, for export."""
  files.write_atomically(os.path.join(workdir, SAVED_CONFIG_FILE),
                         json.dumps(read_hf_config(folder), indent=2))


def saved_hf_config(workdir: str) -> dict | None:
  """The pretrained model's config.json that a fine-tuning run kept, or None."""
  path = os.path.join(workdir, SAVED_CONFIG_FILE)
  return read_hf_config_file(path) if os.path.isfile(path) else None


def architecture(folder: str):
  """The module that maps the folder's architecture (config.json's model_type)."""
  from jaxgpt import hf_gpt2, hf_llama  # pylint: disable=g-import-not-at-top
  model_type = read_hf_config(folder).get("model_type", "gpt2")
  for module in (hf_gpt2, hf_llama):
    if model_type in module.MODEL_TYPES:
      return module
  known = sorted(t for module in (hf_gpt2, hf_llama) for t in module.MODEL_TYPES)
  raise UserError(f"{folder}/{HF_CONFIG_FILE} describes a {model_type!r} model, which jaxgpt "
                  f"does not load: it loads model_type {', '.join(known)}")


def model_options(folder: str) -> tuple[str, dict, int]:
  """(architecture name, model options, context length) of the folder's model."""
  module = architecture(folder)
  path = os.path.join(folder, HF_CONFIG_FILE)
  options, context = module.model_options(read_hf_config(folder), path)
  return module.NAME, options, context


def configure(config, folder: str, explicit: set[str] = frozenset()) -> None:
  """Gives `config` (unlocked) the pretrained model's options and tokenizer. An option given
  on the command line (`explicit`) that the model does not have is a UserError.
  `model.block_size` is kept if shorter than the model's context (a learned position table is
  cut, as nanoGPT's crop_block_size does); a config file's longer one is cut to the context."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  name, options, context = model_options(folder)
  config_lib.adopt_architecture(config, name, options, explicit)
  if "model.block_size" in explicit and config.model.block_size > context:
    raise UserError(f"--config.model.block_size={config.model.block_size} is longer than the "
                    f"{context} positions init_from={config.init_from} was trained for: pass "
                    f"{context} or less")
  config.model.block_size = min(config.model.block_size, context)
  given = [f"--config.data.{key}={config.data[key]}" for key in ("tokenizer", "tokenizer_path")
           if f"data.{key}" in explicit and config.data[key] not in ("gpt2", "")]
  if given:
    raise UserError(f"{', '.join(given)} names another tokenizer than init_from="
                    f"{config.init_from}'s own, which a fine-tune keeps: drop it, or train "
                    "with init_from=scratch")
  config.data.tokenizer = "gpt2"


def load_tokenizer(folder: str) -> BPETokenizer:
  """The folder's tokenizer with its special tokens and chat template, sized to the model's
  vocabulary (which may be larger)."""
  vocab_size = int(read_hf_config(folder).get("vocab_size", 0))
  tokenizer = BPETokenizer.from_folder(folder, vocab_size)
  if tokenizer.num_tokens > vocab_size:
    raise UserError(f"the tokenizer in {folder} has {tokenizer.num_tokens} tokens but the model "
                    f"only {vocab_size}: pass a folder whose tokenizer matches its model")
  return tokenizer


def run_tokenizer(config, pretrained: str | None):
  """The pretrained folder's tokenizer, data.tokenizer_path's or GPT-2's from the hub; None
  for a character tokenizer, which build_dataset makes from the text."""
  if config.data.tokenizer != "gpt2" or config.data.source == "tokens":
    return None
  if pretrained:
    return load_tokenizer(pretrained)
  return BPETokenizer.from_folder(config.data.tokenizer_path
                                  or hub.gpt2_tokenizer("--config.data.tokenizer_path"))


def load_params(folder: str, model_config, abstract_params) -> dict:
  """The folder's weights as jaxgpt parameters of the shapes and shardings in
  `abstract_params` (ShapeDtypeStructs), each created shard by shard on the devices that
  hold it (so a model larger than one device loads); read layer by layer, then stacked for
  the scanned form. Parameters the folder lacks (LoRA's adapters) are left to the caller."""
  targets = flax.traverse_util.flatten_dict(layers.unstack_layers(abstract_params))
  rules = [r for r in architecture(folder).import_rules(model_config) if r.path in targets]
  tensors = _SafetensorsFolder(folder)
  params = {}
  for rule in rules:
    value = rule.make(*(tensors.read(name) for name in rule.names))
    target = targets[rule.path]
    if value.size == np.prod(target.shape):  # (in, out) weights to the kernel's named axes
      value = value.reshape(target.shape)
    if value.shape != target.shape:
      raise UserError(f"{', '.join(rule.names)} in {folder} give shape {value.shape} where the "
                      f"model of its {HF_CONFIG_FILE} needs {target.shape}: the folder's "
                      f"weights and {HF_CONFIG_FILE} do not match")
    params[rule.path] = jax.make_array_from_callback(target.shape, target.sharding,
                                                     lambda index, v=value: v[index])
  return layers.converted(flax.traverse_util.unflatten_dict(params), abstract_params)


# safetensors' dtype names and the NumPy types their bytes are (bfloat16 from ml_dtypes,
# which JAX brings).
def _numpy_dtypes() -> dict:
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return {"F64": np.float64, "F32": np.float32, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16}


class _SafetensorsFolder:
  """Reads tensors by name from model.safetensors or its shards: the headers once, then each
  tensor from its byte range, as float32."""

  def __init__(self, folder: str):
    index_path = os.path.join(folder, WEIGHTS_INDEX)
    if os.path.isfile(index_path):
      try:
        with open(index_path, encoding="utf-8") as f:
          files = sorted(set(json.load(f)["weight_map"].values()))
      except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index_path} is damaged ({first_line(e)}): restore it from the "
                        "model's original folder") from None
    elif os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
      files = [WEIGHTS_FILE]
    else:
      raise UserError(f"{folder} has no {WEIGHTS_FILE}: jaxgpt reads safetensors weights only "
                      "(save the model with transformers' save_pretrained to get one)")
    self.folder, self._where = folder, {}
    for file in files:
      path = os.path.join(folder, file)
      header, start = self._header(path)
      for name, info in header.items():
        if name != "__metadata__":
          self._where[name.removeprefix("transformer.")] = (path, start, info)

  @staticmethod
  def _header(path: str) -> tuple[dict, int]:
    """A safetensors file's header (name: dtype, shape, data_offsets) and where data starts."""
    try:
      with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
      if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    except (OSError, ValueError) as e:
      raise UserError(f"{path} is not a readable safetensors file ({first_line(e)}): restore "
                      "it from the model's original folder") from None
    return header, 8 + length

  def read(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise UserError(f"{self.folder} has no tensor {name}: pass a complete checkpoint of the "
                      f"model its {HF_CONFIG_FILE} describes")
    path, start, info = self._where[name]
    dtype = _numpy_dtypes().get(info.get("dtype"))
    if dtype is None:
      raise UserError(f"tensor {name} in {path} is {info.get('dtype')}, which jaxgpt does not "
                      "read: save the model in float32, float16 or bfloat16")
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
      f.seek(start + begin)
      raw = f.read(end - begin)
    shape = tuple(info["shape"])
    if len(raw) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
      raise UserError(f"tensor {name} in {path} is cut short: the file is damaged; restore it "
                      "from the model's original folder")
    return np.frombuffer(raw, dtype).reshape(shape).astype(np.float32)

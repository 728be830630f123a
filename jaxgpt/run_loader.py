"""A saved run (config, tokenizer, model, a checkpoint's parameters) or a pretrained Hugging
Face model (GPT-2, Llama, Mistral, Qwen2, Qwen3), loaded for sampling, export and logits from
Python:

  run = load_run("runs/default")
  logits_BxTxV = run.logits(run.tokenizer.encode("ROMEO:")[None])
"""

import dataclasses
import os
import sys

import ml_collections
import numpy as np

from jaxgpt import checkpoint, data, files, lora, pretrained, sharding
from jaxgpt import config as config_lib
from jaxgpt import quantize as quantize_lib
from jaxgpt import state as state_lib
from jaxgpt import workdir_lock
from jaxgpt.data.shards import DATASET_FILE
from jaxgpt.errors import UserError
from jaxgpt.model import GPT


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  tokenizer: object
  model: GPT
  params: dict
  mesh: object
  step: int
  workdir: str | None = None  # None for a pretrained model

  def context(self):
    return sharding.rules_context(self.mesh)

  def with_dtype(self, dtype: str) -> "LoadedRun":
    """The same run computing in `dtype` (its parameters stay float32)."""
    model = GPT(dataclasses.replace(self.model.config, dtype=dtype))
    return dataclasses.replace(self, model=model)

  def for_sampling(self, dtype: str = "float32", quantize: str = "none") -> "LoadedRun":
    """The same run as sampling computes it: in `dtype` with its weights in `dtype` too
    (bfloat16 halves the bytes a token reads), or with int8 matrices and float32 scales
    (quantize="int8", jaxgpt/quantize.py). LoRA adapters are merged into the weights."""
    if dtype == "float32" and quantize == "none":  # a run trained in bfloat16 computes in it
      return self.with_dtype(dtype)
    c = self.model.config
    params = lora.merge(self.params, c.lora_rank, c.lora_alpha) if c.lora_rank else self.params
    if quantize == "int8":
      params = quantize_lib.quantized(params, c.scan_layers)
    params = quantize_lib.cast_weights(params, dtype)
    model = GPT(dataclasses.replace(c, dtype=dtype, lora_rank=0, lora_targets=(),
                                    quantize="" if quantize == "none" else quantize))
    return dataclasses.replace(self, model=model, params=params)

  def logits(self, tokens_BxT) -> np.ndarray:
    """The model's float32 logits (batch, time, vocabulary) on int token ids (batch, time):
    position t's predict token t + 1 from tokens 0..t. Rows hold 1 to model.block_size ids."""
    from jaxgpt import generate  # pylint: disable=g-import-not-at-top  # export does not need it
    tokens_BxT = np.asarray(tokens_BxT)
    _check_tokens(tokens_BxT, self.model.config.block_size, self.model.config.vocab_size)
    return generate.logits(self.model, self.params, tokens_BxT)


def _check_tokens(tokens_BxT: np.ndarray, block_size: int, vocab_size: int) -> None:
  if (tokens_BxT.ndim != 2 or not np.issubdtype(tokens_BxT.dtype, np.integer)
      or not tokens_BxT.size or tokens_BxT.shape[1] > block_size):
    raise ValueError(f"tokens must be integer ids of shape (batch, time) with 1 <= time <= "
                     f"block_size={block_size}, got {tokens_BxT.dtype} {tokens_BxT.shape}")
  if tokens_BxT.min() < 0 or tokens_BxT.max() >= vocab_size:
    raise ValueError(f"token ids must lie in [0, {vocab_size}), got {tokens_BxT.min()} to "
                     f"{tokens_BxT.max()}")


def load_run(workdir: str, which: str | int = "latest") -> LoadedRun:
  """Loads a run's newest (`latest`, falling back past damaged ones), `best` or STEP checkpoint."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    problem = "is a file, not a folder" if os.path.exists(workdir) else "does not exist"
    raise UserError(f"workdir {workdir} {problem}: pass the --workdir that "
                    "`python -m jaxgpt.train` printed")
  check_not_another_kind_of_folder(workdir)
  if not os.path.exists(os.path.join(workdir, config_lib.CONFIG_FILE)):
    _check_not_starting(workdir)
  config = config_lib.load_config(workdir)
  tokenizer = data.load_tokenizer(workdir)
  model = GPT(config_lib.model_config(config, tokenizer.vocab_size))
  mesh = _local_mesh()
  checkpoints = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    with sharding.rules_context(mesh):
      abstract = state_lib.abstract_params(model, mesh)
      step, params = _restore(checkpoints, which, abstract, workdir)
  finally:
    checkpoints.close()
  return LoadedRun(config, tokenizer, model, params, mesh, step, workdir)


def check_not_another_kind_of_folder(workdir: str) -> None:
  """A UserError for a --workdir that is a Hugging Face model or tokenizer folder, a token
  dataset, or holds another program's config.json: their config.json and tokenizer.json are
  not a run's, and training would replace them."""
  config_keys = _json_keys(os.path.join(workdir, config_lib.CONFIG_FILE))
  weights = (pretrained.WEIGHTS_FILE, pretrained.WEIGHTS_INDEX)
  if "model_type" in config_keys or any(os.path.isfile(os.path.join(workdir, name))
                                        for name in weights):
    raise UserError(f"{workdir} is a Hugging Face model folder, not a jaxgpt run's workdir: "
                    f"sample or evaluate it with --init_from={workdir}, fine-tune it with "
                    f"python -m jaxgpt.train --config.init_from={workdir} and another --workdir")
  if os.path.isfile(os.path.join(workdir, DATASET_FILE)):
    raise UserError(f"{workdir} is a token dataset (python -m jaxgpt.prepare wrote it), not a "
                    "jaxgpt run's workdir: train on it with --config.data.source=tokens "
                    f"--config.data.path={workdir} and another --workdir")
  if config_keys and not config_lib.is_run_config(config_keys):
    raise UserError(f"{workdir} holds a {config_lib.CONFIG_FILE} that is not a jaxgpt run's: "
                    "pass another --workdir (a new folder, or one that train printed)")
  tokenizer_keys = _json_keys(os.path.join(workdir, data.tokenizer.FILENAME))
  if not config_keys and "model" in tokenizer_keys and "kind" not in tokenizer_keys:
    raise UserError(f"{workdir} is a Hugging Face tokenizer folder, not a jaxgpt run's "
                    f"workdir: train with it as --config.data.tokenizer=gpt2 "
                    f"--config.data.tokenizer_path={workdir} and another --workdir")


def _json_keys(path: str) -> set:
  """The keys of a JSON object file; none for a missing or damaged one (load_config and
  load_tokenizer name a run's damaged files)."""
  loaded = files.read_json(path)
  return set(loaded) if isinstance(loaded, dict) else set()


# The context a pretrained model samples and evaluates with, at most: the KV cache holds
# this many positions (Llama 3.2's 131,072 would take gigabytes).
MAX_PRETRAINED_CONTEXT = 4096


def load_pretrained(init_from: str, mesh=None) -> LoadedRun:
  """A pretrained model's weights and tokenizer (a hub name or a Hugging Face folder), no
  workdir; on `mesh`, or on the devices here."""
  folder = pretrained.resolve(init_from)
  config = config_lib.base_config()
  config.init_from = init_from
  config.model.block_size = MAX_PRETRAINED_CONTEXT  # configure cuts it to the model's context
  pretrained.configure(config, folder)
  tokenizer = pretrained.load_tokenizer(folder)
  model = GPT(config_lib.model_config(config, tokenizer.vocab_size))
  mesh = mesh or _local_mesh()
  with sharding.rules_context(mesh):
    params = pretrained.load_params(folder, model.config,
                                    state_lib.abstract_params(model, mesh))
  return LoadedRun(config, tokenizer, model, params, mesh, step=0)


def _local_mesh():
  """Sampling runs on whatever devices are here, whatever mesh the run trained on."""
  return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


def _restore(checkpoints, which: str, abstract, workdir: str):
  """The step and parameters (only) of the checkpoint `which` names."""
  if which == "latest":
    step, params = checkpoints.restore_newest_good_params(abstract)
    if step is None and _best_reads(checkpoints, abstract):
      raise UserError(f"{workdir} has no readable checkpoint under checkpoints/, but a best one "
                      f"(step {checkpoints.best_step()}): pass --checkpoint=best")
    if step is None and (checkpoints.all_steps() or _has_best(checkpoints)):
      raise UserError(f"every checkpoint in {workdir} is damaged (see the warnings above): "
                      "restore the workdir from a copy, or train again in a new --workdir")
    if step is None:
      _check_not_starting(workdir)
      raise UserError(f"{workdir} has no checkpoint yet (its training saved none): train it "
                      f"with the command that started it (python -m jaxgpt.train "
                      f"--workdir={workdir} and its flags), for at least one step")
    return step, params
  if which == "best":
    step = checkpoints.best_step()
    if step is None:
      raise UserError(f"{workdir} has no best checkpoint yet (one is kept at each evaluation): "
                      "use --checkpoint=latest")
    return step, _read_or_advise(checkpoints, step, abstract, "best")
  which = str(which)  # a step may be given as a number
  if not which.isdecimal():
    raise UserError(f"--checkpoint={which} is not latest, best or a step number")
  step = int(which)
  if step not in checkpoints.all_steps():
    raise UserError(f"{workdir} has no checkpoint of step {step}: its checkpoints are "
                    f"{checkpoints.all_steps() or 'none'}")
  return step, _read_or_advise(checkpoints, step, abstract, "latest")


def _check_not_starting(workdir: str) -> None:
  """A run without a checkpoint yet may be a training run that is still starting."""
  holder = workdir_lock.running_holder(workdir)
  if holder:
    raise UserError(f"{workdir} holds no checkpoint yet: a training run ({holder}) is starting "
                    "in it; run this again once it has saved its first checkpoint")


def _has_best(checkpoints) -> bool:
  """Whether best/ holds a checkpoint, readable or not."""
  try:
    return checkpoints.best_step() is not None
  except checkpoint.DamagedCheckpointError:
    return True


def _best_reads(checkpoints, abstract) -> bool:
  try:
    step = checkpoints.best_step()
  except checkpoint.DamagedCheckpointError:
    return False  # opening best/ printed why
  if step is None:
    return False
  try:
    checkpoints.restore_params(step, abstract, which="best")
  except checkpoint.DamagedCheckpointError as e:
    print(f"warning: {e}", file=sys.stderr, flush=True)
    return False
  return True


def _read_or_advise(checkpoints, step: int, abstract, which: str):
  try:
    return checkpoints.restore_params(step, abstract, which=which)
  except checkpoint.DamagedCheckpointError as e:
    others = [str(s) for s in checkpoints.all_steps() if which == "best" or s != step]
    if which != "best" and _best_reads(checkpoints, abstract):
      others.append("best")
    if not others:
      raise UserError(f"{e}, and the run has no other checkpoint: restore the workdir from a "
                      "copy, or train again in a new --workdir") from None
    raise UserError(f"{e}: pass another --checkpoint ({', '.join(others)}; latest takes the "
                    "newest readable one)") from None

"""Resolving a training run before anything is compiled: its config (validated, and on resume
the saved run's identity), the pretrained model it starts from, its tokenizer, its data with
the data's fingerprint, and its checkpoints. jaxgpt/run_loader.py loads a saved run for
sampling; this sets one up for training.
"""

import dataclasses
import os

import ml_collections

from jaxgpt import checkpoint, config as config_lib, data, pretrained as pretrained_lib
from jaxgpt import run_loader
from jaxgpt.data.tokenizer import Tokenizer, UnknownCharacter, same_ids
from jaxgpt.errors import UserError


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
  config: ml_collections.ConfigDict  # identity adopted, data.tokenizer and fingerprint set
  workdir: str
  dataset: data.Dataset
  pretrained: str | None  # the pretrained model's folder (init_from), or None from scratch
  checkpoints: checkpoint.Checkpointer  # open: whoever trains the run closes it

  @property
  def tokenizer(self) -> Tokenizer:
    return self.dataset.tokenizer


def resolve_run(config: ml_collections.ConfigDict, workdir: str,
                explicit_keys: set[str] | None = None, is_main: bool = True) -> ResolvedRun:
  """The run `config` describes in `workdir`, resolved; `config` is updated in place.

  `explicit_keys`: the config keys given on the command line. With them, resuming a run takes
  its identity (config.identity_keys()) from the workdir, and contradicting it is an error;
  without them, a differing shape meets the checkpoint's strict restore. `is_main`: whether
  this process (process 0) prints."""
  run_loader.check_not_another_kind_of_folder(workdir)
  saved = _saved_run_config(workdir)
  resuming = saved is not None and explicit_keys is not None
  # Fine-tuning: the model's options (architecture and shape) and tokenizer are the
  # pretrained model's. A resumed run has them in config.json and its weights in its
  # checkpoint: it takes its own init_from (another one given is refused below), and the
  # pretrained model is neither read nor needed.
  pretrained = None
  if config.init_from != "scratch":
    if not resuming:
      pretrained = pretrained_lib.resolve(config.init_from)
      pretrained_lib.configure(config, pretrained, explicit_keys or set())
    if not resuming or "init_from" in explicit_keys:
      # config.json names the folder wherever the run is resumed from (a moved one, given)
      config.init_from = pretrained_lib.absolute_init_from(config.init_from)
  config_lib.validate(config, needs_data=saved is None)  # a resumed run has its data.path
  if resuming:
    changed = config_lib.adopt_identity(config, saved, explicit_keys, workdir)
    if changed and is_main:
      print(f"resuming the run in {workdir} with its own {', '.join(changed)}", flush=True)
  if saved is None or "data.path" in (explicit_keys or ()):
    # config.json names the data wherever the run is resumed or evaluated from
    config.data.path = data.absolute_path(config.data.path)
  os.makedirs(workdir, exist_ok=True)
  dataset = _dataset(config, workdir, pretrained, explicit_keys or set())
  if saved is not None and saved.data.fingerprint not in ("", config.data.fingerprint):
    raise _data_differs(config, workdir, "; token shards are the same data only as the same "
                        "shards, whose tokens the batches are drawn from"
                        if config.data.source == "tokens" else "")
  checkpoints = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                        timeout_secs=config.train.checkpoint_timeout_secs)
  try:
    _check_resumable(checkpoints, workdir)
  except BaseException:
    checkpoints.close()
    raise
  return ResolvedRun(config, workdir, dataset, pretrained, checkpoints)


def _dataset(config, workdir: str, pretrained: str | None, explicit_keys: set[str]
             ) -> data.Dataset:
  """The run's data and tokenizer (the workdir's saved one, the pretrained model's, or one
  made from the text); sets data.tokenizer and data.fingerprint. Prepared token shards bring
  their own tokenizer, which decides data.tokenizer (one given on the command line must be it)."""
  from_shards = config.data.source == "tokens"
  saved = data.saved_tokenizer(workdir, None if from_shards else config.data.tokenizer)
  tokenizer = saved or pretrained_lib.run_tokenizer(config, pretrained)
  try:
    dataset = data.build_dataset(config, tokenizer=tokenizer)
  except UnknownCharacter as e:  # the workdir's or init_from's character-level tokenizer
    if saved is None:
      raise UserError(f"the training data (data.path={config.data.path}) has {e.character!r}, "
                      f"which init_from={config.init_from}'s character-level tokenizer lacks: "
                      "remove that character from the data, or train from scratch") from None
    raise _data_differs(config, workdir, f"; it has {e.character!r}, which the run's tokenizer "
                        "does not") from None
  if from_shards and pretrained:
    _check_model_tokenizer(dataset.tokenizer, pretrained, config)
  if (from_shards and "data.tokenizer" in explicit_keys
      and config.data.tokenizer != dataset.tokenizer.kind):
    raise UserError(f"--config.data.tokenizer={config.data.tokenizer} contradicts the token "
                    f"dataset {config.data.path}, made with the {dataset.tokenizer.kind} "
                    "tokenizer (shards bring their own): drop that flag, or prepare the data "
                    "again with that tokenizer")
  config.data.tokenizer = dataset.tokenizer.kind
  config.data.fingerprint = data.fingerprint(dataset)
  return dataset


def _data_differs(config, workdir: str, detail: str = "") -> UserError:
  return UserError(f"the training data differs from the data the run in {workdir} was trained "
                   f"on (data.source={config.data.source}, data.path={config.data.path or '-'}"
                   f"{detail}): resume with the run's own data, or train on this data in a new "
                   "--workdir")


def _check_model_tokenizer(tokenizer: Tokenizer, pretrained: str, config) -> None:
  """Token shards fine-tune a pretrained model only if they were made with its tokenizer."""
  model_tokenizer = pretrained_lib.load_tokenizer(pretrained)
  if not same_ids(tokenizer, model_tokenizer):
    raise UserError(f"the token dataset {config.data.path} was not made with the tokenizer of "
                    f"init_from={config.init_from}: prepare it again with python -m "
                    f"jaxgpt.prepare --tokenizer={pretrained} (and a new --out)")


def _check_resumable(checkpoints: checkpoint.Checkpointer, workdir: str) -> None:
  """A workdir with a best checkpoint but nothing to resume from is refused: a restart would
  measure a new "best" against the old run's and could replace it."""
  best = checkpoints.best_step()
  if checkpoints.latest_step() is None and best is not None:
    run_loader.load_run(workdir, "best")  # a UserError if best cannot be read either
    raise UserError(f"{workdir} holds a best checkpoint (step {best}) but nothing under "
                    "checkpoints/ to resume from: sample or export it with "
                    "--checkpoint=best, restore checkpoints/ to resume, or train in a new "
                    "--workdir")


def _saved_run_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of the run in `workdir` if it has a checkpoint to resume from, else None."""
  folder = os.path.join(workdir, checkpoint.LATEST_DIR)
  if not (os.path.exists(os.path.join(workdir, config_lib.CONFIG_FILE))
          and os.path.isdir(folder)):
    return None
  if not any(name.isdigit() for name in os.listdir(folder)):
    return None
  return config_lib.load_config(workdir)

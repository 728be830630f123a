"""A saved run, loaded for sampling: config, tokenizer, model and newest parameters."""

import dataclasses
import os

import ml_collections

from jaxgpt import checkpoint, data, optim, sharding
from jaxgpt import state as state_lib
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, model_config
from jaxgpt.trainer import load_config


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  tokenizer: object
  model: GPT
  params: dict
  mesh: object
  step: int

  def context(self):
    return sharding.rules_context(self.mesh)


def load_run(workdir: str) -> LoadedRun:
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} does not exist: pass the --workdir that "
                    "`python -m jaxgpt.train` printed")
  config = load_config(workdir)
  tokenizer = data.load_tokenizer(workdir)
  checkpoints = checkpoint.Checkpointer(workdir, read_only=True)
  step = checkpoints.latest_step()
  if step is None:
    raise UserError(f"{workdir} has no checkpoint yet: train first with "
                    f"python -m jaxgpt.train --workdir={workdir}")
  model = GPT(model_config(config, tokenizer.vocab_size))
  optimizer = optim.make_optimizer(config.train)
  # Sampling runs on whatever devices are here, whatever mesh the run trained on.
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  with sharding.rules_context(mesh):
    abstract = state_lib.abstract_state(model, optimizer, mesh)
    state = checkpoints.restore(step, abstract)
  checkpoints.close()
  return LoadedRun(config, tokenizer, model, state.params, mesh, step)

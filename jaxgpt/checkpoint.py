"""Orbax checkpoints of the train state: the only module that talks to Orbax."""

import os

import orbax.checkpoint as ocp

from jaxgpt.errors import UserError, first_line

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """Saves the train state asynchronously under WORKDIR/checkpoints/<step>/, keeping the newest N."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only)
    self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state",))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts writing `state` in the background; `wait()` blocks until it is on disk."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       force=True)

  def restore(self, step: int, abstract_state):
    """Restores into the shapes, dtypes and shardings of `abstract_state` (any mesh)."""
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError) as e:
      raise UserError(f"checkpoint {step} in {self._manager.directory} does not fit this "
                      f"model ({first_line(e)}): use the run's own config or a new --workdir")
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


"""`python -m jaxgpt.train`, except that process 1's save of step 4 fails as on a full disk."""

import jax
import orbax.checkpoint as ocp

from jaxgpt import train
from jaxgpt.errors import run_cli

FAILING_STEP = 4
_save = ocp.CheckpointManager.save


def _failing_save(manager, step, *args, **kwargs):
  if jax.process_index() == 1 and step == FAILING_STEP:
    raise OSError(28, "No space left on device")
  return _save(manager, step, *args, **kwargs)


if __name__ == "__main__":
  ocp.CheckpointManager.save = _failing_save
  run_cli(train.main)

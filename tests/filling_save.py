"""`python -m jaxgpt.train`, except that the disk fills up just before the save of step 20."""

import os

import orbax.checkpoint as ocp

from jaxgpt import train
from jaxgpt.errors import run_cli

FILL_STEP = 20
_save = ocp.CheckpointManager.save


def fill_disk(path: str) -> None:
  """Writes `path` until the filesystem holding it has no space left."""
  with open(path, "wb") as f:
    try:
      while True:
        f.write(b"\0" * (1 << 16))
        f.flush()
    except OSError:
      pass


def _filling_save(manager, step, *args, **kwargs):
  if step == FILL_STEP and str(manager.directory).endswith("checkpoints"):
    fill_disk(os.environ["JAXGPT_TEST_FILLER"])
  return _save(manager, step, *args, **kwargs)


if __name__ == "__main__":
  ocp.CheckpointManager.save = _filling_save
  run_cli(train.main)

"""The nanoGPT-exact configs give the losses they gave before today's recipe became options:
every model option's default, the optimizer's and the schedule's are nanoGPT's.

Each config as bundled, on a fixed random batch of 4 rows (a vocabulary of 30 tokens), seed
1337, float32 on CPU; the GPT-2 configs with 2 layers and 64 positions, so a step takes a
second rather than a minute (every other key as bundled)."""

import importlib

import numpy as np
import pytest

from helpers import train_on_one_batch

# Measured at 9e96351, the commit before the model options, and unchanged since.
GOLDEN = {
    "shakespeare_char_cpu": [3.4676156044006348, 3.4556398391723633, 3.4319944381713867],
    "shakespeare_char": [3.5103979110717773, 3.470655918121338, 3.403452157974243],
    "gpt2_owt": [3.657876491546631, 3.6526951789855957, 3.642435073852539],
    "gpt2_fineweb": [3.657876491546631, 3.6434273719787598, 3.6153297424316406],
}


def _losses(name: str) -> list[float]:
  config = importlib.import_module(f"configs.{name}").get_config()
  config.train.update(batch_size=4, grad_accum_steps=1)
  if name.startswith("gpt2"):
    config.model.update(n_layer=2, block_size=64)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  return train_on_one_batch(config, 3, dropout=config.model.dropout)[0]


@pytest.mark.slow  # tests/test_steps.py's golden test of tiny_config() stays in the fast subset
@pytest.mark.parametrize("name", list(GOLDEN))
def test_a_nanogpt_config_gives_its_golden_losses(name):
  np.testing.assert_allclose(
      _losses(name), GOLDEN[name], rtol=2e-6,
      err_msg=f"configs/{name}.py's first losses changed: if the change meant to change that "
              "config's numbers, set GOLDEN to the new values; if not, a default it relies on "
              "changed (a model option, the optimizer, the schedule, the initialisation)")

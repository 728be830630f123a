"""Tests run on CPU with 8 simulated devices; each test picks the devices its mesh uses."""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(**model):
  """A config small enough to train in a test: 2 layers, 32 wide, block 16."""
  c = config_lib.base_config()
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0, vocab_multiple=8)
  c.model.update(**model)
  c.train.update(batch_size=8, max_steps=10, warmup_steps=2, eval_every=5, eval_steps=2,
                 log_every=5, checkpoint_every=5, sample_tokens=0)
  c.data.pipeline = "numpy"
  return c


@pytest.fixture
def tiny():
  return tiny_config()

"""LoRA: adapters start as a no-op, merge exactly, and are all that a step changes."""

import chex
import jax
import numpy as np
import pytest

from jaxgpt import lora
from jaxgpt.config import model_config
from jaxgpt.model import GPT

from helpers import init_params, tiny_config, train_on_one_batch


TARGETS = "c_attn,c_proj,c_fc"


def _lora_config(rank=4):
  return tiny_config(lora=dict(rank=rank, alpha=8.0, targets=TARGETS))


def _params(config, seed=0):
  model = GPT(model_config(config, 30))
  return model, init_params(model, seed)


def _tokens(config):
  return np.random.default_rng(0).integers(0, 30, (2, config.model.block_size))


@pytest.mark.slow
def test_adapters_start_as_a_no_op_and_merge_into_the_base_model():
  config = _lora_config()
  model, params = _params(config)
  base_model, base_params = _params(tiny_config())
  adapters, frozen = lora.partition(params, lora_rank=4)
  # Every attention and MLP projection of both layers has an (A, B) pair.
  assert len(jax.tree.leaves(adapters)) == 2 * 2 * 4
  chex.assert_trees_all_equal_shapes(frozen, base_params)
  tokens = _tokens(config)
  base_logits = base_model.apply({"params": frozen}, tokens)
  chex.assert_trees_all_close(model.apply({"params": params}, tokens), base_logits, atol=1e-6)
  # With B non-zero the adapters change the output, and merging them keeps that change.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if path[-1].key == "lora_b" else x, params)
  adapted = model.apply({"params": params}, tokens)
  assert not np.allclose(adapted, base_logits, atol=1e-3)
  merged = lora.merge(params, lora_rank=4, lora_alpha=8.0)
  chex.assert_trees_all_close(base_model.apply({"params": merged}, tokens), adapted, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_step_changes_only_the_adapters_and_keeps_no_state_for_the_rest(scan_layers):
  config = _lora_config()
  config.model.scan_layers = scan_layers
  config.train.learning_rate = 1e-2
  before = jax.device_get(train_on_one_batch(config, 0)[1])
  losses, after = train_on_one_batch(config, 5)
  after = jax.device_get(after)
  assert losses[-1] < losses[0]
  adapters_before, frozen_before = lora.partition(before.params, 4)
  adapters_after, frozen_after = lora.partition(after.params, 4)
  chex.assert_trees_all_equal(frozen_after, frozen_before)  # bit for bit
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapters_after),
                                                       jax.tree.leaves(adapters_before)))
  moment_shapes = {x.shape for x in jax.tree.leaves(after.opt_state) if x.ndim}
  assert moment_shapes == {x.shape for x in jax.tree.leaves(adapters_after)}

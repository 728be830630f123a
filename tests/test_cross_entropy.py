"""The loss computed a chunk of positions at a time (jaxgpt/cross_entropy.py) equals the plain
computation over the whole logits, in loss and gradients, for tied and untied heads, text
and chat batches, on a mesh whose vocabulary is sharded; and it holds less memory."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt import cross_entropy, sharding, steps
from jaxgpt.model import GPT, GPTConfig

from helpers import init_params

CONFIG = GPTConfig(vocab_size=100, vocab_multiple=16, block_size=32, n_layer=1, n_head=2,
                   n_embd=32, dropout=0.0)
BATCH = 4


def _plain_loss(model, params, x, y):
  """The loss as it was computed before chunking: the whole logits, then the cross-entropy."""
  logits = model.apply({"params": params}, x)
  trained = y >= 0
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(trained, y, 0))
  return jnp.sum(jnp.where(trained, losses, 0.0)) / jnp.sum(trained)


def _batch(masked: bool):
  x = jax.random.randint(jax.random.key(0), (BATCH, CONFIG.block_size), 0, CONFIG.vocab_size)
  y = jax.random.randint(jax.random.key(1), (BATCH, CONFIG.block_size), 0, CONFIG.vocab_size)
  if masked:  # chat rows: one conversation a row, the first half of it not trained
    y = y.at[:, :CONFIG.block_size // 2].set(-1)
  return x, y


# One case in the fast subset; the others in the full suite.
@pytest.mark.parametrize("tie_embeddings, masked", [
    pytest.param(False, True, id="untied-chat"),
    *(pytest.param(tie, masked, id=f"{'tied' if tie else 'untied'}-{'chat' if masked else 'text'}",
                   marks=pytest.mark.slow)
      for tie, masked in ((True, False), (False, False), (True, True)))])
def test_chunks_give_the_plain_loss_and_gradients_on_a_sharded_vocabulary(
    tie_embeddings, masked, monkeypatch):
  config = dataclasses.replace(CONFIG, tie_embeddings=tie_embeddings)
  model, params = GPT(config), init_params(GPT(config))
  x, y = _batch(masked)
  segments = (jnp.ones_like(x),) if masked else ()
  # 4 chunks of 8 positions (a budget of 8 positions' logits)
  monkeypatch.setattr(cross_entropy, "LOGITS_PER_CHUNK", BATCH * 8 * config.padded_vocab_size)
  assert cross_entropy.chunk_length(BATCH, config.block_size, config.padded_vocab_size) == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  with sharding.rules_context(mesh):
    chunked = jax.jit(jax.value_and_grad(
        lambda p: steps.loss_fn(model, p, x, y, None, *segments)))(params)
    plain = jax.jit(jax.value_and_grad(lambda p: _plain_loss(model, p, x, y)))(params)
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-7)


def test_one_chunk_of_logits_is_live_at_a_time():
  """The compiled gradient of a batch whose logits are 16 chunks needs far less temporary
  memory than with the whole logits."""
  config = dataclasses.replace(CONFIG, vocab_size=4096, vocab_multiple=64, block_size=256)
  model = GPT(config)
  params = jax.eval_shape(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  x = y = jax.ShapeDtypeStruct((8, config.block_size), jnp.int32)

  def temp_bytes(budget):
    def loss(p, x, y):
      hidden, head = model.apply({"params": p}, x, hidden_and_head=True)
      return cross_entropy.token_losses(hidden, head, y, config, budget).mean()
    compiled = jax.jit(jax.grad(loss)).lower(params, x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  whole = 8 * config.block_size * config.padded_vocab_size
  assert temp_bytes(whole // 16) < 0.5 * temp_bytes(whole)


def test_a_chunk_is_the_longest_divisor_of_the_length_that_fits():
  assert cross_entropy.chunk_length(96, 1024, 50304, 2**28) == 32
  assert cross_entropy.chunk_length(2, 12, 10, 2 * 5 * 10) == 4
  assert cross_entropy.chunk_length(2, 7, 10, 1) == 1
  assert cross_entropy.chunk_length(32, 64, 128, 2**28) == 64  # the CPU default: one chunk
  np.testing.assert_equal(cross_entropy.chunk_length(1, 1, 1), 1)

"""jaxgpt's attention a block of queries at a time: the values and gradients of plain causal
attention, with no T x T array held for the backward pass."""

import contextlib
import dataclasses

import chex
import jax
import jax.numpy as jnp
import pytest

from jaxgpt import blockwise_attention, sharding, steps
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.trainer import Program

from helpers import init_params, tiny_config


def _qkv(shape, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, weights = (jax.random.normal(key, shape, jnp.float32) for key in keys)
  q = q / shape[-1] ** 0.5  # scaled, as causal_attention passes it
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), weights


def _plain(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK):
  """XLA's causal attention (scores, mask, softmax over the whole T x T), heads-major."""
  heads_minor = lambda x: x.transpose(0, 2, 1, 3)
  y = jax.nn.dot_product_attention(heads_minor(q_BxHxTxK), heads_minor(k_BxHxTxK),
                                   heads_minor(v_BxHxTxK), scale=1.0, is_causal=True,
                                   implementation="xla")
  return heads_minor(y)


def _value_and_grads(attend, q, k, v, weights):
  weighted = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * weights)
  return jax.jit(jax.value_and_grad(weighted, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("length, block", [
    (200, 64),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in ((256, 128), (96, 256), (130, 64)))])
def test_blockwise_attention_gives_plain_attentions_values_and_gradients(length, block):
  """Blocks that divide the length, that do not (a shorter last block), and one block."""
  q, k, v, weights = _qkv((2, 3, length, 16))
  blockwise = lambda q, k, v: blockwise_attention.blockwise_causal_attention(q, k, v, block)
  chex.assert_trees_all_close(_value_and_grads(blockwise, q, k, v, weights),
                              _value_and_grads(_plain, q, k, v, weights), rtol=1e-5, atol=2e-5)


@pytest.mark.slow
def test_blockwise_attention_in_bfloat16_keeps_its_dtypes_and_stays_close():
  q, k, v, weights = _qkv((2, 2, 160, 32), jnp.bfloat16)
  blockwise = lambda q, k, v: blockwise_attention.blockwise_causal_attention(q, k, v, 64)
  value, grads = _value_and_grads(blockwise, q, k, v, weights)
  chex.assert_trees_all_equal_dtypes(grads, (q, k, v))
  chex.assert_tree_all_finite(grads)
  plain_value, plain_grads = _value_and_grads(_plain, q, k, v, weights)
  chex.assert_trees_all_close((value, grads), (plain_value, plain_grads), rtol=0.05, atol=0.05)


def _temp_bytes(attend, shape):
  q = jax.ShapeDtypeStruct(shape, jnp.float32)
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v)), argnums=(0, 1, 2)))
  return grads.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes


def test_the_gradients_memory_grows_with_the_length_not_its_square():
  """Plain attention keeps the (B, H, T, T) probabilities for its backward pass: twice the
  length, four times the memory. The blockwise one keeps q, k, v, its output and a
  log-sum-exp per query, and holds one block's scores at a time (were XLA to keep the
  forward's scores for the backward pass, or compute every block's at once, this fails)."""
  def growth(attend):
    return _temp_bytes(attend, (1, 4, 2048, 16)) / _temp_bytes(attend, (1, 4, 1024, 16))
  assert growth(_plain) > 3.5
  assert growth(blockwise_attention.blockwise_causal_attention) < 2.5


@pytest.mark.parametrize("on_a_mesh", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_model_over_a_longer_context_than_a_block_matches_xlas_attention(on_a_mesh):
  """GPT's own attention (blockwise past QUERY_BLOCK positions) against
  jax.nn.dot_product_attention's XLA one: logits and gradients of every parameter, on one
  device and with the batch and heads sharded (data 2, tensor 2)."""
  config = GPTConfig(vocab_size=40, vocab_multiple=1, n_layer=1, n_head=2, n_embd=16,
                     dropout=0.0, block_size=blockwise_attention.QUERY_BLOCK + 16,
                     attention="jaxgpt")
  params = init_params(GPT(config))
  tokens = jax.random.randint(jax.random.key(1), (2, config.block_size), 0, config.vocab_size)

  def mean_logit_and_grads(config):
    mean_logit = lambda p: GPT(config).apply({"params": p}, tokens).mean()
    return jax.jit(jax.value_and_grad(mean_logit))(params)

  with contextlib.ExitStack() as stack:
    if on_a_mesh:
      mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
      stack.enter_context(sharding.rules_context(mesh))
    blockwise = mean_logit_and_grads(config)
  chex.assert_trees_all_close(blockwise,
                              mean_logit_and_grads(dataclasses.replace(config, attention="xla")),
                              rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_cpu_train_step_does_not_convert_every_scanned_layers_activations_at_once(
    monkeypatch):
  """XLA's CPU compiler would hoist work on a scanned bfloat16 model's saved activations out
  of the backward loop, holding at least one (layers, tokens, width) bfloat16 array (the
  kernel gradients' tokens-last copies); the train step is compiled without that
  (steps.CPU_SCANNED_TRAIN_COMPILER_OPTIONS)."""
  config = tiny_config(precision="bfloat16", model=dict(n_layer=16, n_embd=256, n_head=4,
                                                        block_size=64, scan_layers=True,
                                                        remat="full"),
                       train=dict(batch_size=32, grad_accum_steps=1))

  def temp_bytes():
    program = Program(config, vocab_size=30, devices=jax.devices()[:1])
    return program.compile_train_step()[1]["temp_bytes"]

  stack_bytes = 16 * 32 * 64 * 256 * 2
  compiled_as_jaxgpt_does = temp_bytes()
  monkeypatch.setattr(steps, "CPU_SCANNED_TRAIN_COMPILER_OPTIONS", {})
  assert compiled_as_jaxgpt_does < temp_bytes() - stack_bytes / 2

"""The GPT: shapes, dtypes, causality, parameter count, initialisation, the KV cache."""

import ast
import dataclasses
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import attention
from jaxgpt.model import GPT, GPTConfig, count_params

from helpers import REPO, init_params

CONFIG = GPTConfig(vocab_size=72, vocab_multiple=1, block_size=16, n_layer=2, n_head=4, n_embd=32,
                   dropout=0.0)


def _init(config=CONFIG):
  return init_params(GPT(config))


def _boxed_shapes(config=CONFIG):
  """The parameters' shapes, each in its nn.Partitioned box with its logical axis names."""
  tokens = jnp.zeros((1, config.block_size), jnp.int32)
  return jax.eval_shape(GPT(config).init, jax.random.key(0), tokens)["params"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_are_float32_with_float32_params(dtype):
  config = dataclasses.replace(CONFIG, dtype=dtype)
  params = _init(config)
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 0, config.vocab_size)
  logits = GPT(config).apply({"params": params}, tokens)
  chex.assert_shape(logits, (3, 10, config.vocab_size))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_causal_later_tokens_do_not_change_earlier_logits():
  params = _init()
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, CONFIG.vocab_size)
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 5) % CONFIG.vocab_size)
  apply = jax.jit(GPT(CONFIG).apply)
  before, after = apply({"params": params}, tokens), apply({"params": params}, changed)
  np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-6)
  assert not np.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_is_gpt2_formula(bias):
  config = dataclasses.replace(CONFIG, bias=bias)
  v, t, d, n = config.vocab_size, config.block_size, config.n_embd, config.n_layer
  per_layer = 12 * d * d + (13 * d if bias else 2 * d)
  expected = v * d + t * d + n * per_layer + (2 * d if bias else d)
  assert count_params(_init(config)) == expected


@pytest.mark.slow
def test_gpt2_initialisation():
  config = GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=True,
                     dropout=0.0)
  params = _init(config)
  residual_std = 0.02 / np.sqrt(2 * config.n_layer)
  np.testing.assert_allclose(np.std(params["wte"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(params["h_0"]["mlp"]["c_fc"]["kernel"]), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(params["h_0"]["mlp"]["c_proj"]["kernel"]), residual_std, rtol=0.05)
  np.testing.assert_allclose(np.std(params["h_1"]["attn"]["c_proj"]["kernel"]), residual_std, rtol=0.05)
  assert np.all(params["h_0"]["attn"]["c_attn"]["bias"] == 0)
  assert np.all(params["ln_f"]["scale"] == 1)


def test_every_parameter_has_logical_axis_names():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  boxed = _boxed_shapes()
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)


def test_padded_vocabulary_gets_no_probability():
  config = dataclasses.replace(CONFIG, vocab_size=65, vocab_multiple=64)
  assert config.padded_vocab_size == 128
  assert GPTConfig(vocab_size=50257, vocab_multiple=64).padded_vocab_size == 50304
  logits = jax.jit(GPT(config).apply)({"params": _init(config)}, jnp.zeros((1, 4), jnp.int32))
  chex.assert_shape(logits, (1, 4, 128))
  probs = jax.nn.softmax(logits, axis=-1)
  assert float(probs[..., 65:].max()) == 0.0
  np.testing.assert_allclose(probs[..., :65].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("x_shape,kernel_shape,num_in,dtype,products", [
    ((12, 8), (8, 3, 2, 4), 1, jnp.float32, ""),    # c_attn: (N, D) . (D, 3, H, K)
    pytest.param((12, 8), (8, 3, 2, 4), 1, jnp.bfloat16, "", marks=pytest.mark.slow),
    ((12, 2, 4), (2, 4, 8), 2, jnp.float32, ""),    # attention's c_proj: (N, H, K) . (H, K, D)
    pytest.param((3, 4, 8), (8, 16), 1, jnp.float32, "", marks=pytest.mark.slow),  # two token axes
    ((12, 8), (8, 16), 1, jnp.float32, "bfloat16"),  # matmul_precision=bfloat16
    ((12, 8), (8, 16), 1, jnp.float32, "float32"),
])
def test_dense_gradients_equal_autodiff(x_shape, kernel_shape, num_in, dtype, products):
  """Values and gradients in the operands' dtype; bfloat16 products of float32 operands within
  bfloat16's rounding of them."""
  from jaxgpt.dense import tensordot  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), x_shape, dtype)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape, dtype)
  out_shape = x_shape[:x.ndim - num_in] + kernel_shape[num_in:]
  weights = jax.random.normal(jax.random.key(2), out_shape, jnp.float32)
  in_axes = tuple(range(x.ndim - num_in, x.ndim))

  def value_and_grads(product):
    loss = lambda x, k: (product(x, k).astype(jnp.float32) * weights).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)

  ours = value_and_grads(lambda x, k: tensordot(x, k, num_in, products))
  autodiff = value_and_grads(
      lambda x, k: jnp.tensordot(x, k, axes=(in_axes, tuple(range(num_in)))))
  chex.assert_trees_all_equal_shapes_and_dtypes(ours, autodiff)
  exact = dtype == jnp.float32 and products != "bfloat16"
  tolerance = 1e-5 if exact else 2e-2
  chex.assert_trees_all_close(ours, autodiff, rtol=tolerance, atol=tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dot_product_attention_equals_jaxgpt_attention(dtype):
  """attention="xla" runs jax.nn.dot_product_attention, the call the cuDNN path makes with
  implementation="cudnn": same layout, scale and causal mask as jaxgpt's attention."""
  configs = {a: dataclasses.replace(CONFIG, dtype=dtype, attention=a)
             for a in ("jaxgpt", "xla")}
  params = _init(configs["jaxgpt"])
  tolerance = 1e-5 if dtype == "float32" else 2e-2
  chex.assert_trees_all_close(_mean_logit_and_grads(configs["xla"], params),
                              _mean_logit_and_grads(configs["jaxgpt"], params),
                              rtol=tolerance, atol=tolerance)


def _mean_logit_and_grads(config, params, batch=3):
  """A scalar of every logit, and its gradients, for comparing two ways to compute the model."""
  tokens = jax.random.randint(jax.random.key(1), (batch, config.block_size), 0, config.vocab_size)
  mean_logit = lambda p: GPT(config).apply({"params": p}, tokens).mean()
  return jax.jit(jax.value_and_grad(mean_logit))(params)


@pytest.mark.parametrize("backend, dtype, dropout, deterministic, length, expected", [
    ("cpu", "bfloat16", 0.0, True, 256, "jaxgpt"),
    ("tpu", "bfloat16", 0.0, True, 256, "splash"),
    ("tpu", "float32", 0.2, True, 1024, "splash"),   # evaluation and sampling
    ("tpu", "bfloat16", 0.2, False, 256, "jaxgpt"),  # training with attention dropout
    ("tpu", "bfloat16", 0.0, True, 100, "jaxgpt"),   # not a multiple of splash's blocks
    ("gpu", "bfloat16", 0.0, False, 256, "cudnn"),
    ("gpu", "bfloat16", 0.2, True, 256, "cudnn"),    # evaluation and sampling
    ("gpu", "bfloat16", 0.2, False, 256, "jaxgpt"),  # training with attention dropout
    ("gpu", "float32", 0.0, True, 256, "jaxgpt"),    # cuDNN's flash attention is 16-bit only
])
def test_auto_attention_takes_cudnn_or_splash_where_they_apply(
    monkeypatch, backend, dtype, dropout, deterministic, length, expected):
  monkeypatch.setattr(attention.jax, "default_backend", lambda: backend)
  config = dataclasses.replace(CONFIG, dtype=dtype, dropout=dropout)
  assert attention.implementation(config, deterministic, length) == expected


@pytest.mark.slow
def test_splash_attention_gives_jaxgpts_logits_and_gradients_on_a_mesh():
  """The Pallas splash kernel (interpreted on CPU: TPU runs it compiled) against jaxgpt's
  attention, forward and backward, with batch and heads sharded (data 2, tensor 2)."""
  from jaxgpt import sharding  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(CONFIG, block_size=attention.SPLASH_BLOCK, dropout=0.0,
                               position="rope", n_head=4, n_kv_head=2)
  params = _init(config)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  with sharding.rules_context(mesh):
    splash = _mean_logit_and_grads(dataclasses.replace(config, attention="splash"), params, 4)
  chex.assert_trees_all_close(splash, _mean_logit_and_grads(config, params, 4),
                              rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_splash_attention_takes_a_batch_the_mesh_does_not_divide():
  """One row (parameter initialisation, a single prompt's logits) on a data axis of 2: the
  batch stays whole on each device."""
  from jaxgpt import sharding  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(CONFIG, block_size=attention.SPLASH_BLOCK, dropout=0.0)
  params = _init(config)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  with sharding.rules_context(mesh):
    splash = _mean_logit_and_grads(dataclasses.replace(config, attention="splash"), params, 1)
    jax.jit(GPT(dataclasses.replace(config, attention="splash")).init)(
        jax.random.key(0), jnp.zeros((1, config.block_size), jnp.int32))
  chex.assert_trees_all_close(splash, _mean_logit_and_grads(config, params, 1),
                              rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy, scan_layers", [
    ("dots", False),
    *(pytest.param(*case, marks=pytest.mark.slow)
      for case in (("full", False), ("dots", True), ("full", True)))])
def test_remat_gives_the_same_loss_and_gradients(policy, scan_layers):
  config = dataclasses.replace(CONFIG, scan_layers=scan_layers)
  params = _init(config)
  remat = dataclasses.replace(config, remat=policy)
  chex.assert_trees_all_close(_mean_logit_and_grads(remat, params),
                              _mean_logit_and_grads(config, params), rtol=1e-5, atol=1e-6)


def _size(shape: str) -> int:
  """The number of elements of a shape printed as "f32[2,16,32]" ("f32[]": one)."""
  return math.prod(int(size) for size in shape.split("[")[1].rstrip("]").split(",") if size)


def test_each_remat_policy_keeps_what_it_says(capsys):
  """For the backward pass "none" keeps every activation, "dots" the blocks' inputs and the
  weight matmuls' outputs (not attention's T x T scores), "full" the blocks' inputs alone."""
  params = _init()
  tokens = jnp.zeros((2, CONFIG.block_size), jnp.int32)
  kept = {}
  for policy in ("none", "dots", "full"):
    model = GPT(dataclasses.replace(CONFIG, remat=policy))
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: model.apply({"params": p}, tokens).mean(), params)  # "f32[32,128] why"
    residuals = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    activations = [shape for shape, why in residuals if "from the argument" not in why]
    kept[policy] = (sum(_size(shape) for shape in activations),
                    {shape for shape, why in residuals if "named 'dot'" in why})
  n, d, h, k = 2 * CONFIG.block_size, CONFIG.n_embd, CONFIG.n_head, CONFIG.head_size
  assert kept["full"][0] < kept["dots"][0] < kept["none"][0] / 2
  # c_attn's, attention's c_proj's and c_fc's outputs (the MLP's c_proj's is never needed).
  assert kept["dots"][1] == {f"f32[{n},3,{h},{k}]", f"f32[{n},{d}]", f"f32[{n},{4 * d}]"}
  assert not kept["full"][1]


@pytest.mark.parametrize("module", ["model", "attention", "blockwise_attention", "dense",
                                    "quantize"])
def test_the_model_imports_nothing_from_jaxgpt_but_its_own_modules(module):
  with open(os.path.join(REPO, "jaxgpt", f"{module}.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  imported = ({alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
              | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module != "jaxgpt"}
              | {f"jaxgpt.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "jaxgpt"
                 for alias in node.names})
  own = {"jaxgpt.model", "jaxgpt.attention", "jaxgpt.blockwise_attention", "jaxgpt.dense",
         "jaxgpt.quantize"}
  assert not {name for name in imported if name.split(".")[0] == "jaxgpt"} - own, imported


def test_logits_at_some_tokens_are_those_of_the_whole_batch():
  tokens_BxT = jax.random.randint(jax.random.key(0), (3, CONFIG.block_size), 0, CONFIG.vocab_size)
  params = _init(CONFIG)
  apply = jax.jit(GPT(CONFIG).apply)
  at_S = jnp.array([0, 5, 15, 16 + 3, 16 + 3, 2 * 16 + 15, 2 * 16])  # rows 0, 1 and 2, in any order
  some = apply({"params": params}, tokens_BxT, logits_at_S=at_S)
  every = apply({"params": params}, tokens_BxT)
  chex.assert_shape(some, (1, 7, CONFIG.padded_vocab_size))
  chex.assert_trees_all_close(some[0], every.reshape(-1, CONFIG.padded_vocab_size)[at_S],
                              rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("position", [pytest.param("learned", marks=pytest.mark.slow), "rope"])
def test_sequences_packed_in_a_row_give_their_own_logits(position):
  """Two sequences in one row, each attending to itself only, positions from 0 for each."""
  config = dataclasses.replace(CONFIG, position=position)
  model, params = GPT(config), _init(config)
  first, second = (jax.random.randint(jax.random.key(i), (1, n), 0, config.vocab_size)
                   for i, n in ((1, 6), (2, 10)))
  row = jnp.concatenate([first, second], axis=1)
  positions = jnp.concatenate([jnp.arange(6), jnp.arange(10)])[None]
  segment = jnp.array([0] * 6 + [1] * 10)
  mask = (segment[:, None] == segment[None, :]) & jnp.tril(jnp.ones((16, 16), bool))
  apply = jax.jit(model.apply)
  packed = apply({"params": params}, row, positions_T=positions, attention_mask_BxTxS=mask[None])
  alone = [apply({"params": params}, x) for x in (first, second)]
  chex.assert_trees_all_close(packed, jnp.concatenate(alone, axis=1), rtol=1e-5, atol=1e-5)

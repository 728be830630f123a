"""The model options (today's recipe): rotary positions, RMSNorm, QK-norm, ReLU^2 and
SwiGLU MLPs, untied embeddings, zero-initialised projections. Each matches its formula,
trains, is causal, decodes from the cache as it computes from scratch, runs in both forms
of model.scan_layers, takes LoRA, shards, and is refused by export where transformers has no
equivalent (tests/test_export_llama.py exports the combinations it has)."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import (config as config_lib, generate, hf_export, hf_gpt2, layers, lora, sharding,
                    steps)
from jaxgpt.errors import UserError
from jaxgpt.attention import CausalSelfAttention
from jaxgpt.model import GPT, GPTConfig, _norm, count_params

from helpers import (assert_clean_error, perturbed_params, random_batch, run, tiny_config,
                     train_on_one_batch)

CONFIG = GPTConfig(vocab_size=40, vocab_multiple=16, block_size=16, n_layer=2, n_head=2,
                   n_embd=32, dropout=0.0)
ALL_ON = dict(position="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu",
              tie_embeddings=False, zero_init_proj=True)
EACH_OPTION = [dict(position="rope"), dict(norm="rmsnorm"), dict(qk_norm=True),
               dict(mlp="relu2"), dict(mlp="swiglu"), dict(tie_embeddings=False),
               dict(zero_init_proj=True)]


def _with(config=CONFIG, **options):
  return dataclasses.replace(config, **options)


def _rms_norm(x, scale, eps=CONFIG.norm_eps):
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * scale


def _rope(x_BxTxHxK, positions_T, base=10000.0):
  half = x_BxTxHxK.shape[-1] // 2
  angles = positions_T[:, None] / base ** (np.arange(half) / half)
  cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
  x1, x2 = x_BxTxHxK[..., :half], x_BxTxHxK[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@pytest.mark.parametrize("norm_eps", [1e-5, 0.5])
def test_rmsnorm_matches_its_formula(norm_eps):
  config = _with(norm="rmsnorm", norm_eps=norm_eps)
  x = np.asarray(jax.random.normal(jax.random.key(0), (6, config.n_embd)))
  norm = _norm(config, "ln")
  scale = np.asarray(jax.random.normal(jax.random.key(1), (config.n_embd,)))
  got = norm.apply({"params": {"scale": scale}}, x)
  np.testing.assert_allclose(got, _rms_norm(x, scale, norm_eps), rtol=1e-5, atol=1e-6)
  params = jax.eval_shape(GPT(config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  assert set(params["ln_f"]) == {"scale"} and set(params["h_0"]["ln_1"]) == {"scale"}


@pytest.mark.parametrize("options", [dict(qk_norm=True), dict(position="rope"),
                                     dict(qk_norm=True, position="rope"),
                                     dict(qk_norm=True, position="rope", rope_base=5e5,
                                          norm_eps=1e-2)])
def test_attention_with_qk_norm_and_rope_matches_numpy(options):
  """The attention layer against a NumPy reference: q, k, v from c_attn; q and k normalised
  per head (RMSNorm, a learned scale per head feature) and rotated; causal softmax; c_proj."""
  c = _with(**options)
  b, t = 2, 7
  x_NxD = jax.random.normal(jax.random.key(0), (b * t, c.n_embd))
  positions_T = jnp.arange(3, 3 + t)  # not from 0: the rotation must use the positions given
  attention = CausalSelfAttention(c)
  params = nn.meta.unbox(attention.init(jax.random.key(1), x_NxD, b, True, False,
                                        positions_T)["params"])
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape),
                        params)
  got = attention.apply({"params": params}, x_NxD, b, True, False, positions_T)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x_NxD, np.float64)
  qkv = np.einsum("nd,dihk->nihk", x, p["c_attn"]["kernel"]).reshape(b, t, 3, c.n_head, -1)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if c.qk_norm:
    assert set(p) == {"c_attn", "c_proj", "q_norm", "k_norm"}
    q, k = (_rms_norm(x, p[f"{name}_norm"]["scale"], c.norm_eps) for x, name in ((q, "q"), (k, "k")))
  if c.position == "rope":
    q, k = (_rope(x, np.asarray(positions_T), c.rope_base) for x in (q, k))
  att = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(c.head_size)
  att = np.where(np.tril(np.ones((t, t), bool)), att, -np.inf)
  probs = np.exp(att - att.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y = np.einsum("bhts,bshk->bthk", probs, v).reshape(b * t, c.n_head, -1)
  expected = np.einsum("nhk,hkd->nd", y, p["c_proj"]["kernel"])
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_rope_has_no_position_table_and_depends_only_on_relative_positions():
  c = _with(position="rope")
  params = perturbed_params(c)
  assert "wpe" not in params
  qkv_1x1x3x1xK = jax.random.normal(jax.random.key(0), (1, 1, 3, 1, c.head_size))
  from jaxgpt.attention import rope_frequencies, rotated  # pylint: disable=g-import-not-at-top
  at = lambda i: np.asarray(rotated(qkv_1x1x3x1xK, jnp.array([i]), rope_frequencies(CONFIG)))[0, 0, :, 0]
  dot = lambda i, j: float(np.sum(at(i)[0] * at(j)[1]))  # q at position i, k at j
  np.testing.assert_allclose(dot(5, 2), dot(13, 10), rtol=1e-5)
  assert not np.isclose(dot(5, 2), dot(5, 3))
  np.testing.assert_array_equal(at(7)[2], qkv_1x1x3x1xK[0, 0, 2, 0])  # v is not rotated


@pytest.mark.parametrize("scan_layers", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("options", [pytest.param(dict(), marks=pytest.mark.slow),
                                     pytest.param(dict(position="rope"), marks=pytest.mark.slow),
                                     ALL_ON])
def test_cached_decoding_equals_full_forward(options, scan_layers):
  c = _with(scan_layers=scan_layers, **options)
  params = perturbed_params(c)
  apply = jax.jit(GPT(c).apply, static_argnames=("decode", "mutable"))
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, c.vocab_size)
  full = apply({"params": params}, tokens)
  logits, cache = apply({"params": params}, tokens[:, :5], decode=True,
                        positions_T=jnp.arange(5), mutable=("cache",))
  decoded = [logits]
  for i in range(5, 12):
    logits, cache = apply({"params": params, **cache}, tokens[:, i:i + 1], decode=True,
                          positions_T=jnp.array([i]), mutable=("cache",))
    decoded.append(logits)
  np.testing.assert_allclose(jnp.concatenate(decoded, axis=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_rope_generation_equals_recomputation_past_the_block():
  """jaxgpt.generate's cached greedy decoding, refilling the cache past the block, gives the
  tokens of recomputing the whole context each step."""
  c = _with(block_size=32, **ALL_ON)
  model, params = GPT(c), perturbed_params(c, scale=3.0)
  prompt, n = [3, 1, 4, 1, 5, 9], 2 * c.block_size + 5
  chunks = generate.generate(model, params, prompt, n, generate.Sampling(temperature=0.0),
                             num_samples=1, seed=0, chunk=16)
  got = list(np.concatenate(list(chunks), axis=1)[0])
  keep, context, expected = generate.refill_length(c.block_size), list(prompt), []
  apply = jax.jit(model.apply)
  for _ in range(n):
    padded = np.zeros((1, c.block_size), np.int32)
    padded[0, :len(context)] = context
    expected.append(int(jnp.argmax(apply({"params": params}, padded)[0, len(context) - 1,
                                                                      :c.vocab_size])))
    context = (context[-keep:] if len(context) == c.block_size else context) + expected[-1:]
  assert got == expected


@pytest.mark.slow
@pytest.mark.parametrize("options", EACH_OPTION + [ALL_ON], ids=str)
def test_each_option_trains_and_is_causal(options):
  config = tiny_config(**options)
  losses, state = train_on_one_batch(config, 4)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
  model = GPT(config_lib.model_config(config, 30))
  tokens = jax.random.randint(jax.random.key(2), (2, config.model.block_size), 0, 30)
  changed = tokens.at[:, 9:].set((tokens[:, 9:] + 5) % 30)
  apply = jax.jit(model.apply)
  params = jax.device_get(state.params)
  before, after = apply({"params": params}, tokens), apply({"params": params}, changed)
  np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-5)
  assert not np.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.slow
@pytest.mark.parametrize("options", [ALL_ON, dict(ALL_ON, mlp="relu2")], ids=str)
def test_scanned_and_unrolled_forms_agree(options):
  config = tiny_config(bias=True, **options)
  unrolled = GPT(config_lib.model_config(config, 30))
  params = perturbed_params(unrolled.config)
  scanned = GPT(dataclasses.replace(unrolled.config, scan_layers=True))
  x, y = random_batch(config)
  loss_and_grads = jax.jit(jax.value_and_grad(steps.loss_fn, argnums=1), static_argnums=0)
  loss, grads = loss_and_grads(unrolled, params, x, y)
  scanned_loss, scanned_grads = loss_and_grads(scanned, layers.stack_layers(params), x, y)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
  chex.assert_trees_all_close(layers.unstack_layers(scanned_grads), grads, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_zero_init_proj_starts_the_projections_at_zero():
  for scan_layers in (False, True):
    c = _with(zero_init_proj=True, scan_layers=scan_layers)
    params = nn.meta.unbox(GPT(c).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    blocks = [params["h"]] if scan_layers else [params["h_0"], params["h_1"]]
    for block in blocks:
      assert not np.any(block["attn"]["c_proj"]["kernel"])
      assert not np.any(block["mlp"]["c_proj"]["kernel"])
      assert np.std(block["mlp"]["c_fc"]["kernel"]) > 0.01
      assert np.std(block["attn"]["c_attn"]["kernel"]) > 0.01


def test_swiglu_width_and_parameter_count():
  """SwiGLU's width is 8/3 D rounded up to a multiple of 64: 1024 for D=384, 2048 for 768,
  so its three matrices hold GELU's two's 8 D^2 weights there (more where D is small)."""
  assert _with(n_embd=384, mlp="swiglu").mlp_features == 1024
  assert _with(n_embd=768, mlp="swiglu").mlp_features == 2048
  assert _with(n_embd=32, mlp="swiglu").mlp_features == 128  # 85.3 rounded up
  gelu, swiglu = (_with(n_embd=384, n_head=6, mlp=m) for m in ("gelu", "swiglu"))
  tokens = jnp.zeros((1, 4), jnp.int32)
  count = lambda c: count_params(jax.eval_shape(GPT(c).init, jax.random.key(0), tokens))
  assert count(swiglu) == count(gelu)
  shapes = jax.eval_shape(GPT(swiglu).init, jax.random.key(0), tokens)["params"]
  assert nn.meta.unbox(shapes)["h_0"]["mlp"]["c_fc"]["kernel"].shape == (384, 2, 1024)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_mlp_width_sets_the_mlps_hidden_width(mlp):
  c = _with(mlp=mlp, mlp_width=48)
  shapes = nn.meta.unbox(jax.eval_shape(GPT(c).init, jax.random.key(0),
                                        jnp.zeros((1, 4), jnp.int32))["params"])["h_0"]["mlp"]
  assert shapes["c_fc"]["kernel"].shape == ((32, 2, 48) if mlp == "swiglu" else (32, 48))
  assert shapes["c_proj"]["kernel"].shape == (48, 32)
  with pytest.raises(ValueError, match="model.mlp_width=-1"):
    _with(mlp_width=-1)


def test_untied_embeddings_have_their_own_head():
  c = _with(tie_embeddings=False)
  boxed = jax.eval_shape(GPT(c).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  assert boxed["lm_head"].names == ("embed", "vocab")
  assert boxed["lm_head"].value.shape == (c.n_embd, c.padded_vocab_size)
  assert "lm_head" not in jax.eval_shape(GPT(CONFIG).init, jax.random.key(0),
                                         jnp.zeros((1, 4), jnp.int32))["params"]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_has_logical_names_that_the_rules_map(scan_layers):
  c = _with(scan_layers=scan_layers, **ALL_ON)
  boxed = jax.eval_shape(GPT(c).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  ruled = {name for name, _ in sharding.LOGICAL_RULES}
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= ruled, leaf.names


@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [False, True])
def test_lora_targets_apply_to_a_swiglu_mlp_and_merge(scan_layers):
  c = _with(scan_layers=scan_layers, lora_rank=4, lora_targets=("c_attn", "c_proj", "c_fc"),
            **ALL_ON)
  params = perturbed_params(c)  # perturbed: lora_b is not zero, so the adapters change the output
  block = params["h"] if scan_layers else params["h_0"]
  assert {"lora_a", "lora_b"} <= set(block["mlp"]["c_fc"])
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, c.vocab_size)
  adapted = jax.jit(GPT(c).apply)({"params": params}, tokens)
  merged = lora.merge(params, c.lora_rank, c.lora_alpha)
  base = GPT(dataclasses.replace(c, lora_rank=0, lora_targets=()))
  np.testing.assert_allclose(jax.jit(base.apply)({"params": merged}, tokens), adapted,
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("changes, words", [
    ({"model.position": "alibi"}, "model.position='alibi' is not one of learned, rope"),
    ({"model.norm": "batchnorm"}, "model.norm"),
    ({"model.mlp": "geglu"}, "model.mlp"),
    ({"model.qk_norm": None}, "model.qk_norm=None is not True or False"),  # other types:
    ({"model.zero_init_proj": None}, "model.zero_init_proj"),  # ml_collections refuses them
    ({"model.position": "rope", "model.n_embd": 36, "model.n_head": 4}, "head size"),
])
def test_bad_option_values_are_one_line_errors(changes, words):
  config = config_lib.base_config()
  for key, value in changes.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  with pytest.raises(UserError, match=None) as error:
    config_lib.validate(config, needs_data=False)
  message = str(error.value)
  assert words in message and "\n" not in message, message


def test_options_reach_the_model_config_and_default_to_gpt2():
  defaults = config_lib.model_config(config_lib.base_config(), 30)
  assert {name: getattr(defaults, name) for name in config_lib.gpt2_architecture()} == \
      config_lib.gpt2_architecture()
  assert not defaults.zero_init_proj
  mapped = config_lib.model_config(tiny_config(**ALL_ON), 30)
  assert {name: getattr(mapped, name) for name in ALL_ON} == ALL_ON


def test_export_refuses_options_without_a_transformers_equivalent():
  assert hf_export.check_exportable(CONFIG) == "GPT-2"
  assert hf_export.check_exportable(_with(zero_init_proj=True)) == "GPT-2"  # only the start
  with pytest.raises(UserError, match="model.position='rope'") as error:
    hf_export.check_exportable(_with(position="rope"))  # rotary positions with LayerNorm
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match="model.norm='rmsnorm', model.tie_embeddings=False"):
    hf_gpt2.export({}, _with(norm="rmsnorm", tie_embeddings=False), None, "/nonexistent")


@pytest.mark.slow
def test_a_run_with_every_option_checkpoints_loads_and_refuses_export(tmp_path):
  """Every option on, and a ReLU^2 MLP, which no transformers architecture has."""
  from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  options = dict(ALL_ON, mlp="relu2")
  text = tmp_path / "input.txt"
  text.write_text("To be, or not to be, that is the question.\n" * 40)
  config = tiny_config(**options)
  config.data.update(source="text", path=str(text))
  config.train.max_steps = 1
  workdir, out = tmp_path / "run", tmp_path / "hf"
  Trainer(config, str(workdir), devices=jax.devices()[:1]).run()
  loaded = run_loader.load_run(str(workdir))
  assert {name: getattr(loaded.model.config, name) for name in options} == options
  assert "lm_head" in loaded.params and "wpe" not in loaded.params
  result = run("export", f"--workdir={workdir}", f"--out={out}", check=False)
  assert_clean_error(result, "Qwen3 has no model.mlp='relu2'", "GPT-2 (", "Llama (")
  assert not out.exists()


@pytest.mark.slow
def test_every_option_shards_over_fsdp_and_tensor_as_on_one_device():
  """From the same weights, a (data 1, fsdp 2, tensor 2) mesh takes the steps of one device."""
  start = jax.device_get(train_on_one_batch(tiny_config(**ALL_ON), 0)[1])
  losses, one = train_on_one_batch(tiny_config(**ALL_ON), 2, state=start)
  config = tiny_config(**ALL_ON)
  config.mesh.update(data=1, fsdp=2, tensor=2)
  sharded_losses, sharded = train_on_one_batch(config, 2, devices=jax.devices()[:4], state=start)
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(one.params),
                              rtol=1e-4, atol=1e-6)

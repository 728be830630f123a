"""Int8 and bfloat16 weights for sampling: the int8 matmul against the float one, a quantized
model's logits against float32's for every form of the model, and generation with them."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import generate, quantize, run_loader
from jaxgpt.model import GPT, GPTConfig

from helpers import perturbed_params

GPT2_LIKE = GPTConfig(vocab_size=50, vocab_multiple=16, block_size=32, n_layer=2, n_head=4,
                      n_embd=64, dropout=0.0, bias=True)
LLAMA_LIKE = dataclasses.replace(GPT2_LIKE, bias=False, position="rope", norm="rmsnorm",
                                 mlp="swiglu", tie_embeddings=False, n_kv_head=2, qk_norm=True,
                                 qkv_bias=True)
# How far int8 logits may stray, as a fraction of the float32 logits' largest magnitude.
INT8_BOUND = 0.03
BFLOAT16_BOUND = 0.03


@pytest.mark.parametrize("num_in,shape", [(1, (64, 3, 4, 16)), (2, (4, 16, 64)),
                                           pytest.param(1, (96, 40), marks=pytest.mark.slow)])
def test_the_int8_matmul_is_the_float_product_within_rounding(num_in, shape):
  w = jax.random.normal(jax.random.key(0), shape) * 0.02
  x = jax.random.normal(jax.random.key(1), (5,) + shape[:num_in])
  values, scale = quantize.int8_weights(w, num_in)
  chex.assert_type(values, jnp.int8)
  chex.assert_shape(scale, shape[num_in:])
  got = quantize.int8_matmul(x, values, scale, num_in)
  want = jnp.tensordot(x, w, num_in)
  chex.assert_shape(got, want.shape)
  assert float(jnp.max(jnp.abs(got - want))) < 0.02 * float(jnp.max(jnp.abs(want)))
  # One row alone (computed as two) gives that row of the batch.
  chex.assert_trees_all_close(quantize.int8_matmul(x[:1], values, scale, num_in), got[:1])


def _run(config, params):
  return run_loader.LoadedRun(config=None, tokenizer=None, model=GPT(config), params=params,
                              mesh=None, step=0)


def _logits(run, tokens):
  return np.asarray(jax.jit(run.model.apply)({"params": run.params}, tokens))


def test_float32_sampling_computes_in_float32_for_a_run_trained_in_bfloat16():
  """--dtype=float32 kept the run's own precision=bfloat16 computation."""
  bfloat16_run = _run(dataclasses.replace(LLAMA_LIKE, dtype="bfloat16"), {})
  assert bfloat16_run.for_sampling("float32", "none").model.config.dtype == "float32"


@pytest.mark.parametrize("config", [
    pytest.param(GPT2_LIKE, marks=pytest.mark.slow), LLAMA_LIKE, pytest.param(dataclasses.replace(GPT2_LIKE, scan_layers=True),
                                        marks=pytest.mark.slow)],
                         ids=["gpt2", "llama", "scanned"])
def test_int8_and_bfloat16_logits_stay_near_float32s(config):
  float_run = _run(config, jax.tree.map(jnp.asarray, perturbed_params(config)))
  tokens = jax.random.randint(jax.random.key(2), (2, config.block_size), 0, config.vocab_size)
  want = _logits(float_run, tokens)[..., :config.vocab_size]
  largest = np.abs(want).max()
  for dtype, quantized, bound in (("float32", "int8", INT8_BOUND),
                                  ("bfloat16", "none", BFLOAT16_BOUND)):
    run = float_run.for_sampling(dtype, quantized)
    got = _logits(run, tokens)
    chex.assert_type(got, jnp.float32)
    got = got[..., :config.vocab_size]
    assert np.abs(got - want).max() < bound * largest, (dtype, quantized)
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9, (dtype, quantized)


def test_int8_parameters_are_a_quarter_of_the_bytes():
  run = _run(LLAMA_LIKE, jax.tree.map(jnp.asarray, perturbed_params(LLAMA_LIKE))).for_sampling(
      "float32", "int8")
  leaves = jax.tree_util.tree_leaves_with_path(run.params)
  matrices = [x for path, x in leaves if path[-1].key in ("kernel", "wte", "lm_head")]
  assert matrices and all(x.dtype == jnp.int8 for x in matrices)
  assert all(x.dtype == jnp.float32 for _, x in leaves if x.dtype != jnp.int8)


@pytest.mark.slow
def test_lora_adapters_are_merged_before_quantizing():
  config = dataclasses.replace(GPT2_LIKE, lora_rank=4, lora_targets=("c_attn", "c_fc"))
  params = jax.tree.map(jnp.asarray, perturbed_params(config))
  tokens = jnp.arange(config.block_size)[None] % config.vocab_size
  want = _logits(_run(config, params), tokens)
  run = _run(config, params).for_sampling("float32", "int8")
  assert run.model.config.lora_rank == 0
  got = _logits(run, tokens)
  assert np.abs(got - want)[..., :config.vocab_size].max() < INT8_BOUND * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.parametrize("num_samples", [1, 4])
def test_int8_generation_runs_and_greedy_mostly_agrees_with_float32(num_samples):
  config = GPT2_LIKE
  float_run = _run(config, jax.tree.map(lambda x: jnp.asarray(x) * 3, perturbed_params(config)))
  int8_run = float_run.for_sampling("float32", "int8")
  sampling = generate.Sampling(temperature=0.0)

  def greedy(run):
    return np.concatenate(list(generate.generate(run.model, run.params, [1, 2, 3], 20, sampling,
                                                 num_samples=num_samples)), axis=1)

  want, got = greedy(float_run), greedy(int8_run)
  chex.assert_shape(got, (num_samples, 20))
  assert got.max() < config.vocab_size
  assert (got[:, :5] == want[:, :5]).all()  # until a near tie flips, they agree


def _on_two_devices(params):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  return jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _split_tokens(run, params, sampling):
  """40 tokens for 4 rows, in chunks of 16 past a refill; asserts nothing compiles after the
  first chunk."""
  timing, chunks, compile_seconds = generate.Timing(), [], []
  for chunk in generate.generate(run.model, params, [1, 2, 3], 40, sampling, num_samples=4,
                                 seed=5, chunk=16, timing=timing):
    chunks.append(chunk)
    compile_seconds.append(timing.compile_s)
  assert len(set(compile_seconds)) == 1
  return np.concatenate(chunks, axis=1)


def _assert_split_in_two(params, path, axis):
  matrix = params
  for key in path:
    matrix = matrix[key]
  halved = matrix.shape[:axis] + (matrix.shape[axis] // 2,) + matrix.shape[axis + 1:]
  assert {shard.data.shape for shard in matrix.addressable_shards} == {halved}


@pytest.mark.slow  # 16 s on 2 cores: keeps the fast subset under 3 minutes
def test_a_large_float_models_weights_split_over_two_devices_give_one_devices_tokens(
    monkeypatch):
  """Two devices split each matrix by heads, MLP features and vocabulary (generation's tensor
  parallelism): the same tokens, greedy and sampled, past a refill of the cache."""
  monkeypatch.setattr(generate, "LARGE_MODEL_WEIGHTS", 0)  # the small model counts as large
  run = _run(GPT2_LIKE, jax.tree.map(lambda x: jnp.asarray(x) * 3, perturbed_params(GPT2_LIKE)))
  split, placement = generate.place(run.model, _on_two_devices(run.params), 4, True)
  assert dict(placement.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
  _assert_split_in_two(split, ("h_0", "attn", "c_attn", "kernel"), 2)  # (D, 3, H, K)
  _assert_split_in_two(split, ("h_0", "mlp", "c_proj", "kernel"), 0)  # (F, D)
  for sampling in (generate.Sampling(temperature=0.0),
                   generate.Sampling(temperature=0.8, top_k=20)):
    np.testing.assert_array_equal(_split_tokens(run, _on_two_devices(run.params), sampling),
                                  _split_tokens(run, run.params, sampling))


def test_splitting_a_models_weights_traces_it_once(monkeypatch):
  """Each generation places the parameters; the split's shardings come from a trace of the
  whole model, which a chat's every turn would otherwise repeat."""
  run = _run(GPT2_LIKE, jax.tree.map(jnp.asarray, perturbed_params(GPT2_LIKE)))
  traced, abstract_params = [], generate.abstract_params
  monkeypatch.setattr(generate, "abstract_params", lambda *args: (
      traced.append(args), abstract_params(*args))[1])
  generate._split_shardings.cache_clear()  # pylint: disable=protected-access
  placed = [generate.place(run.model, _on_two_devices(run.params), 4, True) for _ in range(2)]
  assert len(traced) == 1
  assert all(dict(placement.mesh.shape)["tensor"] == 2 for _, placement in placed)
  chex.assert_trees_all_equal(*(jax.tree.map(lambda x: x.sharding, p) for p, _ in placed))


@pytest.mark.slow  # the float model's split stays in the fast subset
def test_an_int8_models_weights_split_over_two_devices_stay_near_float32(monkeypatch):
  """int8 matrices split as the float ones (their rows in quantize.output_order); each device
  scales its own share of a row's inputs, so the logits are those of a slightly different
  rounding: within the int8 bound of float32's, and greedy tokens agree at first."""
  monkeypatch.setattr(generate, "LARGE_MODEL_WEIGHTS", 0)  # the small model counts as large
  config = LLAMA_LIKE  # grouped-query heads and a SwiGLU MLP: both split in output_order
  float_run = _run(config, jax.tree.map(lambda x: jnp.asarray(x) * 3, perturbed_params(config)))
  run = float_run.for_sampling("float32", "int8")
  split, placement = generate.place(run.model, _on_two_devices(run.params), 4, True)
  _assert_split_in_two(split, ("h_0", "attn", "c_attn", "kernel"), 0)
  _assert_split_in_two(split, ("h_0", "mlp", "c_fc", "kernel"), 0)
  _assert_split_in_two(split, ("h_0", "mlp", "c_proj", "kernel"), 1)
  prompt_BxP = np.tile(np.arange(1, 9, dtype=np.int32), (4, 1))
  with placement.active():
    state = generate.compiled(True)[0](run.model, split, placement.put_rows(prompt_BxP), 8, 0,
                                       cache_size=16)
  want = _logits(float_run, prompt_BxP)[:, -1, :config.vocab_size]
  got = np.asarray(state.logits_BxV)[:, :config.vocab_size]
  assert np.abs(got - want).max() < INT8_BOUND * np.abs(want).max()
  greedy = generate.Sampling(temperature=0.0)
  got = _split_tokens(run, _on_two_devices(run.params), greedy)
  assert (got[:, :10] == _split_tokens(run, run.params, greedy)[:, :10]).all()


@pytest.mark.slow
def test_heads_the_devices_do_not_split_evenly_keep_the_rows_split():
  config = dataclasses.replace(LLAMA_LIKE, n_head=6, n_kv_head=3, n_embd=96)
  run = _run(config, jax.tree.map(jnp.asarray, perturbed_params(config)))
  run = run.for_sampling("float32", "int8")
  _, placement = generate.place(run.model, _on_two_devices(run.params), 4, True)
  assert dict(placement.mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1}
  _, placement = generate.place(run.model, _on_two_devices(run.params), 1, True)
  assert placement.mesh.size == 1  # one row: one device reads every weight, no collectives


@pytest.mark.slow
def test_a_small_int8_models_rows_stay_split(monkeypatch):
  """Under LARGE_MODEL_WEIGHTS a step is not its weights' reads: split, they add collectives."""
  run = _run(LLAMA_LIKE, jax.tree.map(jnp.asarray, perturbed_params(LLAMA_LIKE)))
  run = run.for_sampling("float32", "int8")
  asked, place = [], generate.place
  monkeypatch.setattr(generate, "place", lambda *args, **kwargs: (
      asked.append(kwargs.get("split_weights")), place(*args, **kwargs))[1])
  list(generate.generate(run.model, _on_two_devices(run.params), [1, 2], 4, num_samples=2))
  assert asked == [False]

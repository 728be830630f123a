"""The optimizers: train.optimizer=adamw, and muon (Muon for the hidden matrices, AdamW for
the rest) against a NumPy Newton-Schulz reference, in both forms of model.scan_layers, on a
sharded mesh, through resume."""

import dataclasses
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxgpt import layers, muon, optim, state as state_lib
from jaxgpt.model import GPT, GPTConfig

from helpers import (assert_clean_error, init_params, logged_losses, run, tiny_config,
                     train_on_one_batch)

MODEL = GPTConfig(vocab_size=40, vocab_multiple=16, block_size=16, n_layer=2, n_head=2,
                  n_embd=32, mlp="swiglu", dropout=0.0)


def _muon_config(**train):
  return tiny_config(train={**dict(optimizer="muon", learning_rate=3e-3, muon_learning_rate=0.05,
                                  warmup_steps=0, max_steps=100, min_lr=3e-3, grad_clip=0.0),
                           **train}).train


def _newton_schulz(g):
  """Keller Jordan's quintic Newton-Schulz iteration (modded-nanogpt), in float64."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g / (np.linalg.norm(g) + 1e-8)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  for _ in range(5):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if tall else x


def _reference_first_update(path, g, lr):
  """Muon's first step on one hidden kernel: Nesterov momentum from zero is a multiple of g,
  which the iteration's normalisation removes, so the update is -lr * width scale * NS(g),
  each q, k, v (or gate, value) and each layer orthogonalised on its own."""
  d = muon.dimensions(path, g)
  g = np.asarray(g, np.float64)
  batch = [a for a in range(g.ndim) if a not in d.reduction_axis + d.output_axis]
  order = batch + list(d.reduction_axis) + list(d.output_axis)
  shape = [g.shape[a] for a in order]
  fan_in = int(np.prod([g.shape[a] for a in d.reduction_axis]))
  fan_out = int(np.prod([g.shape[a] for a in d.output_axis]))
  flat = g.transpose(order).reshape(-1, fan_in, fan_out)
  out = np.stack([_newton_schulz(m) for m in flat]) * np.sqrt(max(1, fan_out / fan_in))
  return -lr * out.reshape(shape).transpose(np.argsort(order))


def _params_and_grads(config):
  params = init_params(GPT(config))
  keys = iter(jax.random.split(jax.random.key(1), 100))
  grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), params)
  return params, grads


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_muon_updates_hidden_matrices_by_newton_schulz_and_the_rest_by_adamw(scan):
  model = dataclasses.replace(MODEL, scan_layers=scan)
  params, grads = _params_and_grads(model)
  train = _muon_config()
  optimizer = optim.make_optimizer(train)
  updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
  adamw = optax.adamw(train.learning_rate, b1=train.beta1, b2=train.beta2,
                      weight_decay=train.weight_decay, mask=optim.decay_mask)
  adamw_updates, _ = jax.jit(adamw.update)(grads, adamw.init(params), params)
  hidden = []

  def check(path, update, grad, adamw_update):
    if muon.is_hidden_matrix(path):
      hidden.append(jax.tree_util.keystr(path))
      expected = _reference_first_update(path, grad, train.muon_learning_rate)
      np.testing.assert_allclose(update, expected, atol=2e-5 * train.muon_learning_rate)
    else:
      np.testing.assert_allclose(update, adamw_update, rtol=1e-6, atol=1e-9)

  jax.tree_util.tree_map_with_path(check, updates, grads, adamw_updates)
  assert len(hidden) == (4 if scan else 8), hidden  # c_attn, c_proj, c_fc, c_proj per block


def test_the_hidden_matrices_are_the_block_kernels_only():
  model = GPT(dataclasses.replace(MODEL, tie_embeddings=False, lora_rank=2,
                                 lora_targets=("c_attn",)))
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                       np.zeros((1, 4), np.int32))["params"])
  labels = {jax.tree_util.keystr(p): muon.is_hidden_matrix(p)
            for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert {k for k, v in labels.items() if v} == {
      f"['h_{i}']['{m}']['{layer}']['kernel']" for i in range(2)
      for m, layer in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))}


def test_muon_state_shards_like_the_parameters():
  config = tiny_config(mlp="swiglu")
  config.train.optimizer = "muon"
  config.mesh.update(data=1, fsdp=2, tensor=2)
  from jaxgpt import config as config_lib, sharding  # pylint: disable=g-import-not-at-top
  model = GPT(config_lib.model_config(config, 30))
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
  shardings = state_lib.state_shardings(model, optim.make_optimizer(config.train), mesh)
  params = shardings.params
  muon_mu = shardings.opt_state[1].inner_states["muon"].inner_state[0].mu
  adam_mu = shardings.opt_state[1].inner_states["adamw"].inner_state[0].mu

  def same(path, param_sharding):
    moment = muon_mu if muon.is_hidden_matrix(path) else adam_mu
    for key in path:
      moment = moment[key.key]
    assert moment == param_sharding, jax.tree_util.keystr(path)

  jax.tree_util.tree_map_with_path(same, params)
  assert params["h_0"]["attn"]["c_attn"]["kernel"].spec == P("fsdp", None, "tensor", None)


@pytest.mark.slow
def test_muon_on_a_sharded_mesh_and_in_either_layer_form_takes_the_same_steps():
  config = tiny_config(mlp="swiglu")
  config.train.update(optimizer="muon", batch_size=4)
  _, initial = train_on_one_batch(config, 0)
  initial = jax.device_get(initial)
  expected, state = train_on_one_batch(config, 3, state=initial)
  config.mesh.update(data=1, fsdp=2, tensor=2)
  sharded, _ = train_on_one_batch(config, 3, devices=jax.devices()[:4], state=initial)
  np.testing.assert_allclose(sharded, expected, rtol=2e-5)
  config = tiny_config(mlp="swiglu", scan_layers=True)
  config.train.update(optimizer="muon", batch_size=4)
  scanned, scanned_state = train_on_one_batch(config, 3, state=initial)
  np.testing.assert_allclose(scanned, expected, rtol=2e-5)
  unstacked = layers.unstack_layers(jax.device_get(scanned_state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), unstacked,
               jax.device_get(state.params))
  assert expected[-1] < expected[0]


def test_learning_rate_schedules_share_their_shape():
  train = _muon_config(warmup_steps=10, max_steps=100, min_lr=1e-4)
  train.learning_rate = 1e-3
  adamw = optim.learning_rate_schedule(train)
  muon = optim.learning_rate_schedule(train, train.muon_learning_rate)
  for step in (0, 5, 10, 50, 100, 200):
    np.testing.assert_allclose(muon(step) / adamw(step), 50.0, rtol=1e-5)
  np.testing.assert_allclose(muon(100), 0.05 * 0.1, rtol=1e-5)


def test_an_unknown_optimizer_is_one_line():
  result = run("train", "--config=shakespeare_char_cpu", "--config.train.optimizer=sgd",
               check=False)
  assert_clean_error(result, "train.optimizer='sgd'", "adamw, muon", "--config.train.optimizer=")


@pytest.mark.slow
def test_a_muon_run_resumes_exactly_and_keeps_its_optimizer(text_file, tmp_path):
  config = ["--config=shakespeare_char_cpu", f"--config.data.path={text_file}",
            "--config.data.source=text", "--config.model.n_layer=2", "--config.model.n_embd=32",
            "--config.model.n_head=2", "--config.model.block_size=16",
            "--config.train.batch_size=8", "--config.train.log_every=1",
            "--config.train.eval_every=5", "--config.train.eval_steps=2",
            "--config.train.checkpoint_every=5", "--config.train.sample_tokens=0",
            "--config.data.pipeline=numpy", "--config.train.max_steps=10"]
  workdir = tmp_path / "run"
  run("train", *config, f"--workdir={workdir}", "--config.train.optimizer=muon")
  whole = logged_losses(workdir)
  shutil.rmtree(workdir / "checkpoints" / "10")  # as if stopped after step 5's checkpoint
  # The resume names no optimizer: it takes the run's, Muon, from its config.json.
  result = run("train", *config, f"--workdir={workdir}")
  assert "resum" in result.stdout + result.stderr
  resumed = logged_losses(workdir)
  assert set(resumed) == set(whole) and len(whole) == 10
  np.testing.assert_allclose([resumed[s] for s in whole], list(whole.values()), rtol=1e-6)
  result = run("train", *config, f"--workdir={workdir}", "--config.train.optimizer=adamw",
               check=False)
  assert_clean_error(result, "train.optimizer=adamw", "contradicts")


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_muon_takes_optax_contribs_steps(scan):
  """jaxgpt's Muon (same-shape matrices stacked into one batch) against optax.contrib.muon's
  (each matrix on its own) over three steps of changing gradients."""
  model = dataclasses.replace(MODEL, scan_layers=scan)
  params, _ = _params_and_grads(model)
  hidden = jax.tree_util.tree_map_with_path(
      lambda path, p: p if muon.is_hidden_matrix(path) else None, params)
  ours = muon.scale_by_muon(0.95)
  reference = optax.contrib.muon(1.0, beta=0.95, nesterov=True,
                                 muon_weight_dimension_numbers=lambda tree: jax.tree_util.
                                 tree_map_with_path(muon.dimensions, tree))
  ours_state, reference_state = ours.init(hidden), reference.init(hidden)
  for step in range(3):
    keys = iter(jax.random.split(jax.random.key(step), 100))
    grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), hidden)
    got, ours_state = jax.jit(ours.update)(grads, ours_state)
    want, reference_state = jax.jit(reference.update)(grads, reference_state, hidden)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -b, atol=2e-5), got, want)

"""The train step: gradient accumulation, learning, no recompiles, the eval loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import memory, optim, sharding, state as state_lib, steps
from jaxgpt.model import GPT, model_config

from conftest import tiny_config


def _setup(config, devices):
  model = GPT(model_config(config, 30))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, devices)
  shardings = state_lib.state_shardings(model, optimizer, mesh)
  state = state_lib.init_state(model, optimizer, mesh, config.seed)
  step = steps.jit_train_step(model, optimizer, optim.learning_rate_schedule(config.train),
                              state_lib.dropout_key(config.seed), mesh, shardings)
  return model, mesh, state, step


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 30, (config.train.batch_size, config.model.block_size), dtype=np.int32)
  return x, np.roll(x, -1, axis=1)


def _no_stop(rows):
  return np.zeros(rows, np.int32)


def _run(config, num_steps, devices=None, dropout=0.0):
  config.model.dropout = dropout
  _, mesh, state, step = _setup(config, devices or jax.devices()[:1])
  a = config.train.grad_accum_steps
  x, y = _batch(config)
  losses = []
  with sharding.rules_context(mesh):
    for _ in range(num_steps):
      xs, ys = (sharding.global_batch(z.reshape(a, -1, z.shape[-1]), mesh, 1) for z in (x, y))
      state, metrics = step(state, xs, ys, _no_stop(x.shape[0] // a))
      losses.append(float(metrics["loss"]))  # blocks: one step in flight at most
  return losses, state


def test_gradient_accumulation_equals_one_big_batch():
  big_losses, big = _run(tiny_config(), 3)
  config = tiny_config()
  config.train.grad_accum_steps = 4
  accum_losses, accum = _run(config, 3)
  np.testing.assert_allclose(accum_losses, big_losses, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(accum.params), jax.device_get(big.params), atol=1e-5)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
  config = tiny_config()
  config.train.update(warmup_steps=0, max_steps=15, learning_rate=3e-3)
  losses, state = _run(config, 15)
  assert losses[-1] < losses[0] - 0.5
  assert int(state.step) == 15
  chex.assert_tree_all_finite(state.params)


def test_dropout_changes_with_the_step_and_is_reproducible():
  config = tiny_config()
  first, _ = _run(config, 4, dropout=0.3)
  second, _ = _run(tiny_config(), 4, dropout=0.3)
  no_dropout, _ = _run(tiny_config(), 4)
  assert first == second
  assert first != no_dropout


def test_train_step_compiles_once():
  config = tiny_config()
  model = GPT(model_config(config, 30))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  shardings = state_lib.state_shardings(model, optimizer, mesh)
  state = state_lib.init_state(model, optimizer, mesh, config.seed)
  schedule = optim.learning_rate_schedule(config.train)

  @chex.assert_max_traces(n=1)
  def traced_step(st, x, y):
    return steps.train_step(st, x, y, _no_stop(x.shape[1]), model=model, optimizer=optimizer, schedule=schedule,
                            dropout_key=state_lib.dropout_key(0))

  step = jax.jit(traced_step, donate_argnums=0)
  with sharding.rules_context(mesh):
    for seed in range(3):
      x, y = _batch(config, seed)
      state, metrics = step(state, x[None], y[None])
      float(metrics["loss"])


def test_a_stop_request_of_any_row_reaches_the_metrics():
  config = tiny_config()
  _, mesh, state, step = _setup(config, jax.devices()[:2])
  x, y = _batch(config)
  requests = np.zeros(config.train.batch_size, np.int32)
  requests[-1] = 1  # the rows of the last data-parallel device
  with sharding.rules_context(mesh):
    xs, ys = (sharding.global_batch(z[None], mesh, 1) for z in (x, y))
    state, metrics = step(state, xs, ys, sharding.global_batch(np.zeros_like(requests), mesh))
    assert int(metrics["stop"]) == 0
    _, metrics = step(state, xs, ys, sharding.global_batch(requests, mesh))
    assert int(metrics["stop"]) == 1


def test_eval_loss_averages_the_batches():
  config = tiny_config()
  model, mesh, state, _ = _setup(config, jax.devices()[:1])
  batches = [_batch(config, s) for s in range(3)]
  xs, ys = (jnp.stack(z) for z in zip(*batches))
  with sharding.rules_context(mesh):
    mean = steps.eval_loss(state.params, xs, ys, model=model)
    each = [steps.loss_fn(model, state.params, x, y) for x, y in batches]
  np.testing.assert_allclose(mean, np.mean(each), rtol=1e-5)


def test_schedule_warms_up_then_decays_to_min_lr():
  config = tiny_config()
  config.train.update(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
  schedule = optim.learning_rate_schedule(config.train)
  assert float(schedule(0)) < float(schedule(5)) < float(schedule(9))
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(500)), 1e-4, rtol=1e-6)


def test_weight_decay_only_on_matrices():
  mask = optim.decay_mask({"w": jnp.ones((2, 3)), "b": jnp.ones(3), "k": jnp.ones((2, 2, 2))})
  assert mask == {"w": True, "b": False, "k": True}


def test_memory_per_device_counts_only_a_devices_shards():
  config = tiny_config()
  model = GPT(model_config(config, 30))
  optimizer = optim.make_optimizer(config.train)
  per_device = {}
  for axes in ({"data": 4, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 1}):
    config.mesh.update(**axes)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
    abstract = state_lib.abstract_state(model, optimizer, mesh)
    per_device[axes["fsdp"]] = memory.bytes_per_device(abstract)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  assert per_device[1] == whole  # data parallel: every device holds all of it
  assert whole / 4 <= per_device[4] < whole / 2  # fsdp: a quarter of the large matrices

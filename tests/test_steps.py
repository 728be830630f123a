"""The train step: gradient accumulation, learning, no recompiles, the eval loop."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import memory, optim, sharding, state as state_lib, steps
from jaxgpt.config import model_config
from jaxgpt.model import GPT
from jaxgpt.trainer import Program

from helpers import no_stop, random_batch, setup_step, tiny_config, train_on_one_batch



@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
  big_losses, big = train_on_one_batch(tiny_config(), 3)
  config = tiny_config(train=dict(grad_accum_steps=4))
  accum_losses, accum = train_on_one_batch(config, 3)
  np.testing.assert_allclose(accum_losses, big_losses, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(accum.params), jax.device_get(big.params), atol=1e-5)


@pytest.mark.slow
def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
  config = tiny_config()
  config.train.update(warmup_steps=0, max_steps=15, learning_rate=3e-3)
  losses, state = train_on_one_batch(config, 15)
  assert losses[-1] < losses[0] - 0.5
  assert int(state.step) == 15
  chex.assert_tree_all_finite(state.params)


@pytest.mark.slow
def test_dropout_changes_with_the_step_and_is_reproducible():
  config = tiny_config()
  first, _ = train_on_one_batch(config, 4, dropout=0.3)
  second, _ = train_on_one_batch(tiny_config(), 4, dropout=0.3)
  no_dropout, _ = train_on_one_batch(tiny_config(), 4)
  assert first == second
  assert first != no_dropout


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [False, True])
def test_init_state_compiled_for_speed_gives_the_default_compilers_values(recipe, monkeypatch):
  """init_state compiles at a lower optimisation level on CPU (CPU_INIT_COMPILER_OPTIONS):
  the state must equal the one the default compile gives, bit for bit."""
  from configs import default  # pylint: disable=g-import-not-at-top
  assert state_lib.CPU_INIT_COMPILER_OPTIONS
  config = default.cpu_config() if recipe else tiny_config()
  model = GPT(model_config(config, 80))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  got = state_lib.init_state(model, optimizer, mesh, config.seed)
  monkeypatch.setattr(state_lib, "CPU_INIT_COMPILER_OPTIONS", None)  # XLA's default options
  expected = state_lib.init_state(model, optimizer, mesh, config.seed)
  chex.assert_trees_all_equal(got, expected)


def test_train_step_compiles_once():
  config = tiny_config()
  model = GPT(model_config(config, 30))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state = state_lib.init_state(model, optimizer, mesh, config.seed)
  schedule = optim.learning_rate_schedule(config.train)

  @chex.assert_max_traces(n=1)
  def traced_step(st, x, y):
    return steps.train_step(st, (x, y), no_stop(x.shape[1]), model=model, optimizer=optimizer, schedule=schedule,
                            dropout_key=state_lib.dropout_key(0))

  step = jax.jit(traced_step, donate_argnums=0)
  with sharding.rules_context(mesh):
    for seed in range(3):
      x, y = random_batch(config, seed)
      state, metrics = step(state, x[None], y[None])
      float(metrics["loss"])


@pytest.mark.slow
def test_a_stop_request_of_any_row_reaches_the_metrics():
  config = tiny_config()
  _, mesh, state, step = setup_step(config, jax.devices()[:2])
  x, y = random_batch(config)
  requests = np.zeros(config.train.batch_size, np.int32)
  requests[-1] = 1  # the rows of the last data-parallel device
  with sharding.rules_context(mesh):
    xs, ys = (sharding.global_batch(z[None], mesh, 1) for z in (x, y))
    state, metrics = step(state, (xs, ys), sharding.global_batch(np.zeros_like(requests), mesh))
    assert int(metrics["stop"]) == 0
    _, metrics = step(state, (xs, ys), sharding.global_batch(requests, mesh))
    assert int(metrics["stop"]) == 1


@pytest.mark.slow
def test_eval_loss_averages_the_batches():
  config = tiny_config()
  model, mesh, state, _ = setup_step(config, jax.devices()[:1])
  batches = [random_batch(config, s) for s in range(3)]
  xs, ys = (jnp.stack(z) for z in zip(*batches))
  with sharding.rules_context(mesh):
    mean = steps.eval_loss(state.params, (xs, ys), model=model)
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


# The first three losses of tiny_config() on one fixed batch, seed 1337, float32 on CPU.
GOLDEN_LOSSES = [3.4153647422790527, 3.3949790000915527, 3.355881452560425]


def test_the_first_losses_of_a_fixed_seed_are_unchanged():
  losses, _ = train_on_one_batch(tiny_config(), 3)
  np.testing.assert_allclose(
      losses, GOLDEN_LOSSES, rtol=1e-6,
      err_msg="the model's numbers changed: if the change meant to change them (initialisation, "
              "the model's maths, the optimizer, the default config), set GOLDEN_LOSSES to the new "
              "values; if not, the change broke something that every nanoGPT-exact config relies on")


def _dense_product_operand_types(hlo: str) -> set[str]:
  """The operand dtypes of the Dense layers' products in a compiled module's text (instruction
  names are unique in a module, so each operand's type is that of its defining line)."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  dense = r"/(c_attn|c_proj|c_fc)/dot_general"
  return {types[name] for line in hlo.splitlines() if " dot(" in line and re.search(dense, line)
          for name in re.search(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", line).groups()}


def test_bfloat16_products_reach_every_dense_matmul_of_the_compiled_step():
  """matmul_precision=bfloat16 keeps all the Dense products bfloat16, the weight gradients'
  too (XLA's CPU compiler turned those of 2-D activations back to float32)."""
  config = tiny_config(matmul_precision="bfloat16")
  compiled, _ = Program(config, 30, jax.devices()[:1]).compile_train_step()
  assert _dense_product_operand_types(compiled.as_text()) == {"bf16"}
  float32 = tiny_config(matmul_precision="float32")
  compiled, _ = Program(float32, 30, jax.devices()[:1]).compile_train_step()
  assert _dense_product_operand_types(compiled.as_text()) == {"f32"}


def test_bfloat16_products_train_as_float32_does():
  """The first steps' losses with bfloat16 products (matmul_precision=auto on AMX or
  AVX512-BF16) stay within bfloat16's rounding of float32's, and fall as fast."""
  float32, _ = train_on_one_batch(tiny_config(matmul_precision="float32"), 8, training=True)
  bfloat16, _ = train_on_one_batch(tiny_config(matmul_precision="bfloat16"), 8, training=True)
  np.testing.assert_allclose(bfloat16, float32, rtol=2e-4)
  assert bfloat16[-1] < bfloat16[0] - 0.1

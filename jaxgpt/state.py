"""The train state (step, params, optimizer state), created directly sharded on the mesh."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxgpt import sharding
from jaxgpt.model import GPT


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


def _boxed_state(model: GPT, optimizer: optax.GradientTransformation, rng) -> TrainState:
  """The state with parameters still wrapped in their logical-axis metadata."""
  tokens = jnp.zeros((1, model.config.block_size), jnp.int32)
  params = model.init(rng, tokens)["params"]
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def state_shardings(model, optimizer, mesh):
  """NamedShardings for every leaf of the (unboxed) TrainState on `mesh`."""
  abstract = jax.eval_shape(lambda: _boxed_state(model, optimizer, jax.random.key(0)))
  return sharding.logical_shardings(mesh, nn.get_partition_spec(abstract))


def abstract_state(model, optimizer, mesh):
  """ShapeDtypeStructs with shardings: the target a checkpoint is restored into."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(_boxed_state(model, optimizer, jax.random.key(0))))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings(model, optimizer, mesh))


def init_state(model, optimizer, mesh, seed: int) -> TrainState:
  """A freshly initialised state, each array created where its shard lives."""
  shardings = state_shardings(model, optimizer, mesh)
  create = jax.jit(lambda rng: nn.meta.unbox(_boxed_state(model, optimizer, rng)),
                   out_shardings=shardings)
  with sharding.rules_context(mesh):
    return create(params_key(seed))


def params_key(seed: int):
  return jax.random.fold_in(jax.random.key(seed), 0)


def dropout_key(seed: int):
  return jax.random.fold_in(jax.random.key(seed), 1)

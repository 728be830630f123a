"""The train state (step, params, optimizer state), created directly sharded on the mesh."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxgpt import lora, sharding
from jaxgpt.model import GPT


# XLA's CPU compiler spends seconds optimising the initialisation's many small random-number
# kernels, which then run once, for milliseconds: at optimisation level 1 it compiles about 3x
# faster (3.2 -> 1.2 s for the default model) and gives the same values (tests/test_steps.py).
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


Params = dict[str, Any]  # the model's parameter tree: arrays, or ShapeDtypeStructs, by path


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32: optimizer steps taken
  params: Params
  opt_state: optax.OptState


def _boxed_state(model: GPT, optimizer: optax.GradientTransformation, rng) -> TrainState:
  """The state with parameters still wrapped in their logical-axis metadata; the optimizer
  keeps state only for the parameters that train."""
  tokens = jnp.zeros((1, model.config.block_size), jnp.int32)
  params = model.init(rng, tokens)["params"]
  trainable, _ = lora.partition(params, model.config.lora_rank)
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    opt_state=_unbox_masked(optimizer.init(trainable)))


def _unbox_masked(opt_state: optax.OptState) -> optax.OptState:
  """An optimizer that leaves some parameters to another (optax.partition: Muon and AdamW)
  keeps an empty MaskedNode for each of them, inside the parameter's logical-axis box; out
  of the box it has no leaves, as in the unboxed state, and so no sharding."""
  def is_boxed_mask(x):
    return isinstance(x, nn.meta.AxisMetadata) and isinstance(x.unbox(), optax.MaskedNode)
  return jax.tree.map(lambda x: x.unbox() if is_boxed_mask(x) else x, opt_state,
                      is_leaf=is_boxed_mask)


def _abstract_boxed_state(model: GPT, optimizer: optax.GradientTransformation) -> TrainState:
  return jax.eval_shape(lambda: _boxed_state(model, optimizer, jax.random.key(0)))


def _shardings_of(boxed: TrainState, mesh: Mesh) -> TrainState:
  logical_specs = nn.get_partition_spec(boxed)
  sharding.check_divisible(_unboxed(boxed.params), logical_specs.params, mesh)
  return sharding.logical_shardings(mesh, logical_specs)


def _unboxed(boxed):
  """Out of the box without nn.meta.unbox's sharding constraint, which needs a trace."""
  is_boxed = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_boxed(x) else x, boxed,
                      is_leaf=is_boxed)


def state_shardings(model: GPT, optimizer: optax.GradientTransformation, mesh: Mesh
                    ) -> TrainState:
  """NamedShardings for every leaf of the (unboxed) TrainState on `mesh`."""
  return _shardings_of(_abstract_boxed_state(model, optimizer), mesh)


def abstract_params(model: GPT, mesh: Mesh) -> Params:
  """ShapeDtypeStructs with shardings of the model's parameters alone (no optimizer state)."""
  return abstract_state(model, optax.identity(), mesh).params


def abstract_state(model: GPT, optimizer: optax.GradientTransformation, mesh: Mesh
                   ) -> TrainState:
  """ShapeDtypeStructs with shardings: the target a checkpoint is restored into."""
  boxed = _abstract_boxed_state(model, optimizer)  # one trace of the model for both
  shapes = _unboxed(boxed)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, _shardings_of(boxed, mesh))


def init_state(model: GPT, optimizer: optax.GradientTransformation, mesh: Mesh, seed: int,
               pretrained: Params | None = None, shardings: TrainState | None = None
               ) -> TrainState:
  """A freshly initialised state, each array created where its shard lives.

  `pretrained` (arrays on the mesh, e.g. GPT-2's weights) replaces the matching initial
  parameters; the others (LoRA adapters) keep their initial values. `shardings`: the
  state's (state_shardings'), when the caller has them.
  """
  if shardings is None:
    shardings = state_shardings(model, optimizer, mesh)

  def create(rng, pretrained):
    state = nn.meta.unbox(_boxed_state(model, optimizer, rng))
    return state.replace(params=lora.combine(pretrained, state.params)) if pretrained else state

  with sharding.rules_context(mesh):
    lowered = jax.jit(create, out_shardings=shardings, donate_argnums=1).lower(
        params_key(seed), pretrained)
    options = CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(params_key(seed), pretrained)


def params_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 0)


def dropout_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 1)

"""train_step and eval_step: pure functions of (state, batch), jitted with explicit shardings."""

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxgpt import lora, sharding
from jaxgpt.model import GPT
from jaxgpt.state import Params, TrainState

Metrics = dict[str, jax.Array]  # a step's loss, norms, learning rate and stop flag


def loss_fn(model: GPT, params: Params, x_BxT: jax.Array, y_BxT: jax.Array,
            dropout_rng: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy, in float32."""
  logits_BxTxV = model.apply({"params": params}, x_BxT, deterministic=dropout_rng is None,
                             rngs=None if dropout_rng is None else {"dropout": dropout_rng})
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT).mean()


def _gradients(model: GPT, trainable: Params, frozen: Params, x_AxBxT: jax.Array,
               y_AxBxT: jax.Array, rng: jax.Array | None) -> tuple[jax.Array, Params]:
  """Loss and gradients of the trainable parameters, averaged over A equal micro-batches:
  equal to one big batch."""
  num_micro = x_AxBxT.shape[0]
  grad_fn = jax.value_and_grad(
      lambda trainable, *args: loss_fn(model, lora.combine(trainable, frozen), *args))

  def micro_step(i):
    micro_rng = None if rng is None else jax.random.fold_in(rng, i)
    return grad_fn(trainable, x_AxBxT[i], y_AxBxT[i], micro_rng)

  if num_micro == 1:
    return micro_step(0)

  def accumulate(carry, i):
    loss, grads = micro_step(i)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
  (loss, grads), _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_micro))
  return jax.tree.map(lambda g: g / num_micro, (loss, grads))


def train_step(state: TrainState, x_AxBxT: jax.Array, y_AxBxT: jax.Array, stop_B: jax.Array, *,
               model: GPT, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               dropout_key: jax.Array) -> tuple[TrainState, Metrics]:
  """One optimizer step over A micro-batches; returns the new state and its metrics.

  Only the trainable parameters change (all of them, or the LoRA adapters only).
  `stop_B` holds, for each row, whether the process that made it was asked to stop (a
  signal); metrics["stop"] is whether any is set, so every process learns of a stop at the same
  step.
  """
  rng = None if model.config.dropout == 0 else jax.random.fold_in(dropout_key, state.step)
  trainable, frozen = lora.partition(state.params, model.config.lora_rank)
  loss, grads = _gradients(model, trainable, frozen, x_AxBxT, y_AxBxT, rng)
  updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
  new_trainable = optax.apply_updates(trainable, updates)
  params = lora.combine(new_trainable, frozen)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
             # In float32, as the parameters are; the update is what the step moved them by.
             "param_norm": optax.global_norm(params),
             "update_norm": optax.global_norm(jax.tree.map(jnp.subtract, new_trainable,
                                                           trainable)),
             # A float32 sum, so that XLA can combine its all-reduce with the gradients'.
             "stop": jnp.sum(stop_B.astype(jnp.float32)) > 0}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_loss(params: Params, x_ExBxT: jax.Array, y_ExBxT: jax.Array, *, model: GPT) -> jax.Array:
  """Mean loss over E evaluation batches, as one compiled loop."""
  def body(total, xy):
    return total + loss_fn(model, params, *xy), None
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (x_ExBxT, y_ExBxT))
  return total / x_ExBxT.shape[0]


def jit_train_step(model: GPT, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   dropout_key: jax.Array, mesh: Mesh, state_shardings: TrainState
                   ) -> jax.stages.Wrapped:
  """The jitted train step: state donated, batches (A, B, T) and stop requests (B,) sharded
  over B."""
  step = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                           dropout_key=dropout_key)
  batch = sharding.global_batch_sharding(mesh, leading_dims=1)
  rows = sharding.global_batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch, batch, rows),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def abstract_batch(mesh: Mesh, batch_size: int, micro_batches: int, block_size: int
                   ) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of the train step's x and y (A, B/A, T) and stop (B/A,) arguments,
  A = micro_batches: what the step is compiled for before any batch exists."""
  rows = batch_size // micro_batches
  xy = jax.ShapeDtypeStruct((micro_batches, rows, block_size), jnp.int32,
                            sharding=sharding.global_batch_sharding(mesh, leading_dims=1))
  stop = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding.global_batch_sharding(mesh))
  return xy, xy, stop


def jit_eval_loss(model: GPT, mesh: Mesh, params_shardings: Params) -> jax.stages.Wrapped:
  """The jitted evaluation loop: parameters as sharded, batches (E, B, T) sharded over B."""
  batches = sharding.global_batch_sharding(mesh, leading_dims=1)
  return jax.jit(functools.partial(eval_loss, model=model),
                 in_shardings=(params_shardings, batches, batches),
                 out_shardings=sharding.replicated(mesh))

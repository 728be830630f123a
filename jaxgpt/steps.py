"""train_step and eval_step: pure functions of (state, batch), jitted with explicit shardings.

A batch is (inputs, targets) of token ids, or for chat data (inputs, targets, segments):
targets of -1 take no loss, and each row's segments (1, 2, ...; 0 padding) are conversations
packed side by side that attend only within themselves, their positions counted from their
own start.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxgpt import cross_entropy, lora, sharding
from jaxgpt.model import GPT
from jaxgpt.state import Params, TrainState

# XLA's CPU compiler hoists work on a scanned model's saved activations out of the backward
# loop (the kernel gradients' tokens-last copies; before 2026-12-07 their float32 conversion
# too), doing every layer's at once (gpt2_xl: 1.6 GB a device of 6.3); without loop-invariant
# code motion it does one layer's at a time.
# Scanned models only: the unrolled CPU default's step is 3% faster with it (BENCHMARKS.md).
CPU_SCANNED_TRAIN_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}

Metrics = dict[str, jax.Array]  # a step's loss, norms, learning rate and stop flag
Batch = tuple[jax.Array, ...]  # (x, y) or (x, y, segments), each (B, T) or (A, B, T)


def loss_fn(model: GPT, params: Params, x_BxT: jax.Array, y_BxT: jax.Array,
            dropout_rng: jax.Array | None = None, segments_BxT: jax.Array | None = None,
            num_trained: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy, in float32, its logits computed a chunk at a time where
  they are large (jaxgpt/cross_entropy.py). With `segments_BxT` (chat rows) only the targets
  >= 0 take a loss: their summed loss over `num_trained`, by default their count."""
  packed = {} if segments_BxT is None else packed_inputs(segments_BxT)
  hidden_BxTxD, head_DxV = model.apply(
      {"params": params}, x_BxT, deterministic=dropout_rng is None,
      rngs=None if dropout_rng is None else {"dropout": dropout_rng}, hidden_and_head=True,
      **packed)
  if segments_BxT is None:
    return cross_entropy.token_losses(hidden_BxTxD, head_DxV, y_BxT, model.config).mean()
  trained_BxT = y_BxT >= 0
  losses_BxT = cross_entropy.token_losses(hidden_BxTxD, head_DxV,
                                          jnp.where(trained_BxT, y_BxT, 0), model.config)
  if num_trained is None:
    num_trained = count_trained(y_BxT)
  return jnp.sum(jnp.where(trained_BxT, losses_BxT, 0.0)) / num_trained


def batch_loss(model: GPT, params: Params, batch: Batch,
               dropout_rng: jax.Array | None = None, num_trained: jax.Array | None = None
               ) -> jax.Array:
  """loss_fn of a batch (x, y) or (x, y, segments)."""
  x_BxT, y_BxT, *segments = batch
  return loss_fn(model, params, x_BxT, y_BxT, dropout_rng, *segments, num_trained=num_trained)


def count_trained(y: jax.Array) -> jax.Array:
  """How many targets take a loss, at least 1 (a divisor), in float32."""
  return jnp.maximum(jnp.sum(y >= 0), 1).astype(jnp.float32)


def packed_inputs(segments_BxT: jax.Array) -> dict:
  """The model's positions (B, T), counted from each segment's start, and attention mask
  (B, T, T): causal, within a segment."""
  t = segments_BxT.shape[1]
  index_T = jnp.arange(t)
  starts_BxT = segments_BxT != jnp.pad(segments_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start_BxT = jax.lax.cummax(jnp.where(starts_BxT, index_T[None], 0), axis=1)
  same_BxTxT = segments_BxT[:, :, None] == segments_BxT[:, None, :]
  causal_TxT = index_T[:, None] >= index_T[None, :]
  return {"positions_T": index_T[None] - start_BxT,
          "attention_mask_BxTxS": same_BxTxT & causal_TxT[None]}


def _gradients(model: GPT, trainable: Params, frozen: Params, batch_A: Batch,
               rng: jax.Array | None) -> tuple[jax.Array, Params]:
  """Loss and gradients of the trainable parameters, averaged over A equal micro-batches:
  equal to one big batch."""
  num_micro = batch_A[0].shape[0]
  # Chat micro-batches hold different numbers of trained targets: each divides its summed
  # loss by the whole batch's count over A, so that their average is the whole batch's loss.
  num_trained = count_trained(batch_A[1]) / num_micro if len(batch_A) == 3 else None
  grad_fn = jax.value_and_grad(lambda trainable, batch, rng: batch_loss(
      model, lora.combine(trainable, frozen), batch, rng, num_trained))

  def micro_step(i):
    micro_rng = None if rng is None else jax.random.fold_in(rng, i)
    return grad_fn(trainable, tuple(z[i] for z in batch_A), micro_rng)

  if num_micro == 1:
    return micro_step(0)

  def accumulate(carry, i):
    loss, grads = micro_step(i)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
  (loss, grads), _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_micro))
  return jax.tree.map(lambda g: g / num_micro, (loss, grads))


def train_step(state: TrainState, batch_A: Batch, stop_B: jax.Array, *,
               model: GPT, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               dropout_key: jax.Array) -> tuple[TrainState, Metrics]:
  """One optimizer step over A micro-batches (each array of `batch_A` is (A, B, T)); returns
  the new state and its metrics.

  Only the trainable parameters change (all of them, or the LoRA adapters only).
  `stop_B` holds, for each row, whether the process that made it was asked to stop (a
  signal); metrics["stop"] is whether any is set, so every process learns of a stop at the same
  step.
  """
  rng = None if model.config.dropout == 0 else jax.random.fold_in(dropout_key, state.step)
  trainable, frozen = lora.partition(state.params, model.config.lora_rank)
  loss, grads = _gradients(model, trainable, frozen, batch_A, rng)
  updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
  new_trainable = optax.apply_updates(trainable, updates)
  params = lora.combine(new_trainable, frozen)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
             # A float32 sum, so that XLA can combine its all-reduce with the gradients'.
             "stop": jnp.sum(stop_B.astype(jnp.float32)) > 0}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class ParameterNorms:
  """param_norm (of all the parameters after a step) and update_norm (of what the step moved
  the trainable ones by), for the steps that are logged: computed beside the train step,
  whose every step they made about 7% slower on CPU (BENCHMARKS.md).

    before = norms.before(state.params)  # a copy: the step donates state
    state, step_metrics = train_step(state, ...)
    step_metrics |= norms.after(before, state.params)
  """

  def __init__(self, lora_rank: int):
    trainable = lambda params: lora.partition(params, lora_rank)[0]
    self._copy = jax.jit(lambda params: jax.tree.map(jnp.copy, trainable(params)))
    # In float32, as the parameters are.
    self._norms = jax.jit(lambda before, params: {
        "param_norm": optax.global_norm(params),
        "update_norm": optax.global_norm(jax.tree.map(jnp.subtract, trainable(params), before))})

  def before(self, params: Params) -> Params:
    return self._copy(params)

  def after(self, before: Params, params: Params) -> Metrics:
    return self._norms(before, params)


def eval_loss(params: Params, batches_E: Batch, *, model: GPT) -> jax.Array:
  """Mean loss over E evaluation batches (each array (E, B, T)), as one compiled loop."""
  def body(total, batch):
    return total + batch_loss(model, params, batch), None
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), batches_E)
  return total / batches_E[0].shape[0]


def jit_train_step(model: GPT, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   dropout_key: jax.Array, mesh: Mesh, state_shardings: TrainState
                   ) -> jax.stages.Wrapped:
  """The jitted train step: state donated, the batch's arrays (A, B, T) and stop requests
  (B,) sharded over B."""
  step = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                           dropout_key=dropout_key)
  batch = sharding.global_batch_sharding(mesh, leading_dims=1)
  rows = sharding.global_batch_sharding(mesh)
  scanned_on_cpu = jax.default_backend() == "cpu" and model.config.scan_layers
  options = CPU_SCANNED_TRAIN_COMPILER_OPTIONS if scanned_on_cpu else None
  return jax.jit(step, in_shardings=(state_shardings, batch, rows),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0,
                 compiler_options=options)


def abstract_batch(mesh: Mesh, batch_size: int, micro_batches: int, block_size: int,
                   segments: bool = False) -> tuple[Batch, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of the train step's batch ((A, B/A, T) arrays) and stop (B/A,)
  arguments, A = micro_batches: what the step is compiled for before any batch exists."""
  rows = batch_size // micro_batches
  stop = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding.global_batch_sharding(mesh))
  return abstract_arrays(mesh, (micro_batches, rows, block_size), segments), stop


def abstract_arrays(mesh: Mesh, shape: tuple[int, int, int], segments: bool) -> Batch:
  """ShapeDtypeStructs of stacked batches' arrays (sharded over their second dimension):
  x and y, and with `segments` (chat data) the segments."""
  array = jax.ShapeDtypeStruct(shape, jnp.int32,
                               sharding=sharding.global_batch_sharding(mesh, leading_dims=1))
  return (array,) * (3 if segments else 2)


def jit_eval_loss(model: GPT, mesh: Mesh, params_shardings: Params) -> jax.stages.Wrapped:
  """The jitted evaluation loop: parameters as sharded, batches (E, B, T) sharded over B."""
  batches = sharding.global_batch_sharding(mesh, leading_dims=1)
  return jax.jit(functools.partial(eval_loss, model=model),
                 in_shardings=(params_shardings, batches),
                 out_shardings=sharding.replicated(mesh))

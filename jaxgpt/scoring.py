"""The log-likelihood of token continuations given their contexts, as evaluations need it:
held-out loss, HellaSwag's endings, lm-evaluation-harness's requests.

Requests are packed one to a row into a few fixed shapes (rows x a power-of-two length up to
the context), so a whole evaluation compiles a handful of programs however many requests it
has; the rows are split over the mesh's data-parallel devices and every process computes the
same global batch (each places only its own rows), so results are the same on any mesh and
any number of processes.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import sharding
from jaxgpt.model import GPT

SHORTEST_ROW = 64  # the shortest row length compiled; longer ones double up to block_size


@dataclasses.dataclass(frozen=True)
class Scored:
  """One continuation's per-token losses (nats) and whether greedy decoding would give it."""
  token_losses: np.ndarray
  greedy: bool

  @property
  def loss(self) -> float:
    return float(self.token_losses.sum())


class Scorer:
  """Scores (context ids, continuation ids) pairs with a model's parameters on a mesh."""

  def __init__(self, model: GPT, params, mesh, rows: int = 32):
    self.model, self.params, self.mesh = model, params, mesh
    step = sharding.data_parallel_size(mesh) * jax.process_count()
    self.rows = -(-rows // step) * step
    self._losses = jax.jit(functools.partial(_token_losses, model),
                           out_shardings=sharding.replicated(mesh))

  def score(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[Scored]:
    """Each request's continuation scored after its context: the context is cut from the
    left to fit the model's block_size (the continuation itself must fit), and must hold at
    least one token."""
    rows = [_row(context, continuation, self.model.config.block_size)
            for context, continuation in requests]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths together
    scored = [None] * len(rows)
    for start in range(0, len(order), self.rows):
      chunk = order[start:start + self.rows]
      for i, result in zip(chunk, self._score_rows([rows[i] for i in chunk])):
        scored[i] = result
    return scored

  def _score_rows(self, rows) -> list[Scored]:
    length = row_length(max(len(inputs) for inputs, _, _ in rows),
                        self.model.config.block_size)
    inputs_BxT = np.zeros((self.rows, length), np.int32)
    targets_BxT = np.zeros((self.rows, length), np.int32)
    for r, (inputs, targets, _) in enumerate(rows):
      inputs_BxT[r, :len(inputs)], targets_BxT[r, :len(targets)] = inputs, targets
    with sharding.rules_context(self.mesh):
      losses_BxT, greedy_BxT = self._losses(self.params, *map(self._placed, (inputs_BxT,
                                                                            targets_BxT)))
    losses_BxT, greedy_BxT = np.asarray(losses_BxT), np.asarray(greedy_BxT)
    return [Scored(losses_BxT[r, len(inputs) - scored:len(inputs)],
                   bool(greedy_BxT[r, len(inputs) - scored:len(inputs)].all()))
            for r, (inputs, _, scored) in enumerate(rows)]

  def _placed(self, rows_BxT: np.ndarray) -> jax.Array:
    """The whole batch, which every process holds, as a global array of which each process
    places its own rows."""
    sharded = sharding.global_batch_sharding(self.mesh)
    return jax.make_array_from_callback(rows_BxT.shape, sharded, lambda index: rows_BxT[index])


def _row(context, continuation, block_size: int):
  """(inputs, targets, how many of the last targets are the continuation's)."""
  context, continuation = (np.asarray(ids, np.int32).ravel() for ids in (context, continuation))
  if not len(context):
    raise ValueError("a request needs at least one context token (e.g. end-of-text)")
  if not 0 < len(continuation) <= block_size:
    raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                     f"block_size={block_size}")
  tokens = np.concatenate([context, continuation])[-(block_size + 1):]
  return tokens[:-1], tokens[1:], len(continuation)


def row_length(length: int, block_size: int) -> int:
  """The compiled row length for `length` tokens: a power of two from SHORTEST_ROW, or
  block_size."""
  bucket = SHORTEST_ROW
  while bucket < length:
    bucket *= 2
  return min(bucket, block_size)


def _token_losses(model: GPT, params, inputs_BxT, targets_BxT):
  """Per-position losses (float32) and whether each target is the argmax."""
  logits_BxTxV = model.apply({"params": params}, inputs_BxT).astype(jnp.float32)
  log_probs_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  losses_BxT = -jnp.take_along_axis(log_probs_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return losses_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT

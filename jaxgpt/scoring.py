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
SHORTEST_SPAN = 8  # the fewest positions whose logits a row computes; more double up


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
    """Scores up to self.rows rows in one call: each row's logits are computed only over a
    span of S positions that ends at its last one (S a power of two covering every row's
    continuation)."""
    block_size = self.model.config.block_size
    length = row_length(max(len(inputs) for inputs, _, _ in rows), SHORTEST_ROW, block_size)
    span = row_length(max(scored for _, _, scored in rows), SHORTEST_SPAN, length)
    inputs_BxT = np.zeros((self.rows, length), np.int32)
    targets_BxS = np.zeros((self.rows, span), np.int32)
    at_BxS = np.zeros((self.rows, span), np.int32)
    for r, (inputs, targets, _) in enumerate(rows):
      inputs_BxT[r, :len(inputs)] = inputs
      start = max(len(inputs) - span, 0)
      at_BxS[r, :len(inputs) - start] = np.arange(start, len(inputs))
      targets_BxS[r, :len(inputs) - start] = targets[start:]
    with sharding.rules_context(self.mesh):
      losses_BxS, greedy_BxS = self._losses(
          self.params, *map(self._placed, (inputs_BxT, targets_BxS, at_BxS)))
    losses_BxS, greedy_BxS = np.asarray(losses_BxS), np.asarray(greedy_BxS)
    results = []
    for r, (inputs, _, scored) in enumerate(rows):
      end = len(inputs) - max(len(inputs) - span, 0)  # the row's last position in its span
      results.append(Scored(losses_BxS[r, end - scored:end],
                            bool(greedy_BxS[r, end - scored:end].all())))
    return results

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


def row_length(length: int, shortest: int, longest: int) -> int:
  """A compiled length for `length`: a power of two from `shortest`, at most `longest`."""
  bucket = shortest
  while bucket < length:
    bucket *= 2
  return min(bucket, longest)


def _token_losses(model: GPT, params, inputs_BxT, targets_BxS, at_BxS):
  """The losses (float32) of the targets at positions at_BxS, and whether each is the
  argmax."""
  logits_BxSxV = model.apply({"params": params}, inputs_BxT, logits_at_BxS=at_BxS)
  log_probs_BxSxV = jax.nn.log_softmax(logits_BxSxV.astype(jnp.float32), axis=-1)
  losses_BxS = -jnp.take_along_axis(log_probs_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return losses_BxS, jnp.argmax(logits_BxSxV, axis=-1) == targets_BxS

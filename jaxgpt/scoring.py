"""The log-likelihood of token continuations given their contexts, as evaluations need it:
held-out loss, HellaSwag's endings, lm-evaluation-harness's requests.

Requests are packed into rows of a few fixed shapes (rows x a power-of-two length up to the
context, and a number of scored tokens a quarter of a power of two apart), so a whole
evaluation compiles a handful of programs however many requests it has; the rows are split over the mesh's data-parallel devices and every process computes the
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
ROW_TOKENS = 256  # rows are packed up to this many tokens (attention's cost grows with it)
OPEN_ROWS = 16  # a group goes into one of the newest rows that has room
FEWEST_SCORED = 8  # the fewest tokens whose logits a call computes
TOKENS_PER_CALL = 4096  # the rows of a call, unless given: this many tokens


class DoesNotFit(ValueError):
  """A continuation longer than the model's context."""


@dataclasses.dataclass(frozen=True)
class Scored:
  """One continuation's per-token losses (nats) and whether greedy decoding would give it."""
  token_losses: np.ndarray
  greedy: bool

  @property
  def loss(self) -> float:
    return float(self.token_losses.sum())


class Scorer:
  """Scores (context ids, continuation ids) pairs with a model's parameters on a mesh.

  Requests are packed into rows of up to block_size tokens: a context once, then each of its
  continuations (less their last token), each attending to the context and to itself only,
  with positions counted from the context's start; several contexts share a row the same way.
  HellaSwag's four endings then cost one context, and rows hold no padding but their ends.
  The output layer runs only at the scored tokens, gathered from all rows.
  """

  def __init__(self, model: GPT, params, mesh, rows: int | None = None):
    self.model, self.params, self.mesh = model, params, mesh
    self._step = sharding.data_parallel_size(mesh) * jax.process_count()
    rows = rows or max(1, TOKENS_PER_CALL // min(ROW_TOKENS, model.config.block_size))
    self.rows = -(-rows // self._step) * self._step
    self._losses = jax.jit(functools.partial(_token_losses, model),
                           out_shardings=sharding.replicated(mesh))

  def score(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[Scored]:
    """Each request's continuation scored after its context: the context is cut from the
    left to fit the model's block_size (the continuation itself must fit), and must hold at
    least one token."""
    rows = _packed_rows(requests, self.model.config.block_size)
    per_call = self._rows_per_call(len(rows))
    calls = [rows[start:start + per_call] for start in range(0, len(rows), per_call)]
    lengths = [row_length(max(len(row.tokens) for row in call), SHORTEST_ROW,
                          self.model.config.block_size) for call in calls]
    most_scored = {}  # one number of scored tokens for each row length: one program each
    for call, length in zip(calls, lengths):
      most_scored[length] = max(most_scored.get(length, 0), _scored_tokens(call))
    scored = [None] * len(requests)
    for call, length in zip(calls, lengths):
      num_scored = self._scored_length(most_scored[length], per_call * length)
      for i, result in self._score_rows(call, per_call, length, num_scored):
        scored[i] = result
    return scored

  def _scored_length(self, count: int, most: int) -> int:
    """A compiled number of scored tokens for `count`: 8, 10, 12, 14, 16, 20, 24, 28, 32, 40,
    ... (each at most a quarter more than needed), at most `most` (the rows' tokens) unless
    `count` is more (a context's last token scores each continuation's first: full rows can
    hold more scored tokens than tokens), a multiple of the devices."""
    size, step = FEWEST_SCORED, FEWEST_SCORED // 4
    while size < count:
      size += step
      if size == 8 * step:
        step *= 2
    size = max(min(size, most), count)
    devices = self.mesh.size * jax.process_count()
    return -(-size // devices) * devices

  def _rows_per_call(self, num_rows: int) -> int:
    """At most self.rows, spread evenly over the calls (the last one is not mostly padding),
    a multiple of the data-parallel devices."""
    calls = -(-num_rows // self.rows)
    return min(self.rows, -(-(-(-num_rows // calls)) // self._step) * self._step)

  def _score_rows(self, rows: list["_Row"], num_rows: int, length: int, num_scored: int):
    """(request index, Scored) for every request in up to num_rows rows of `length` tokens,
    scored in one call that computes the logits of num_scored tokens."""
    *arrays, targets_S, at_S = _batch_arrays(rows, num_rows, length, num_scored)
    with sharding.rules_context(self.mesh):
      losses_S, greedy_S = self._losses(self.params, *map(self._placed, arrays),
                                        *map(self._replicated, (targets_S, at_S)))
    losses_S, greedy_S = np.asarray(losses_S), np.asarray(greedy_S)
    offset = 0
    for row in rows:
      for i, first, count in row.requests:
        at = slice(offset + first, offset + first + count)
        yield i, Scored(losses_S[at], bool(greedy_S[at].all()))
      offset += len(row.logits_at)

  def _placed(self, rows: np.ndarray) -> jax.Array:
    """The whole batch, which every process holds, as a global array of which each process
    places its own rows."""
    sharded = sharding.global_batch_sharding(self.mesh)
    return jax.make_array_from_callback(rows.shape, sharded, lambda index: rows[index])

  def _replicated(self, values: np.ndarray) -> jax.Array:
    """An array that every process holds whole, on every device."""
    replicated = sharding.replicated(self.mesh)
    return jax.make_array_from_callback(values.shape, replicated, lambda index: values[index])


@dataclasses.dataclass
class _Row:
  """One packed row: its tokens, each one's position, group (a context and its
  continuations) and segment (0 the context, k the k-th continuation); the positions whose
  logits are scored with their targets; and (request, first scored, count) for each request."""
  tokens: list = dataclasses.field(default_factory=list)
  positions: list = dataclasses.field(default_factory=list)
  groups: list = dataclasses.field(default_factory=list)
  segments: list = dataclasses.field(default_factory=list)
  logits_at: list = dataclasses.field(default_factory=list)
  targets: list = dataclasses.field(default_factory=list)
  requests: list = dataclasses.field(default_factory=list)
  context_end: int = -1  # the index of the last context's last token

  def add_context(self, context: np.ndarray, group: int) -> None:
    self.tokens += list(context)
    self.context_end = len(self.tokens) - 1
    self.positions += range(len(context))
    self.groups += [group] * len(context)
    self.segments += [0] * len(context)

  def add_continuation(self, request: int, continuation: np.ndarray, context_length: int,
                       segment: int) -> None:
    """The continuation's tokens but its last; its first is predicted at the context's end."""
    start = len(self.tokens)
    self.requests.append((request, len(self.logits_at), len(continuation)))
    self.logits_at += [self.context_end, *range(start, start + len(continuation) - 1)]
    self.targets += list(continuation)
    self.tokens += list(continuation[:-1])
    self.positions += range(context_length, context_length + len(continuation) - 1)
    self.groups += [self.groups[-1]] * (len(continuation) - 1)
    self.segments += [segment] * (len(continuation) - 1)


def _packed_rows(requests, block_size: int) -> list[_Row]:
  """The requests packed into rows of at most ROW_TOKENS (or block_size) tokens, contexts
  shared: the largest groups first, each whole into one of the newest rows with room for it;
  else begun in the newest row with the most room (its context and some continuations) and
  continued in new rows, the context repeated in each."""
  capacity = min(ROW_TOKENS, block_size)
  groups = {}
  for i, (context, continuation) in enumerate(requests):
    context, continuation = _fitted(context, continuation, block_size)
    groups.setdefault(context.tobytes(), (context, []))[1].append((i, continuation))
  rows = []
  for group, (context, members) in enumerate(sorted(groups.values(), key=_size, reverse=True)):
    open_rows = rows[-OPEN_ROWS:]
    row = next((r for r in open_rows if len(r.tokens) + _size((context, members)) <= capacity),
               min(open_rows, key=lambda r: len(r.tokens), default=None))
    in_row = False
    for segment, (i, continuation) in enumerate(members, 1):
      needed = len(continuation) - 1 + (0 if in_row else len(context))
      if row is None or len(row.tokens) + needed > capacity:
        row, in_row = _Row(), False
        rows.append(row)
      if not in_row:
        row.add_context(context, group)
        in_row = True
      row.add_continuation(i, continuation, len(context), segment)
  return rows


def _scored_tokens(rows: list[_Row]) -> int:
  return sum(len(row.logits_at) for row in rows)


def _size(group) -> int:
  """The tokens a group takes in a row: its context, and its continuations but their last."""
  context, members = group
  return len(context) + sum(len(continuation) - 1 for _, continuation in members)


def _fitted(context, continuation, block_size: int):
  """The context cut from the left so that context + continuation (less its last token)
  fits block_size."""
  context, continuation = (np.asarray(ids, np.int32).ravel() for ids in (context, continuation))
  if not len(context):
    raise ValueError("a request needs at least one context token (e.g. end-of-text)")
  if not 0 < len(continuation) <= block_size:
    raise DoesNotFit(f"a continuation of {len(continuation)} tokens does not fit the model's "
                     f"block_size={block_size}")
  return context[-(block_size + 1 - len(continuation)):], continuation


def _batch_arrays(rows: list[_Row], num_rows: int, length: int, num_scored: int):
  """inputs, positions (B, T), the attention mask (B, T, T), and the scored tokens' targets
  and indices into the B*T tokens (S), row after row; rows and positions past the packed
  ones are padding, attending to themselves."""
  inputs_BxT = np.zeros((num_rows, length), np.int32)
  positions_BxT = np.zeros((num_rows, length), np.int32)
  groups_BxT = np.full((num_rows, length), -1, np.int32)
  segments_BxT = np.zeros((num_rows, length), np.int32)
  targets_S = np.zeros(num_scored, np.int32)
  at_S = np.zeros(num_scored, np.int32)
  offset = 0
  for r, row in enumerate(rows):
    n, m = len(row.tokens), len(row.logits_at)
    inputs_BxT[r, :n], positions_BxT[r, :n] = row.tokens, row.positions
    groups_BxT[r, :n], segments_BxT[r, :n] = row.groups, row.segments
    targets_S[offset:offset + m] = row.targets
    at_S[offset:offset + m] = r * length + np.asarray(row.logits_at, np.int32)
    offset += m
  causal_TxT = np.tril(np.ones((length, length), bool))
  same_group = groups_BxT[:, :, None] == groups_BxT[:, None, :]
  seen_segment = ((segments_BxT[:, None, :] == 0)
                  | (segments_BxT[:, :, None] == segments_BxT[:, None, :]))
  mask_BxTxT = (causal_TxT[None] & same_group & seen_segment) | np.eye(length, dtype=bool)[None]
  return inputs_BxT, positions_BxT, mask_BxTxT, targets_S, at_S


def row_length(length: int, shortest: int, longest: int) -> int:
  """A compiled length for `length`: a power of two from `shortest`, at most `longest`."""
  bucket = shortest
  while bucket < length:
    bucket *= 2
  return min(bucket, longest)


def _token_losses(model: GPT, params, inputs_BxT, positions_BxT, mask_BxTxT, targets_S, at_S):
  """The losses (float32) of the targets of the tokens at_S, and whether each is the most
  likely token (its logit the largest: one pass over the logits fewer than an argmax)."""
  logits_SxV = model.apply({"params": params}, inputs_BxT, positions_T=positions_BxT,
                           logits_at_S=at_S, attention_mask_BxTxS=mask_BxTxT)[0]
  logits_SxV = logits_SxV.astype(jnp.float32)
  target_S = jnp.take_along_axis(logits_SxV, targets_S[:, None], axis=-1)[:, 0]
  max_S = jnp.max(logits_SxV, axis=-1)
  log_sum_S = jnp.log(jnp.sum(jnp.exp(logits_SxV - max_S[:, None]), axis=-1))
  return max_S + log_sum_S - target_S, target_S >= max_S

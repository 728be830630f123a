"""Causal attention a block of query positions at a time, with a backward pass that computes
each block's scores again (flash attention's memory, written in plain JAX): neither pass
holds the whole T x T scores, and what the backward pass keeps from the forward one is q, k,
v, the output and one log-sum-exp per query.

Both passes are scans over blocks of queries, each block against all the keys (the later
ones masked): a loop is what makes XLA compute one block after another (unrolled, it
computed every block's scores at once, and in the backward pass every layer's before the
gradient reached it). Memory then grows with T, not T^2 (tests/test_blockwise_attention.py).
Shape suffixes as in model.py; the arrays are heads-major, (B, H, T, K), and q comes already
scaled by 1 / sqrt(K).
"""

import functools

import jax
import jax.numpy as jnp

QUERY_BLOCK = 256


def blockwise_causal_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block: int = QUERY_BLOCK):
  return _attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block):
  return _forward(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block)[0]


def _query_blocks(x_BxHxTx_, block: int):
  """(T/C, B, H, C, ...): x's positions in blocks of C, the last padded with zeros."""
  b, h, t = x_BxHxTx_.shape[:3]
  padded = -(-t // block) * block
  pad = [(0, 0)] * x_BxHxTx_.ndim
  pad[2] = (0, padded - t)
  x_BxHxTx_ = jnp.pad(x_BxHxTx_, pad)
  return jnp.moveaxis(x_BxHxTx_.reshape(b, h, padded // block, block, *x_BxHxTx_.shape[3:]),
                      2, 0)


def _unblocked(x_NxBxHxCx_, length: int):
  """The inverse of _query_blocks: (B, H, T, ...)."""
  x_BxHxNxCx_ = jnp.moveaxis(x_NxBxHxCx_, 0, 2)
  b, h, n, c = x_BxHxNxCx_.shape[:4]
  return x_BxHxNxCx_.reshape(b, h, n * c, *x_BxHxNxCx_.shape[4:])[:, :, :length]


def _block_scores(start, q_BxHxCxK, k_BxHxTxK):
  """float32 scores of the queries at start.. against every key, the later keys masked."""
  c, t = q_BxHxCxK.shape[2], k_BxHxTxK.shape[2]
  att_BxHxCxT = jnp.einsum("bhck,bhsk->bhcs", q_BxHxCxK, k_BxHxTxK,
                           preferred_element_type=jnp.float32)
  seen_CxT = jnp.arange(t)[None, :] <= start + jnp.arange(c)[:, None]
  return jnp.where(seen_CxT, att_BxHxCxT, -jnp.inf), seen_CxT


def _forward(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, block):
  def forward_block(_, xs):
    start, q_BxHxCxK = xs
    att_BxHxCxT, _ = _block_scores(start, q_BxHxCxK, k_BxHxTxK)
    lse_BxHxC = jax.nn.logsumexp(att_BxHxCxT, axis=-1)
    probs_BxHxCxT = jnp.exp(att_BxHxCxT - lse_BxHxC[..., None])
    y_BxHxCxK = jnp.einsum("bhcs,bhsk->bhck", probs_BxHxCxT.astype(v_BxHxTxK.dtype), v_BxHxTxK,
                           preferred_element_type=jnp.float32).astype(v_BxHxTxK.dtype)
    return None, (y_BxHxCxK, lse_BxHxC)

  t = q_BxHxTxK.shape[2]
  starts = jnp.arange(0, -(-t // block) * block, block)
  _, (y_NxBxHxCxK, lse_NxBxHxC) = jax.lax.scan(
      forward_block, None, (starts, _query_blocks(q_BxHxTxK, block)))
  y_BxHxTxK, lse_BxHxT = _unblocked(y_NxBxHxCxK, t), _unblocked(lse_NxBxHxC, t)
  return y_BxHxTxK, (q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, y_BxHxTxK, lse_BxHxT)


def _backward(block, residuals, dy_BxHxTxK):
  """Flash attention's backward pass: with P = exp(scores - lse) computed again for a block
  of queries, dV += P^T dY, dP = dY V^T, dS = P (dP - rowsum(dY * Y)), dQ = dS K and
  dK += dS^T Q."""
  q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, y_BxHxTxK, lse_BxHxT = residuals
  t = q_BxHxTxK.shape[2]
  delta_BxHxT = jnp.sum(dy_BxHxTxK.astype(jnp.float32) * y_BxHxTxK.astype(jnp.float32),
                        axis=-1)

  def backward_block(carry, xs):
    dk_BxHxTxK, dv_BxHxTxK = carry
    start, q_BxHxCxK, dy_BxHxCxK, lse_BxHxC, delta_BxHxC = xs
    att_BxHxCxT, seen_CxT = _block_scores(start, q_BxHxCxK, k_BxHxTxK)
    probs_BxHxCxT = jnp.where(seen_CxT, jnp.exp(att_BxHxCxT - lse_BxHxC[..., None]), 0.0)
    dv_BxHxTxK += jnp.einsum("bhcs,bhck->bhsk", probs_BxHxCxT.astype(dy_BxHxCxK.dtype),
                             dy_BxHxCxK, preferred_element_type=jnp.float32)
    dprobs_BxHxCxT = jnp.einsum("bhck,bhsk->bhcs", dy_BxHxCxK, v_BxHxTxK,
                                preferred_element_type=jnp.float32)
    datt_BxHxCxT = (probs_BxHxCxT * (dprobs_BxHxCxT - delta_BxHxC[..., None])
                    ).astype(q_BxHxCxK.dtype)
    dq_BxHxCxK = jnp.einsum("bhcs,bhsk->bhck", datt_BxHxCxT, k_BxHxTxK,
                            preferred_element_type=jnp.float32)
    dk_BxHxTxK += jnp.einsum("bhcs,bhck->bhsk", datt_BxHxCxT, q_BxHxCxK,
                             preferred_element_type=jnp.float32)
    return (dk_BxHxTxK, dv_BxHxTxK), dq_BxHxCxK

  starts = jnp.arange(0, -(-t // block) * block, block)
  zeros = jnp.zeros(k_BxHxTxK.shape, jnp.float32)
  (dk_BxHxTxK, dv_BxHxTxK), dq_NxBxHxCxK = jax.lax.scan(
      backward_block, (zeros, zeros),
      (starts, *(_query_blocks(x, block) for x in (q_BxHxTxK, dy_BxHxTxK, lse_BxHxT,
                                                   delta_BxHxT))))
  dq_BxHxTxK = _unblocked(dq_NxBxHxCxK, t)
  return (dq_BxHxTxK.astype(q_BxHxTxK.dtype), dk_BxHxTxK.astype(k_BxHxTxK.dtype),
          dv_BxHxTxK.astype(v_BxHxTxK.dtype))


_attention.defvjp(lambda q, k, v, block: _forward(q, k, v, block), _backward)

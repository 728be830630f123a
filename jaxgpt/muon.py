"""Muon for the hidden matrices: Nesterov momentum, orthogonalised by a Newton-Schulz
iteration, scaled by the matrix's shape (Keller Jordan's Muon, as optax.contrib has it).

optax's scale_by_muon orthogonalises each matrix on its own, and every device repeats all of
them. Here the matrices of one shape (every layer's, and q, k and v apart) are stacked and
orthogonalised as one batch split over the data-parallel devices: the iteration costs the
same arithmetic whatever the batch size (about 2 GFLOP a step for the 4-layer, 128-wide
model, as much as its forward and backward pass over 768 tokens), so on 2 CPU devices each
does half, in a few large matmuls rather than many small ones.
"""

import collections
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from jaxgpt.model import HIDDEN_LAYERS, SCANNED, kernel_inputs

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's, as modded-nanogpt and optax
NS_STEPS = 5
EPSILON = 1e-8


def _names(path) -> tuple:
  """The dictionary keys of a parameter's path (its module names and its own)."""
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def layers_axes(path) -> int:
  """1 for a block parameter of the scanned form (a leading layers axis), else 0."""
  return int(_names(path)[0] == SCANNED)


def is_hidden_matrix(path) -> bool:
  names = _names(path)
  return names[-1] == "kernel" and len(names) > 1 and names[-2] in HIDDEN_LAYERS


def dimensions(path, p) -> MuonDimensionNumbers:
  """The axes a hidden kernel contracts (reduction) and produces (output); the others are
  batch axes, orthogonalised apart: the layers of the scanned form, and q, k and v of
  c_attn's (D, 3, H, K) kernel, or SwiGLU's gate and value of c_fc's (D, 2, F)."""
  s, names = layers_axes(path), _names(path)
  if names[-2] == "c_attn":
    return MuonDimensionNumbers(reduction_axis=(s,), output_axis=(s + 2, s + 3))
  return MuonDimensionNumbers(reduction_axis=tuple(range(s, s + kernel_inputs(names))),
                              output_axis=(p.ndim - 1,))


def _as_matrices(path, x):
  """x as (batch, fan_in, fan_out), and the function that puts such an array back."""
  d = dimensions(path, x)
  batch = tuple(a for a in range(x.ndim) if a not in d.reduction_axis + d.output_axis)
  order = batch + d.reduction_axis + d.output_axis
  fan_in = math.prod(x.shape[a] for a in d.reduction_axis)
  fan_out = math.prod(x.shape[a] for a in d.output_axis)
  transposed_shape = tuple(x.shape[a] for a in order)
  inverse = tuple(sorted(range(x.ndim), key=order.__getitem__))

  def restore(m_BxIxO):
    return m_BxIxO.reshape(transposed_shape).transpose(inverse)

  return x.transpose(order).reshape(-1, fan_in, fan_out), restore


def newton_schulz(x_BxMxN):
  """Approximately U V^T of each matrix U S V^T (M <= N): five steps of the quintic whose
  singular values land in about [0.7, 1.2] (Keller Jordan's), after scaling to norm 1."""
  a, b, c = NS_COEFFICIENTS
  x = x_BxMxN / (jnp.linalg.norm(x_BxMxN, axis=(1, 2), keepdims=True) + EPSILON)
  for _ in range(NS_STEPS):
    gram_BxMxM = jnp.einsum("bmn,bkn->bmk", x, x)
    poly_BxMxM = b * gram_BxMxM + c * jnp.einsum("bmk,bkl->bml", gram_BxMxM, gram_BxMxM)
    x = a * x + jnp.einsum("bmk,bkn->bmn", poly_BxMxM, x)
  return x


def orthogonalized(updates):
  """Each hidden matrix of `updates` replaced by its Newton-Schulz orthogonalisation times
  sqrt(max(1, fan_out / fan_in)). Matrices go wide side last (M <= N), and those of one
  (M, N) as one batch over the devices: c_fc's (D, F) with the MLP c_proj's (F, D)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
  groups = collections.defaultdict(list)  # (M, N) -> [(leaf index, B x M x N, tall, restore)]
  for i, (path, x) in enumerate(leaves):
    matrices_BxIxO, restore = _as_matrices(path, x)
    tall = matrices_BxIxO.shape[1] > matrices_BxIxO.shape[2]
    matrices_BxMxN = matrices_BxIxO.transpose(0, 2, 1) if tall else matrices_BxIxO
    groups[matrices_BxMxN.shape[1:]].append((i, matrices_BxMxN, tall, restore))
  out = [None] * len(leaves)
  for members in groups.values():
    stack_BxMxN = jnp.concatenate([m for _, m, _, _ in members])
    stack_BxMxN = nn.with_logical_constraint(stack_BxMxN, ("activation_batch", None, None))
    result_BxMxN = newton_schulz(stack_BxMxN)
    start = 0
    for i, matrices_BxMxN, tall, restore in members:
      part_BxMxN = result_BxMxN[start:start + len(matrices_BxMxN)]
      start += len(matrices_BxMxN)
      part_BxIxO = part_BxMxN.transpose(0, 2, 1) if tall else part_BxMxN
      fan_in, fan_out = part_BxIxO.shape[1:]
      out[i] = restore(part_BxIxO * math.sqrt(max(1.0, fan_out / fan_in)))
  return jax.tree_util.tree_unflatten(treedef, out)


class MuonState(NamedTuple):
  count: jax.Array
  mu: optax.Updates


def scale_by_muon(beta: float) -> optax.GradientTransformation:
  """optax.contrib.scale_by_muon's update (Nesterov momentum with bias correction, then the
  orthogonalisation) followed by its shape scaling, for a tree of hidden matrices only."""

  def init(params):
    return MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params))

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g,
                          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                          optax.tree.bias_correction(updates, beta, count))
    return orthogonalized(mu_hat), MuonState(count=count, mu=mu)

  return optax.GradientTransformation(init, update)

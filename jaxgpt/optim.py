"""The optimizer: AdamW, or Muon for the hidden matrices and AdamW for the rest; warm-up then
cosine decay; global-norm clipping of the gradients first.

Parameter paths name the layers (jaxgpt/model.py): the hidden matrices are the `kernel`s of
c_attn, c_proj and c_fc; embeddings, the output head, norms, biases and LoRA adapters are
the rest. With model.scan_layers every block parameter has a leading layers axis, which
neither the decay mask nor Muon counts as a matrix axis.
"""

import math

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from jaxgpt.model import SCANNED

HIDDEN_LAYERS = ("c_attn", "c_proj", "c_fc")


def learning_rate_schedule(train_config, peak: float | None = None) -> optax.Schedule:
  """nanoGPT's schedule: linear warm-up to `peak` (train.learning_rate), cosine decay to
  min_lr at max_steps (min_lr scaled by peak / learning_rate for another peak)."""
  t = train_config
  peak = t.learning_rate if peak is None else peak
  floor = t.min_lr * peak / t.learning_rate
  warmup, decay_end = t.warmup_steps, max(t.max_steps, t.warmup_steps + 1)

  def schedule(step):
    warm = peak * (step + 1) / (warmup + 1)
    progress = jnp.clip((step - warmup) / (decay_end - warmup), 0.0, 1.0)
    cosine = floor + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (peak - floor)
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def _names(path) -> tuple:
  """The dictionary keys of a parameter's path (its module names and its own)."""
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _layers_axes(path) -> int:
  return int(_names(path)[0] == SCANNED)


def decay_mask(params):
  """Weight decay on matrices (and the embedding tables); not on biases or norms."""
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim - _layers_axes(path) >= 2,
                                          params)


def is_hidden_matrix(path) -> bool:
  names = _names(path)
  return names[-1] == "kernel" and names[-2] in HIDDEN_LAYERS


def muon_dimensions(path, p) -> MuonDimensionNumbers:
  """The axes a hidden kernel contracts (reduction) and produces (output); the others are
  batch axes, orthogonalised apart: the layers of the scanned form, and q, k and v of
  c_attn's (D, 3, H, K) kernel, or SwiGLU's gate and value of c_fc's (D, 2, F)."""
  s, names = _layers_axes(path), _names(path)
  if names[-2] == "c_attn":
    return MuonDimensionNumbers(reduction_axis=(s,), output_axis=(s + 2, s + 3))
  if names[-3:-1] == ("attn", "c_proj"):  # (H, K, D)
    return MuonDimensionNumbers(reduction_axis=(s, s + 1), output_axis=(p.ndim - 1,))
  return MuonDimensionNumbers(reduction_axis=(s,), output_axis=(p.ndim - 1,))


def _dimension_tree(updates):
  return jax.tree_util.tree_map_with_path(muon_dimensions, updates)


def _scale_by_width() -> optax.GradientTransformation:
  """Muon's update scaled by sqrt(max(1, fan_out / fan_in)) (Keller Jordan's Muon), so that
  a wide matrix moves as far per input direction as a square one."""

  def scale(path, u):
    d = muon_dimensions(path, u)
    fan_in = math.prod(u.shape[a] for a in d.reduction_axis)
    fan_out = math.prod(u.shape[a] for a in d.output_axis)
    return u * math.sqrt(max(1.0, fan_out / fan_in))

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _adamw(t, schedule) -> optax.GradientTransformation:
  return optax.adamw(schedule, b1=t.beta1, b2=t.beta2, weight_decay=t.weight_decay,
                     mask=decay_mask)


def _muon(t) -> optax.GradientTransformation:
  """Nesterov momentum orthogonalised by Newton-Schulz (optax's), width-scaled, with its own
  learning rate on the schedule's shape and decoupled weight decay."""
  return optax.chain(
      scale_by_muon(beta=t.muon_momentum, nesterov=True, weight_dimension_numbers=_dimension_tree),
      _scale_by_width(),
      optax.add_decayed_weights(t.muon_weight_decay),
      optax.scale_by_learning_rate(learning_rate_schedule(t, t.muon_learning_rate)))


def _labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, p: "muon" if is_hidden_matrix(path) else "adamw", params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  t = train_config
  clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
  adamw = _adamw(t, learning_rate_schedule(t))
  if t.optimizer == "adamw":
    return optax.chain(clip, adamw)
  return optax.chain(clip, optax.partition({"muon": _muon(t), "adamw": adamw}, _labels))

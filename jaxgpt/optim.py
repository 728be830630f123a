"""The optimizer: AdamW, or Muon for the hidden matrices and AdamW for the rest; warm-up then
cosine decay; global-norm clipping of the gradients first.

Parameter paths name the layers (jaxgpt/model.py): the hidden matrices are the `kernel`s of
c_attn, c_proj and c_fc (jaxgpt/muon.py); embeddings, the output head, norms, biases and
LoRA adapters are the rest. With model.scan_layers every block parameter has a leading
layers axis, which neither the decay mask nor Muon counts as a matrix axis.
"""

import jax
import jax.numpy as jnp
import optax

from jaxgpt import muon


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


def decay_mask(params):
  """Weight decay on matrices (and the embedding tables); not on biases or norms."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim - muon.layers_axes(path) >= 2, params)


def _adamw(t) -> optax.GradientTransformation:
  return optax.adamw(learning_rate_schedule(t), b1=t.beta1, b2=t.beta2,
                     weight_decay=t.weight_decay, mask=decay_mask)


def _muon(t) -> optax.GradientTransformation:
  """Muon's orthogonalised momentum with its own learning rate on the schedule's shape, and
  decoupled weight decay."""
  return optax.chain(muon.scale_by_muon(t.muon_momentum),
                     optax.add_decayed_weights(t.muon_weight_decay),
                     optax.scale_by_learning_rate(learning_rate_schedule(t, t.muon_learning_rate)))


def _labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, p: "muon" if muon.is_hidden_matrix(path) else "adamw", params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  t = train_config
  clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()
  if t.optimizer == "adamw":
    return optax.chain(clip, _adamw(t))
  return optax.chain(clip, optax.partition({"muon": _muon(t), "adamw": _adamw(t)}, _labels))

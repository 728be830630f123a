"""AdamW with weight decay on matrices only, warm-up then cosine decay, global-norm clipping."""

import jax
import jax.numpy as jnp
import optax

from jaxgpt.model import SCANNED


def learning_rate_schedule(train_config) -> optax.Schedule:
  """nanoGPT's schedule: linear warm-up to `learning_rate`, cosine decay to `min_lr` at `max_steps`."""
  t = train_config
  warmup, decay_end = t.warmup_steps, max(t.max_steps, t.warmup_steps + 1)

  def schedule(step):
    warm = t.learning_rate * (step + 1) / (warmup + 1)
    progress = jnp.clip((step - warmup) / (decay_end - warmup), 0.0, 1.0)
    cosine = t.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (t.learning_rate - t.min_lr)
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def decay_mask(params):
  """Weight decay on matrices (and the embedding tables); not on biases or LayerNorm. The
  scanned form's leading layers axis (model.scan_layers) is not counted."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim - (path[0].key == SCANNED) >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  t = train_config
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(t), b1=t.beta1, b2=t.beta2,
                  weight_decay=t.weight_decay, mask=decay_mask),
  )

"""Next-token cross-entropy without ever holding the whole (tokens, vocabulary) logits.

For GPT-2's micro-batch of 96 x 1,024 tokens over 50,304 ids the float32 logits alone are
19.8 GB (and their gradient as much again). Here they are computed a chunk of positions at a
time inside a loop whose body is rematerialised: the forward pass keeps only each chunk's
losses, and the backward pass recomputes a chunk's logits to take their gradient, so one
chunk's logits (and gradient) are live at a time, as MaxText and Levanter do. Chunks split
the time axis, so every device works on each chunk (its rows of the batch). A batch whose
logits fit LOGITS_PER_CHUNK is one chunk: the plain computation, no loop.
"""

import jax
import jax.numpy as jnp
import optax

from jaxgpt.model import GPTConfig, output_logits

# The most logits (global, float32) one chunk holds: 1 GiB, a sixteenth of gpt2_owt's
# micro-batch, 128 MiB of it on each of 8 devices.
LOGITS_PER_CHUNK = 2**28


def chunk_length(batch: int, length: int, vocab: int, budget: int | None = None) -> int:
  """The longest divisor of `length` whose chunk of logits, batch x it x vocab, fits
  `budget` (LOGITS_PER_CHUNK by default; at least 1)."""
  fitting = max(1, (budget or LOGITS_PER_CHUNK) // (batch * vocab))
  return max(d for d in range(1, min(length, fitting) + 1) if length % d == 0)


def token_losses(hidden_BxTxD, head_DxV, targets_BxT, c: GPTConfig,
                 budget: int | None = None):
  """Each target's cross-entropy (B, T), float32; targets must be valid ids."""
  b, t, d = hidden_BxTxD.shape
  chunk = chunk_length(b, t, c.padded_vocab_size, budget)

  def losses(x_BxCxD, y_BxC):
    logits = output_logits(jnp.dot(x_BxCxD.reshape(-1, d), head_DxV,
                                    preferred_element_type=jnp.float32), c)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.reshape(*y_BxC.shape, -1), y_BxC)

  if chunk == t:
    return losses(hidden_BxTxD, targets_BxT)
  n = t // chunk
  x_NxBxCxD = hidden_BxTxD.reshape(b, n, chunk, d).transpose(1, 0, 2, 3)
  y_NxBxC = targets_BxT.reshape(b, n, chunk).transpose(1, 0, 2)
  chunk_losses = jax.checkpoint(losses, policy=jax.checkpoint_policies.nothing_saveable)
  _, losses_NxBxC = jax.lax.scan(lambda _, xy: (None, chunk_losses(*xy)), None,
                                 (x_NxBxCxD, y_NxBxC))
  return losses_NxBxC.transpose(1, 0, 2).reshape(b, t)

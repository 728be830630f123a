"""Fast generation: a key/value-cache prefill, then a compiled decode loop run in chunks.

The context is the model's `block_size` positions. When the cache is full, the newest
`block_size // 2` tokens are prefilled again as the new context and decoding goes on, so
generation can run past `block_size` at a small amortised cost; until then the output is
exactly what recomputing the whole context each step would give.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.model import GPT


@flax.struct.dataclass
class Sampling:
  """Sampling settings, traced (changing them does not recompile)."""
  temperature: float = 1.0   # 0 is greedy decoding
  top_k: int = 0             # 0 keeps every token
  top_p: float = 1.0         # nucleus: the smallest set whose probability reaches top_p


@flax.struct.dataclass
class DecodeState:
  cache: dict
  context_BxS: jax.Array     # the tokens whose keys and values are in the cache
  length: jax.Array          # how many cache positions are filled
  logits_BxV: jax.Array      # float32 logits for the next token
  rng: jax.Array
  num_generated: jax.Array


def filter_logits(logits_BxV, sampling: Sampling):
  """Temperature, top-k and top-p applied to float32 logits.

  The model already gives padded ids no probability, so they are never sampled.
  """
  neg_inf = jnp.finfo(jnp.float32).min
  v = logits_BxV.shape[-1]
  logits_BxV = logits_BxV / jnp.maximum(sampling.temperature, 1e-6)
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  k = jnp.where(sampling.top_k > 0, jnp.minimum(sampling.top_k, v), v)
  kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.full((logits_BxV.shape[0], 1), k - 1), axis=-1)
  logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
  # Keep each token whose higher-ranked tokens hold less than top_p of the probability,
  # so the token that crosses top_p is kept (and the top token always is).
  sorted_probs_BxV = jax.nn.softmax(jnp.sort(logits_BxV, axis=-1)[:, ::-1], axis=-1)
  mass_before_BxV = jnp.cumsum(sorted_probs_BxV, axis=-1) - sorted_probs_BxV
  kept_BxV = mass_before_BxV < sampling.top_p
  kept_BxV = kept_BxV.at[:, 0].set(True)
  num_kept_Bx1 = kept_BxV.sum(axis=-1, keepdims=True)
  sorted_again_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  cutoff_Bx1 = jnp.take_along_axis(sorted_again_BxV, num_kept_Bx1 - 1, axis=-1)
  return jnp.where(logits_BxV < cutoff_Bx1, neg_inf, logits_BxV)


def sample_token(logits_BxV, sampling: Sampling, rng):
  greedy_B = jnp.argmax(logits_BxV, axis=-1)
  sampled_B = jax.random.categorical(rng, filter_logits(logits_BxV, sampling))
  return jnp.where(sampling.temperature == 0, greedy_B, sampled_B).astype(jnp.int32)


def _set_cache_length(cache, length):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray(length, x.dtype) if path[-1].key == "index" else x, cache)


def _run(model: GPT, params, cache, tokens_BxT, start):
  """Runs tokens at positions start.. through the model, appending to the cache."""
  positions_T = start + jnp.arange(tokens_BxT.shape[1])
  variables = {"params": params} if cache is None else {"params": params, "cache": cache}
  logits_BxTxV, mutated = model.apply(variables, tokens_BxT, decode=True,
                                      positions_T=positions_T, mutable=["cache"])
  return logits_BxTxV, mutated["cache"]


@functools.partial(jax.jit, static_argnames=("model",))
def prefill(model: GPT, params, prompt_BxP, prompt_length, seed) -> DecodeState:
  """Fills a fresh cache with the prompt (right-padded to a bucket; real length given)."""
  b, p = prompt_BxP.shape
  s = model.config.block_size
  logits_BxPxV, cache = _run(model, params, None, prompt_BxP, 0)
  context_BxS = jnp.zeros((b, s), jnp.int32).at[:, :p].set(prompt_BxP)
  return DecodeState(
      cache=_set_cache_length(cache, prompt_length), context_BxS=context_BxS,
      length=jnp.asarray(prompt_length, jnp.int32),
      logits_BxV=jax.lax.dynamic_index_in_dim(logits_BxPxV, prompt_length - 1, 1, False),
      rng=jax.random.key(seed), num_generated=jnp.array(0, jnp.int32))


@functools.partial(jax.jit, static_argnames=("model", "num_steps"), donate_argnames=("state",))
def decode(model: GPT, params, state: DecodeState, sampling: Sampling, num_steps: int):
  """Samples `num_steps` tokens per sequence; returns the new state and tokens (B, num_steps)."""
  s = model.config.block_size
  refill_length = max(1, s // 2)

  def append(st: DecodeState, token_B):
    logits_Bx1xV, cache = _run(model, params, st.cache, token_B[:, None], st.length)
    context_BxS = jax.lax.dynamic_update_slice(st.context_BxS, token_B[:, None], (0, st.length))
    return st.replace(cache=cache, context_BxS=context_BxS, length=st.length + 1,
                      logits_BxV=logits_Bx1xV[:, 0])

  def refill(st: DecodeState, token_B):
    recent_BxR = jnp.concatenate([st.context_BxS[:, s - refill_length + 1:], token_B[:, None]], 1)
    cache = _set_cache_length(st.cache, 0)
    logits_BxRxV, cache = _run(model, params, cache, recent_BxR, 0)
    context_BxS = jnp.zeros_like(st.context_BxS).at[:, :refill_length].set(recent_BxR)
    return st.replace(cache=cache, context_BxS=context_BxS,
                      length=jnp.array(refill_length, jnp.int32), logits_BxV=logits_BxRxV[:, -1])

  def step(st: DecodeState, _):
    rng = jax.random.fold_in(st.rng, st.num_generated)
    token_B = sample_token(st.logits_BxV, sampling, rng)
    st = jax.lax.cond(st.length < s, append, refill, st, token_B)
    return st.replace(num_generated=st.num_generated + 1), token_B

  state, tokens_NxB = jax.lax.scan(step, state, None, length=num_steps)
  return state, tokens_NxB.T


def prompt_bucket(length: int, block_size: int) -> int:
  """Prompts are padded to a power of two (at most block_size), so few shapes compile."""
  return min(block_size, 1 << max(0, length - 1).bit_length())


def generate(model: GPT, params, prompt_ids, max_new_tokens: int, sampling: Sampling = Sampling(), num_samples: int = 1, seed: int = 0,
             chunk: int = 64):
  """Yields arrays (num_samples, n) of new tokens, chunk by chunk, for one prompt."""
  s = model.config.block_size
  prompt = np.asarray(prompt_ids, np.int32)[-s:]
  padded = np.zeros((num_samples, prompt_bucket(len(prompt), s)), np.int32)
  padded[:, :len(prompt)] = prompt
  state = prefill(model, params, padded, len(prompt), seed)
  remaining = max_new_tokens
  while remaining > 0:
    state, tokens = decode(model, params, state, sampling, chunk)
    yield np.asarray(tokens[:, :remaining])
    remaining -= chunk

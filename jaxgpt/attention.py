"""Causal self-attention: the q, k, v projection, QK-norm and rotary positions, the choice of
implementation (jaxgpt's own, which past QUERY_BLOCK positions is blockwise_attention.py's,
jax.nn.dot_product_attention's cuDNN or XLA, or the Pallas splash kernel on TPU), the
key/value cache for decoding, and the output projection.

Shape suffixes as in model.py; in the cached attention N is batch x heads.
"""

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgpt.blockwise_attention import QUERY_BLOCK, blockwise_causal_attention
from jaxgpt.dense import Dense, ones

if TYPE_CHECKING:
  from jaxgpt.model import GPTConfig

ACTIVATION_NAMES = ("activation_batch", "activation_length", "activation_heads",
                    "activation_head_dim")
SPLASH_BLOCK = 128  # the splash kernel's query and key blocks: the length must be a multiple
CACHE_BLOCK = 128  # decoding reads a longer key/value cache this many positions at a time
FEW_ROWS = 4  # query rows that read it as element-wise products, FEW_ROWS_BLOCK at a time
# Small blocks waste little of the last, partly filled one, and were faster even at 1,024
# positions (GPT-2's decoding step at batch 8, a cache of 256: 21.5-21.9 ms with blocks of 64,
# 19.0-19.5 with 16; BENCHMARKS.md).
FEW_ROWS_BLOCK = 16


def implementation(c: "GPTConfig", deterministic: bool, length: int) -> str:
  """Which attention a forward pass over `length` positions runs: "jaxgpt" (this file's,
  with attention dropout), jax.nn.dot_product_attention's "cudnn" (fused flash attention) or
  "xla", or "splash" (the Pallas splash kernel, TPU's flash attention, which never holds the
  T x T scores).

  "auto" takes cuDNN on an NVIDIA GPU when it applies (16-bit compute, head size a multiple
  of 8 up to 128), splash on a TPU when the length is a multiple of SPLASH_BLOCK, each only
  without attention dropout in this pass, and jaxgpt's otherwise (on CPU its heads-major
  attention is the faster one). "splash" by name falls back to jaxgpt's at other lengths
  (short prompts, logits of a few tokens).
  """
  flash = deterministic or c.dropout == 0
  if c.attention == "splash" or (c.attention == "auto" and jax.default_backend() == "tpu"):
    return "splash" if flash and length % SPLASH_BLOCK == 0 else "jaxgpt"
  if c.attention != "auto":
    return c.attention
  cudnn_applies = (jax.default_backend() == "gpu" and c.dtype in ("bfloat16", "float16")
                   and c.head_size % 8 == 0 and c.head_size <= 128)
  return "cudnn" if cudnn_applies and flash else "jaxgpt"


class CausalSelfAttention(nn.Module):
  config: "GPTConfig"

  @nn.compact
  def __call__(self, x_NxD, batch: int, deterministic: bool, decode: bool, positions_T,
               mask_BxTxS=None):
    c = self.config
    qkv_BxTx3xHxK = self._projected(x_NxD, batch)
    index = None
    if decode:  # the cache's index is the position of this call's first token
      index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
      positions_T = index.value + jnp.arange(qkv_BxTx3xHxK.shape[1])
    qkv_BxTx3xHxK = self._normed_and_rotated(qkv_BxTx3xHxK, positions_T)
    length = qkv_BxTx3xHxK.shape[1]
    chosen = "jaxgpt" if mask_BxTxS is not None else implementation(c, deterministic, length)
    if decode:
      y_BxTxHxK = self._cached_attention(*(qkv_BxTx3xHxK[:, :, i] for i in range(3)), index)
    elif chosen == "jaxgpt":
      y_BxTxHxK = causal_attention(qkv_BxTx3xHxK, nn.Dropout(c.dropout), deterministic,
                                   mask_BxTxS)
    elif chosen == "splash":
      y_BxTxHxK = splash_attention(*(qkv_BxTx3xHxK[:, :, i] for i in range(3)))
    else:  # no dropout on the attention probabilities (config.validate requires dropout 0)
      y_BxTxHxK = jax.nn.dot_product_attention(
          *(qkv_BxTx3xHxK[:, :, i] for i in range(3)), is_causal=True, implementation=chosen)
    y_NxHxK = nn.with_logical_constraint(y_BxTxHxK, ACTIVATION_NAMES).reshape(
        -1, c.n_head, c.head_size)
    y_NxD = Dense(shape=(c.n_head, c.head_size, c.n_embd), names=("heads", "head_dim", "embed"),
                  num_in=2, stddev=c.proj_std, config=c, name="c_proj")(y_NxHxK)
    return nn.Dropout(c.dropout)(y_NxD, deterministic=deterministic)

  def _projected(self, x_NxD, batch: int):
    """q, k and v as one (B, T, 3, H, K) array.

    c_attn's kernel is (D, G + 2, J, K): for each of the J key/value heads, its G query heads,
    its key and its value (grouped-query attention; G = 1 is GPT-2's (D, 3, H, K)). Query
    head h reads key/value head h // G, as Hugging Face's Llama has it; with G > 1 the keys
    and values are repeated to the H query heads here (the cache keeps the J alone)."""
    c = self.config
    g, j = c.group_size, c.kv_heads
    qkv_NxGp2xJxK = Dense(shape=(c.n_embd, g + 2, j, c.head_size),
                          names=("embed", "qkv", "heads", "head_dim"), num_in=1,
                          stddev=c.init_std, config=c, use_bias=c.bias or c.qkv_bias,
                          name="c_attn")(x_NxD)
    qkv_BxTxGp2xJxK = qkv_NxGp2xJxK.reshape(batch, -1, g + 2, j, c.head_size)
    if g == 1:
      return qkv_BxTxGp2xJxK
    b, t = qkv_BxTxGp2xJxK.shape[:2]
    q_BxTxHxK = qkv_BxTxGp2xJxK[:, :, :g].transpose(0, 1, 3, 2, 4).reshape(b, t, -1, c.head_size)
    kv_BxTx2xHxK = jnp.repeat(qkv_BxTxGp2xJxK[:, :, g:], g, axis=3)
    return jnp.concatenate([q_BxTxHxK[:, :, None], kv_BxTx2xHxK], axis=2)

  def _normed_and_rotated(self, qkv_BxTx3xHxK, positions_T):
    """q and k with c.qk_norm's RMSNorm per head (a learned scale per head feature, shared
    by the heads) and then c.position's rotary embeddings; v as it is. Both work on the
    whole q, k, v array (v's factors are 1), which XLA fuses into one or two passes."""
    c = self.config
    if c.qk_norm:
      scales = (_Scale(c.head_size, name=name)() for name in ("q_norm", "k_norm"))
      qkv_BxTx3xHxK = qk_normed(qkv_BxTx3xHxK, *scales, c.norm_eps).astype(c.dtype)
    if c.position == "rope":
      qkv_BxTx3xHxK = rotated(qkv_BxTx3xHxK, positions_T, rope_frequencies(c))
    return qkv_BxTx3xHxK

  def _cached_attention(self, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, index):
    """Appends this call's keys and values to the cache at `index` (a cache variable: the
    number of positions filled) and attends over all of it.

    The cache holds the J key/value heads only (every G-th of the repeated ones). Keys and
    values are cached as (B*J, S, K), so that a step writes each key contiguously (the (K, S)
    layout a matmul reads made those writes strided: 2.2 ms a step at GPT-2's size), with the
    G query heads of a key/value head and their T positions as the query rows; one batch axis
    of batch x heads keeps a batch of one from giving the products operands of another shape
    than the cache's, which would copy the cache every step.
    """
    c = self.config
    b, t = q_BxTxHxK.shape[:2]
    g, j, n = c.group_size, c.kv_heads, b * c.kv_heads
    # Rows batch-major; heads-major where the heads are split over devices (generation's
    # tensor parallelism), so that each device's share of the rows is contiguous.
    heads_major = nn.logical_to_mesh_axes(("activation_heads",))[0] is not None
    to_rows = (2, 0, 3, 1, 4) if heads_major else (0, 2, 3, 1, 4)  # (B, T, J, G, K) ->
    cached_k = self.variable("cache", "k", jnp.zeros, (n, c.block_size, c.head_size),
                             k_BxTxHxK.dtype)
    cached_v = self.variable("cache", "v", jnp.zeros, (n, c.block_size, c.head_size),
                             v_BxTxHxK.dtype)
    start = index.value
    rows = lambda x_BxTxJxGxK, gt: x_BxTxJxGxK.transpose(to_rows).reshape(n, gt, c.head_size)
    k_NxTxK = rows(k_BxTxHxK[:, :, ::g, None], t)
    v_NxTxK = rows(v_BxTxHxK[:, :, ::g, None], t)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_NxTxK, (0, start, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_NxTxK, (0, start, 0))
    index.value = start + t
    q_NxGTxK = rows(q_BxTxHxK.reshape(b, t, j, g, c.head_size), g * t)
    positions_GT = jnp.tile(start + jnp.arange(t), g)
    y_NxGTxK = _attend_to_cache(q_NxGTxK, cached_k.value, cached_v.value, positions_GT,
                                filled=start + t)
    y_shape = tuple((b, t, j, g, c.head_size)[i] for i in to_rows)
    y_BxTxJxGxK = y_NxGTxK.reshape(y_shape).transpose(np.argsort(to_rows))
    return y_BxTxJxGxK.reshape(b, t, c.n_head, c.head_size)


def causal_attention(qkv_BxTx3xHxK, dropout: nn.Dropout, deterministic: bool, mask_BxTxS=None):
  """jaxgpt's attention over the whole sequence, heads-major so that every dot is a plain
  batched matmul; one transpose in, one out (splitting the heads-major array keeps its
  backward a concatenation rather than three padded copies). `dropout` drops attention
  probabilities. `mask_BxTxS` says which positions each position attends to (causal, and
  each attending to itself: several sequences packed in a row); None is the causal mask.
  Longer than QUERY_BLOCK, causal and without dropout, it is blockwise_causal_attention,
  which holds no T x T array in either pass."""
  t, k = qkv_BxTx3xHxK.shape[1], qkv_BxTx3xHxK.shape[-1]
  names = ("activation_batch", "activation_heads", "activation_length", "activation_head_dim")
  qkv_3xBxHxTxK = qkv_BxTx3xHxK.transpose(2, 0, 3, 1, 4)
  q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (
      nn.with_logical_constraint(x[0], names) for x in jax.lax.split(qkv_3xBxHxTxK, (1, 1, 1)))
  q_BxHxTxK = q_BxHxTxK * (1.0 / math.sqrt(k))
  if mask_BxTxS is None and t > QUERY_BLOCK and (deterministic or dropout.rate == 0):
    return blockwise_causal_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK).transpose(0, 2, 1, 3)
  att_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                           preferred_element_type=jnp.float32)
  if mask_BxTxS is None:
    mask_BxHxTxS = jnp.where(jnp.tril(jnp.ones((1, 1, t, t), dtype=bool)), 0.0, -jnp.inf)
  else:
    mask_BxHxTxS = jnp.where(mask_BxTxS[:, None], 0.0, -jnp.inf)
  probs_BxHxTxS = jax.nn.softmax(att_BxHxTxS + mask_BxHxTxS, axis=-1)
  probs_BxHxTxS = dropout(probs_BxHxTxS, deterministic=deterministic)
  y_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK,
                         preferred_element_type=jnp.float32).astype(v_BxHxSxK.dtype)
  return y_BxHxTxK.transpose(0, 2, 1, 3)


def splash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  """Causal attention by the Pallas splash kernel (MaxText's on TPU), run on each device's
  share of the batch and heads (shard_map over the mesh, as the activations are sharded);
  interpreted on other backends, where it is for tests only."""
  names = ("activation_batch", "activation_heads", "activation_length", "activation_head_dim")
  spec = nn.logical_to_mesh_axes(names)
  scale = 1.0 / math.sqrt(q_BxTxHxK.shape[-1])
  heads_major = lambda x: x.transpose(0, 2, 1, 3)

  def local(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK):
    _, h, t, _ = q_BxHxTxK.shape
    kernel = _splash_kernel(h, t, interpret=jax.default_backend() != "tpu")
    return jax.vmap(kernel)(q_BxHxTxK * scale, k_BxHxSxK, v_BxHxSxK)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    spec = _dividing(spec, heads_major(q_BxTxHxK).shape, mesh)
    local = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                          check_vma=False)
  y_BxHxTxK = local(heads_major(q_BxTxHxK), heads_major(k_BxTxHxK), heads_major(v_BxTxHxK))
  return heads_major(y_BxHxTxK)


def _dividing(spec: P, shape: tuple[int, ...], mesh) -> P:
  """`spec` with each dimension left whole where the mesh axes it names do not divide it
  (a batch of one row, as parameter initialisation and a single prompt's logits have)."""
  def axes_size(axes):
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
  return P(*(axes if axes is None or size % axes_size(axes) == 0 else None
             for axes, size in zip(spec, shape)))


def _splash_kernel(num_heads: int, length: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * num_heads)
  return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _attend_to_cache(q_NxRxK, k_NxSxK, v_NxSxK, positions_R, filled):
  """Each query row (at positions_R) attends to the cache positions up to its own; `filled`
  positions of the cache hold keys. A cache longer than CACHE_BLOCK is read a block at a
  time, only as far as it is filled: decoding at position p then reads p positions of keys
  and values, not the whole cache (at GPT-2's 1,024, 50 MB a layer for 8 samples).

  A decoding step's few rows (up to FEW_ROWS) take their products with a block as
  element-wise multiplies and sums, which XLA fuses with reading the block out of the cache;
  a matmul would first copy the block (on CPU half of the step's attention time), and pays
  only for many rows (a prompt)."""
  s = k_NxSxK.shape[1]
  if s <= CACHE_BLOCK:
    mask_RxS = jnp.arange(s)[None, :] <= positions_R[:, None]
    return _weighted_values(q_NxRxK, k_NxSxK, v_NxSxK, mask_RxS)
  n, r, k = q_NxRxK.shape
  few_rows = r <= FEW_ROWS
  block = FEW_ROWS_BLOCK if few_rows else CACHE_BLOCK  # each the faster for its rows
  q_NxRxK = q_NxRxK * (1.0 / math.sqrt(k))

  def attend_block(j, carry):
    """Online softmax (as flash attention): the running max, sum and weighted values."""
    max_NxR, sum_NxR, y_NxRxK = carry
    start = jnp.minimum(j * block, s - block)  # the last block may overlap
    k_NxCxK = jax.lax.dynamic_slice_in_dim(k_NxSxK, start, block, axis=1)
    v_NxCxK = jax.lax.dynamic_slice_in_dim(v_NxSxK, start, block, axis=1)
    if few_rows:
      att_NxRxC = jnp.sum(q_NxRxK[:, :, None] * k_NxCxK[:, None].astype(jnp.float32), axis=-1)
    else:
      att_NxRxC = jnp.einsum("nrk,nck->nrc", q_NxRxK, k_NxCxK,
                             preferred_element_type=jnp.float32)
    positions_C = start + jnp.arange(block)
    seen_RxC = ((positions_C[None, :] >= j * block)
                & (positions_C[None, :] <= positions_R[:, None]))
    att_NxRxC = jnp.where(seen_RxC, att_NxRxC, -jnp.inf)
    new_max_NxR = jnp.maximum(max_NxR, att_NxRxC.max(axis=-1))
    probs_NxRxC = jnp.exp(att_NxRxC - new_max_NxR[..., None])
    kept_NxR = jnp.exp(max_NxR - new_max_NxR)
    if few_rows:
      values_NxRxK = jnp.sum(probs_NxRxC[..., None] * v_NxCxK[:, None].astype(jnp.float32),
                             axis=2)
    else:
      values_NxRxK = jnp.einsum("nrc,nck->nrk", probs_NxRxC.astype(v_NxCxK.dtype), v_NxCxK,
                                preferred_element_type=jnp.float32)
    y_NxRxK = y_NxRxK * kept_NxR[..., None] + values_NxRxK
    return new_max_NxR, sum_NxR * kept_NxR + probs_NxRxC.sum(axis=-1), y_NxRxK

  # Every row sees position 0 in the first block, so the running max is finite from then on.
  carry = (jnp.full((n, r), -jnp.inf), jnp.zeros((n, r)), jnp.zeros((n, r, k)))
  num_blocks = (filled + block - 1) // block
  _, sum_NxR, y_NxRxK = jax.lax.fori_loop(0, num_blocks, attend_block, carry)
  return (y_NxRxK / sum_NxR[..., None]).astype(v_NxSxK.dtype)


def _weighted_values(q_NxTxK, k_NxSxK, v_NxSxK, mask_TxS):
  """Attention over the whole cache as two batched matmuls."""
  scale = 1.0 / math.sqrt(q_NxTxK.shape[-1])
  att_NxTxS = jnp.einsum("ntk,nsk->nts", q_NxTxK, k_NxSxK,
                         preferred_element_type=jnp.float32) * scale
  att_NxTxS = jnp.where(mask_TxS, att_NxTxS, jnp.finfo(jnp.float32).min)
  probs_NxTxS = jax.nn.softmax(att_NxTxS, axis=-1)
  return jnp.einsum("nts,nsk->ntk", probs_NxTxS.astype(v_NxSxK.dtype), v_NxSxK,
                    preferred_element_type=jnp.float32).astype(v_NxSxK.dtype)


class _Scale(nn.Module):
  """A learned scale per feature, named as nn.RMSNorm's ("scale")."""
  size: int

  @nn.compact
  def __call__(self):
    return self.param("scale", ones(("head_dim",)), (self.size,))


def qk_normed(qkv_BxTx3xHxK, q_scale_K, k_scale_K, epsilon: float):
  """RMSNorm over the head features of q and k (with their learned scales), in float32."""
  x = qkv_BxTx3xHxK.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)
  is_qk_1x1x3x1x1 = (jnp.arange(3) < 2).reshape(1, 1, 3, 1, 1)
  scale_1x1x3x1xK = jnp.stack([q_scale_K, k_scale_K, jnp.ones_like(q_scale_K)])[None, None, :, None]
  return x * jnp.where(is_qk_1x1x3x1x1, inv_rms, 1.0) * scale_1x1x3x1xK


def rope_frequencies(c: "GPTConfig"):
  """(K/2,) float32: the angle per position that rotary embeddings turn feature pair i by,
  1 / rope_base^(2i/K), with Llama 3's rope_scaling where the model has it: wavelengths
  longer than the original context / low_freq_factor slowed by `factor`, those shorter than
  the original context / high_freq_factor kept, and those between interpolated."""
  half = c.head_size // 2
  inv_freq_K2 = 1.0 / c.rope_base ** (jnp.arange(half, dtype=jnp.float32) / half)
  scaling = c.llama3_rope_scaling
  if scaling is None:
    return inv_freq_K2
  factor, low, high, context = (float(scaling[k]) for k in (
      "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"))
  wavelength_K2 = 2 * math.pi / inv_freq_K2
  smooth_K2 = jnp.clip((context / wavelength_K2 - low) / (high - low), 0.0, 1.0)
  return (1 - smooth_K2) * inv_freq_K2 / factor + smooth_K2 * inv_freq_K2


def rotated(qkv_BxTx3xHxK, positions_T, inv_freq_K2):
  """Rotary position embeddings on q and k: each pair of features (i, i + K/2) turned by the
  angle position x inv_freq_K2[i] (rope_frequencies), in float32 (the Hugging Face Llama
  layout). The positions are (T,), or (B, T) where each row has its own.

  Written as qkv * cos + qkv with its halves swapped * sin over the whole q, k, v array, one
  element-wise pass that XLA fuses (and its backward too), rather than slicing q and k out,
  rotating them apart and stacking them back, which costs copies of the array."""
  b, t, three, h, k = qkv_BxTx3xHxK.shape
  positions_BxT = positions_T if positions_T.ndim == 2 else positions_T[None]
  cos_BxTx3xK, sin_BxTx3xK = _rotary_tables(positions_BxT, inv_freq_K2)
  x = qkv_BxTx3xHxK.astype(jnp.float32)
  swapped = x.reshape(b, t, three, h, 2, k // 2)[..., ::-1, :].reshape(x.shape)
  rotated_x = x * cos_BxTx3xK[..., None, :] + swapped * sin_BxTx3xK[..., None, :]
  return rotated_x.astype(qkv_BxTx3xHxK.dtype)


def _rotary_tables(positions_BxT, inv_freq_K2):
  """(cos, sin), each (B, T, 3, K), that rotate q and k of a (B, T, 3, H, K) q, k, v array
  by rotary embeddings and leave v as it is (cos 1, sin 0): see rotated."""
  angles_BxTxK2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_K2[None, None]
  cos_BxTxK2, sin_BxTxK2 = jnp.cos(angles_BxTxK2), jnp.sin(angles_BxTxK2)
  cos_BxTxK = jnp.concatenate([cos_BxTxK2, cos_BxTxK2], axis=-1)
  sin_BxTxK = jnp.concatenate([-sin_BxTxK2, sin_BxTxK2], axis=-1)
  cos_BxTx3xK = jnp.stack([cos_BxTxK, cos_BxTxK, jnp.ones_like(cos_BxTxK)], axis=2)
  sin_BxTx3xK = jnp.stack([sin_BxTxK, sin_BxTxK, jnp.zeros_like(sin_BxTxK)], axis=2)
  return cos_BxTx3xK, sin_BxTx3xK

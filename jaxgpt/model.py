"""The GPT-2 model as nanoGPT has it, in Flax Linen, with today's recipe as options.

Every option's default is nanoGPT's GPT-2; the alternatives are `position="rope"` (rotary
embeddings on q and k, no position table), `norm="rmsnorm"`, `qk_norm=True` (RMSNorm of q
and k per head), `mlp="relu2"` (ReLU squared) or "swiglu", `tie_embeddings=False` (a
separate output kernel `lm_head`) and `zero_init_proj=True` (the projections into the
residual stream start at zero).

Parameters are float32 and carry logical axis names; activations carry activation axis
names of their own. `jaxgpt/sharding.py` maps both to the device mesh.

The residual stream is kept 2-D, (B*T, D): every weight matmul is then a plain 2-D dot,
which XLA's CPU backend runs much faster (backward especially) than batched 3-D dots.

Shape suffixes: B batch, T time (the positions computed now), S positions attended to
(the cache's length when decoding), N tokens of the flattened batch B*T (in the cached
attention: batch x heads), D model width, H heads, K head size, F MLP width, V vocabulary;
K2 is K/2, and a digit is an axis of that length (SwiGLU's gate and value: Nx2xF).
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

INIT_STD = 0.02  # GPT-2's initialisation of every weight matrix and embedding
NORM_EPSILON = 1e-5  # GPT-2's LayerNorm's, and RMSNorm's (as Llama 2's)
ROPE_BASE = 10000.0  # the rotary embeddings' longest wavelength is 2 pi times this
SWIGLU_MULTIPLE = 64  # the SwiGLU MLP's width is 8/3 D rounded up to a multiple of this
SCANNED = "h"  # the blocks with model.scan_layers (stacked by layer); else h_0 .. h_{L-1}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int             # the tokenizer's; the embedding table is padded beyond it
  block_size: int = 256
  n_layer: int = 6
  n_head: int = 6
  n_embd: int = 384
  dropout: float = 0.0
  bias: bool = False
  dtype: str = "float32"  # compute dtype; parameters are always float32
  vocab_multiple: int = 1  # the table is padded to a multiple of this, for faster matmuls
  lora_rank: int = 0       # > 0: low-rank adapters on the Dense layers named in lora_targets
  lora_alpha: float = 16.0
  lora_targets: tuple = ()  # e.g. ("c_attn", "c_proj", "c_fc")
  attention: str = "auto"  # see attention_implementation
  remat: str = "none"  # see _remat: "none", "full" or "dots"
  scan_layers: bool = False  # run the blocks as one nn.scan over parameters stacked by layer
  position: str = "learned"  # "learned" (a wpe table) or "rope" (rotary, on q and k)
  norm: str = "layernorm"    # or "rmsnorm"
  qk_norm: bool = False      # RMSNorm of q and k per head before their dot product
  mlp: str = "gelu"          # "gelu", "relu2" (ReLU squared) or "swiglu"
  tie_embeddings: bool = True  # the output layer reads wte; False: its own kernel lm_head
  zero_init_proj: bool = False  # the c_proj layers start at zero (as modded-nanogpt)

  @property
  def head_size(self) -> int:
    return self.n_embd // self.n_head

  @property
  def residual_std(self) -> float:
    """GPT-2's smaller initialisation of the projections into the residual stream, one per
    residual addition (two per layer), so the stream's variance does not grow with depth."""
    return INIT_STD / math.sqrt(2 * self.n_layer)

  @property
  def proj_std(self) -> float:
    """The c_proj layers' initialisation: residual_std, or zero with zero_init_proj."""
    return 0.0 if self.zero_init_proj else self.residual_std

  @property
  def mlp_width(self) -> int:
    """F: 4 D; SwiGLU's three matrices keep about the 8 D^2 weights of two with 8/3 D,
    rounded up to a multiple of SWIGLU_MULTIPLE."""
    if self.mlp != "swiglu":
      return 4 * self.n_embd
    return -(-8 * self.n_embd // (3 * SWIGLU_MULTIPLE)) * SWIGLU_MULTIPLE

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


def attention_implementation(c: GPTConfig, deterministic: bool) -> str:
  """Which attention a forward pass runs: "jaxgpt" (this file's, with attention dropout),
  or jax.nn.dot_product_attention's "cudnn" (fused flash attention) or "xla".

  "auto" takes cuDNN on an NVIDIA GPU when it applies (16-bit compute, head size a multiple
  of 8 up to 128, no attention dropout in this pass) and jaxgpt's otherwise; on CPU and TPU
  jaxgpt's heads-major attention is the faster one.
  """
  if c.attention != "auto":
    return c.attention
  cudnn_applies = (jax.default_backend() == "gpu" and c.dtype in ("bfloat16", "float16")
                   and c.head_size % 8 == 0 and c.head_size <= 128)
  return "cudnn" if cudnn_applies and (deterministic or c.dropout == 0) else "jaxgpt"


def _normal(stddev, names):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _constrain(x, names):
  return nn.with_logical_constraint(x, names)


def _ones(names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _norm(c: GPTConfig, name: str) -> nn.Module:
  """The residual stream's normalisation: c.norm, LayerNorm or RMSNorm (no bias)."""
  if c.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=NORM_EPSILON, dtype=c.dtype, scale_init=_ones(("embed",)),
                      name=name)
  return nn.LayerNorm(epsilon=NORM_EPSILON, use_bias=c.bias, dtype=c.dtype,
                      scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)), name=name)


def _rotary_tables(positions_T, head_size: int):
  """(cos, sin), each (T, 3, K), that rotate q and k of a (B, T, 3, H, K) q, k, v array by
  rotary embeddings and leave v as it is (cos 1, sin 0): see _rotated."""
  half = head_size // 2
  inv_freq_K2 = 1.0 / ROPE_BASE ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles_TxK2 = positions_T.astype(jnp.float32)[:, None] * inv_freq_K2[None, :]
  cos_TxK2, sin_TxK2 = jnp.cos(angles_TxK2), jnp.sin(angles_TxK2)
  cos_TxK = jnp.concatenate([cos_TxK2, cos_TxK2], axis=-1)
  sin_TxK = jnp.concatenate([-sin_TxK2, sin_TxK2], axis=-1)
  cos_Tx3xK = jnp.stack([cos_TxK, cos_TxK, jnp.ones_like(cos_TxK)], axis=1)
  sin_Tx3xK = jnp.stack([sin_TxK, sin_TxK, jnp.zeros_like(sin_TxK)], axis=1)
  return cos_Tx3xK, sin_Tx3xK


def _rotated(qkv_BxTx3xHxK, positions_T):
  """Rotary position embeddings on q and k: each pair of features (i, i + K/2) turned by the
  angle position / ROPE_BASE^(2i/K), in float32 (the Hugging Face Llama layout).

  Written as qkv * cos + qkv with its halves swapped * sin over the whole q, k, v array, one
  element-wise pass that XLA fuses (and its backward too), rather than slicing q and k out,
  rotating them apart and stacking them back, which costs copies of the array."""
  b, t, three, h, k = qkv_BxTx3xHxK.shape
  cos_Tx3xK, sin_Tx3xK = _rotary_tables(positions_T, k)
  x = qkv_BxTx3xHxK.astype(jnp.float32)
  swapped = x.reshape(b, t, three, h, 2, k // 2)[..., ::-1, :].reshape(x.shape)
  rotated = x * cos_Tx3xK[None, :, :, None] + swapped * sin_Tx3xK[None, :, :, None]
  return rotated.astype(qkv_BxTx3xHxK.dtype)


class _Scale(nn.Module):
  """A learned scale per feature, named as nn.RMSNorm's ("scale")."""
  size: int

  @nn.compact
  def __call__(self):
    return self.param("scale", _ones(("head_dim",)), (self.size,))


def _qk_normed(qkv_BxTx3xHxK, q_scale_K, k_scale_K):
  """RMSNorm over the head features of q and k (with their learned scales), in float32."""
  x = qkv_BxTx3xHxK.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + NORM_EPSILON)
  is_qk_1x1x3x1x1 = (jnp.arange(3) < 2).reshape(1, 1, 3, 1, 1)
  scale_1x1x3x1xK = jnp.stack([q_scale_K, k_scale_K, jnp.ones_like(q_scale_K)])[None, None, :, None]
  return x * jnp.where(is_qk_1x1x3x1x1, inv_rms, 1.0) * scale_1x1x3x1xK


def _contract(x, kernel, num_in: int, dtype):
  """x . kernel over the last `num_in` axes of x and the first `num_in` of kernel, named
  "dot" for remat="dots" (the custom VJP hides the dot from JAX's own dots policies)."""
  return checkpoint_name(_tensordot(x.astype(dtype), kernel.astype(dtype), num_in), "dot")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tensordot(x, kernel, num_in: int):
  return jnp.tensordot(x, kernel, axes=(_last(x.ndim, num_in), _first(num_in)))


def _first(n: int) -> tuple:
  return tuple(range(n))


def _last(ndim: int, n: int) -> tuple:
  return tuple(range(ndim - n, ndim))


def _tensordot_fwd(x, kernel, num_in: int):
  return _tensordot(x, kernel, num_in), (x, kernel)


def _tensordot_bwd(num_in: int, residuals, dy):
  """The gradients autodiff would give, but the kernel's is taken from x with its token
  axes moved last and materialised on CPU: XLA's CPU backend sends that product to its
  fast matmul library only in this layout, and otherwise to one about 2x slower."""
  x, kernel = residuals
  num_tokens, num_out = x.ndim - num_in, kernel.ndim - num_in
  dx = jnp.tensordot(dy, kernel, axes=(_last(dy.ndim, num_out), _last(kernel.ndim, num_out)))
  tokens_last = _last(x.ndim, num_in) + _first(num_tokens)
  x_T = jax.lax.platform_dependent(
      x, cpu=lambda x: jax.lax.optimization_barrier(x.transpose(tokens_last)),
      default=lambda x: x.transpose(tokens_last))
  dkernel = jnp.tensordot(x_T, dy, axes=(_last(x.ndim, num_tokens), _first(num_tokens)))
  return dx, dkernel


_tensordot.defvjp(_tensordot_fwd, _tensordot_bwd)


class Dense(nn.Module):
  """y = x . kernel (+ bias), contracting the last `num_in` axes of x.

  Flax's DenseGeneral initialises a flattened 2-D kernel, which loses the logical names
  of a (D, 3, H, K) kernel; this creates the kernel in its real shape. A layer named in
  `config.lora_targets` adds a low-rank adapter (alpha / r) x . A . B, with B starting at
  zero so that the adapted model starts equal to the base one.
  """
  shape: tuple
  names: tuple
  num_in: int
  stddev: float  # 0 starts the kernel at zero
  config: GPTConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    kernel = self.param("kernel", _normal(self.stddev, self.names), self.shape)
    y = _contract(x, kernel, self.num_in, c.dtype)
    if c.lora_rank and self.name in c.lora_targets:
      y = y + self._adapter(x)
    if c.bias:
      out_shape, out_names = self.shape[self.num_in:], self.names[self.num_in:]
      bias = self.param("bias", _zeros(out_names), out_shape).astype(c.dtype)
      y = y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)
    return y

  def _adapter(self, x):
    c, r = self.config, self.config.lora_rank
    in_shape, out_shape = self.shape[:self.num_in], self.shape[self.num_in:]
    a = self.param("lora_a", _normal(1 / math.sqrt(math.prod(in_shape)),
                                     self.names[:self.num_in] + ("lora",)), in_shape + (r,))
    b = self.param("lora_b", _zeros(("lora",) + self.names[self.num_in:]), (r,) + out_shape)
    return (c.lora_alpha / r) * _contract(_contract(x, a, self.num_in, c.dtype), b, 1, c.dtype)


class CausalSelfAttention(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_NxD, batch: int, deterministic: bool, decode: bool, positions_T):
    c = self.config
    qkv_Nx3xHxK = Dense(shape=(c.n_embd, 3, c.n_head, c.head_size),
                        names=("embed", "qkv", "heads", "head_dim"), num_in=1,
                        stddev=INIT_STD, config=c, name="c_attn")(x_NxD)
    qkv_BxTx3xHxK = qkv_Nx3xHxK.reshape(batch, -1, 3, c.n_head, c.head_size)
    index = None
    if decode:  # the cache's index is the position of this call's first token
      index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
      positions_T = index.value + jnp.arange(qkv_BxTx3xHxK.shape[1])
    qkv_BxTx3xHxK = self._normed_and_rotated(qkv_BxTx3xHxK, positions_T)
    implementation = attention_implementation(c, deterministic)
    if decode:
      y_BxTxHxK = self._cached_attention(*(qkv_BxTx3xHxK[:, :, i] for i in range(3)), index)
    elif implementation == "jaxgpt":
      y_BxTxHxK = self._attention(qkv_BxTx3xHxK, deterministic)
    else:  # no dropout on the attention probabilities (config.validate requires dropout 0)
      y_BxTxHxK = jax.nn.dot_product_attention(
          *(qkv_BxTx3xHxK[:, :, i] for i in range(3)), is_causal=True,
          implementation=implementation)
    names = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
    y_NxHxK = _constrain(y_BxTxHxK, names).reshape(-1, c.n_head, c.head_size)
    y_NxD = Dense(shape=(c.n_head, c.head_size, c.n_embd), names=("heads", "head_dim", "embed"),
                  num_in=2, stddev=c.proj_std, config=c, name="c_proj")(y_NxHxK)
    return nn.Dropout(c.dropout)(y_NxD, deterministic=deterministic)

  def _normed_and_rotated(self, qkv_BxTx3xHxK, positions_T):
    """q and k with c.qk_norm's RMSNorm per head (a learned scale per head feature, shared
    by the heads) and then c.position's rotary embeddings; v as it is. Both work on the
    whole q, k, v array (v's factors are 1), which XLA fuses into one or two passes."""
    c = self.config
    if c.qk_norm:
      qkv_BxTx3xHxK = _qk_normed(qkv_BxTx3xHxK, *(
          _Scale(c.head_size, name=name)() for name in ("q_norm", "k_norm"))).astype(c.dtype)
    if c.position == "rope":
      qkv_BxTx3xHxK = _rotated(qkv_BxTx3xHxK, positions_T)
    return qkv_BxTx3xHxK

  def _attention(self, qkv_BxTx3xHxK, deterministic):
    """Causal attention over the whole sequence, heads-major so that every dot is a plain
    batched matmul; one transpose in, one out (splitting the heads-major array keeps its
    backward a concatenation rather than three padded copies)."""
    c = self.config
    t = qkv_BxTx3xHxK.shape[1]
    names = ("activation_batch", "activation_heads", "activation_length", "activation_head_dim")
    qkv_3xBxHxTxK = qkv_BxTx3xHxK.transpose(2, 0, 3, 1, 4)
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (
        _constrain(x[0], names) for x in jax.lax.split(qkv_3xBxHxTxK, (1, 1, 1)))
    q_BxHxTxK = q_BxHxTxK * (1.0 / math.sqrt(c.head_size))
    att_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                             preferred_element_type=jnp.float32)
    mask_1x1xTxS = jnp.where(jnp.tril(jnp.ones((1, 1, t, t), dtype=bool)), 0.0, -jnp.inf)
    probs_BxHxTxS = jax.nn.softmax(att_BxHxTxS + mask_1x1xTxS, axis=-1)
    probs_BxHxTxS = nn.Dropout(c.dropout)(probs_BxHxTxS, deterministic=deterministic)
    y_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK)
    return y_BxHxTxK.transpose(0, 2, 1, 3)

  def _weighted_values(self, q_NxTxK, k_NxKxS, v_NxSxK, mask_TxS):
    """Attention over the cache as two plain batched matmuls, neither needing a transpose;
    N is batch x heads."""
    scale = 1.0 / math.sqrt(self.config.head_size)
    att_NxTxS = jnp.einsum("ntk,nks->nts", q_NxTxK, k_NxKxS,
                           preferred_element_type=jnp.float32) * scale
    att_NxTxS = jnp.where(mask_TxS, att_NxTxS, jnp.finfo(jnp.float32).min)
    probs_NxTxS = jax.nn.softmax(att_NxTxS, axis=-1)
    return jnp.einsum("nts,nsk->ntk", probs_NxTxS.astype(v_NxSxK.dtype), v_NxSxK)

  def _cached_attention(self, q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, index):
    """Appends this call's keys and values to the cache at `index` (a cache variable: the
    number of positions filled) and attends over all of it.

    Keys are cached as (B*H, K, S) and values as (B*H, S, K), the layouts the two matmuls
    read; one batch axis of batch x heads keeps a batch of one from giving the matmuls
    operands of another shape than the cache's, which would copy the cache every step.
    """
    c = self.config
    b, t = q_BxTxHxK.shape[:2]
    n = b * c.n_head
    cached_k = self.variable("cache", "k", jnp.zeros, (n, c.head_size, c.block_size),
                             k_BxTxHxK.dtype)
    cached_v = self.variable("cache", "v", jnp.zeros, (n, c.block_size, c.head_size),
                             v_BxTxHxK.dtype)
    start = index.value
    k_NxKxT = k_BxTxHxK.transpose(0, 2, 3, 1).reshape(n, c.head_size, t)
    v_NxTxK = v_BxTxHxK.transpose(0, 2, 1, 3).reshape(n, t, c.head_size)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_NxKxT, (0, 0, start))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_NxTxK, (0, start, 0))
    index.value = start + t
    mask_TxS = jnp.arange(c.block_size)[None, :] <= (start + jnp.arange(t))[:, None]
    q_NxTxK = q_BxTxHxK.transpose(0, 2, 1, 3).reshape(n, t, c.head_size)
    y_NxTxK = self._weighted_values(q_NxTxK, cached_k.value, cached_v.value, mask_TxS)
    return y_NxTxK.reshape(b, c.n_head, t, c.head_size).transpose(0, 2, 1, 3)


class MLP(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_NxD, deterministic: bool):
    c = self.config
    f = c.mlp_width
    if c.mlp == "swiglu":  # c_fc computes the gate and the value side by side: (D, 2, F)
      gv_Nx2xF = Dense(shape=(c.n_embd, 2, f), names=("embed", "gate", "mlp"), num_in=1,
                       stddev=INIT_STD, config=c, name="c_fc")(x_NxD)
      h_NxF = nn.silu(gv_Nx2xF[:, 0]) * gv_Nx2xF[:, 1]
    else:
      h_NxF = Dense(shape=(c.n_embd, f), names=("embed", "mlp"), num_in=1,
                    stddev=INIT_STD, config=c, name="c_fc")(x_NxD)
      h_NxF = jnp.square(nn.relu(h_NxF)) if c.mlp == "relu2" else nn.gelu(h_NxF, approximate=True)
    h_NxF = _constrain(h_NxF, ("activation_tokens", "activation_mlp"))
    y_NxD = Dense(shape=(f, c.n_embd), names=("mlp", "embed"), num_in=1,
                  stddev=c.proj_std, config=c, name="c_proj")(h_NxF)
    return nn.Dropout(c.dropout)(y_NxD, deterministic=deterministic)


class Block(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_NxD, batch: int, deterministic: bool, decode: bool, positions_T):
    c = self.config
    x_NxD = x_NxD + CausalSelfAttention(c, name="attn")(
        _norm(c, "ln_1")(x_NxD), batch, deterministic, decode, positions_T)
    x_NxD = x_NxD + MLP(c, name="mlp")(
        _norm(c, "ln_2")(x_NxD), deterministic)
    x_NxD = _constrain(x_NxD, ("activation_tokens", "activation_embed"))
    return (x_NxD, None) if c.scan_layers else x_NxD  # nn.scan's (carry, output)


# What each block keeps for the backward pass besides its input; the rest is recomputed.
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.save_only_these_names("dot")}


def _remat(block_cls, c: GPTConfig, scanned: bool = False):
  """`block_cls` as `c.remat` has it: "none" keeps every activation for the backward pass;
  "full" keeps only each block's input and recomputes the rest (least memory, about a third
  more compute); "dots" also keeps the weight matmuls' outputs, recomputing the element-wise
  work and attention's T x T scores.

  Unrolled blocks rely on the optimization barriers of prevent_cse=True to keep the
  recomputation in the backward pass; XLA's GPU compiler keeps them until after scheduling,
  its CPU compiler drops them before, so on CPU only scanned blocks save memory (see
  BENCHMARKS.md). Inside nn.scan the loop keeps the recomputation there, and
  prevent_cse=False (flax's advice) spares the barriers."""
  if c.remat == "none":
    return block_cls
  # Argument 0 is the module: batch, deterministic and decode are Python values (positions_T,
  # argument 5, is an array).
  return nn.remat(block_cls, policy=REMAT_POLICIES[c.remat], prevent_cse=not scanned,
                  static_argnums=(2, 3, 4))


class GPT(nn.Module):
  """tokens (B, T) -> float32 logits (B, T, V), V the padded vocabulary size.

  With `decode=True` the attention layers keep a key/value cache (collection "cache")
  of `block_size` positions, and `positions_T` gives each new token's position in the
  learned table (rotary embeddings take it from the cache's index, which equals it).
  """
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens_BxT, deterministic: bool = True, decode: bool = False,
               positions_T=None):
    c = self.config
    b, t = tokens_BxT.shape
    wte_VxD = self.param("wte", _normal(INIT_STD, ("vocab", "embed")),
                         (c.padded_vocab_size, c.n_embd))
    if positions_T is None:
      positions_T = jnp.arange(t)
    # Gather the (small) table before the lookup rather than looking up a sharded table.
    table_VxD = _constrain(wte_VxD, (None, None))
    x_BxTxD = jnp.take(table_VxD, tokens_BxT.reshape(-1), axis=0).reshape(b, t, -1)
    if c.position == "learned":
      wpe_TxD = self.param("wpe", _normal(INIT_STD, ("position", "embed")),
                           (c.block_size, c.n_embd))
      x_BxTxD = x_BxTxD + jnp.take(wpe_TxD, positions_T, axis=0)[None]
    x_NxD = x_BxTxD.reshape(b * t, -1)
    x_NxD = nn.Dropout(c.dropout)(x_NxD.astype(c.dtype), deterministic=deterministic)
    x_NxD = _constrain(x_NxD, ("activation_tokens", "activation_embed"))
    block = _remat(Block, c, scanned=c.scan_layers)
    if c.scan_layers:
      x_NxD, _ = _scanned(block, c.n_layer)(c, name=SCANNED)(x_NxD, b, deterministic, decode,
                                                               positions_T)
    else:
      for i in range(c.n_layer):
        x_NxD = block(c, name=unrolled_name(i))(x_NxD, b, deterministic, decode, positions_T)
    x_NxD = _norm(c, "ln_f")(x_NxD)
    if c.tie_embeddings:
      head_DxV = wte_VxD.astype(c.dtype).T
    else:
      head_DxV = self.param("lm_head", _normal(INIT_STD, ("embed", "vocab")),
                            (c.n_embd, c.padded_vocab_size)).astype(c.dtype)
    logits_NxV = jnp.dot(x_NxD, head_DxV, preferred_element_type=jnp.float32)
    # Padded ids get no probability: padding changes neither training nor sampling.
    logits_NxV = jnp.where(jnp.arange(c.padded_vocab_size) < c.vocab_size, logits_NxV, -1e9)
    logits_NxV = _constrain(logits_NxV, ("activation_tokens", "activation_vocab"))
    return logits_NxV.reshape(b, t, c.padded_vocab_size)


def _scanned(block, num_layers: int):
  """`block` run `num_layers` times as one loop, its parameters and cache stacked along a
  leading "layers" axis; batch, deterministic and decode stay Python values, and every
  layer reads the same positions (all broadcast)."""
  return nn.scan(block, variable_axes={"params": 0, "cache": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * 4, length=num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})


def unrolled_name(i: int) -> str:
  return f"h_{i}"


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

"""The GPT: nanoGPT's GPT-2 in Flax Linen, with today's recipe as options.

GPTConfig is the model's options and the `model` section of a run's config at once: every
field below with a `meaning` is the config key model.NAME, with the field's default (see
jaxgpt/config.py, and docs/config.md for the list). Adding an option is adding a field here
and the code that uses it.

Attention (projections, QK-norm, rotary positions, the implementations and the key/value
cache) is in jaxgpt/attention.py; the Dense layer and its CPU-friendly gradient in
jaxgpt/dense.py. Parameters are float32 and carry logical axis names; activations carry
activation axis names of their own. `jaxgpt/sharding.py` maps both to the device mesh.

The residual stream is kept 2-D, (B*T, D): every weight matmul is then a plain 2-D dot,
which XLA's CPU backend runs much faster (backward especially) than batched 3-D dots.

Shape suffixes: B batch, T time (the positions computed now), S positions attended to
(the cache's length when decoding), N tokens of the flattened batch B*T (in the cached
attention: batch x heads), D model width, H heads, K head size, F MLP width, V vocabulary;
K2 is K/2, and a digit is an axis of that length (SwiGLU's gate and value: Nx2xF).
"""

import dataclasses
import json
import math
import typing
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt import quantize
from jaxgpt.attention import CausalSelfAttention
from jaxgpt.dense import Dense, normal, ones, zeros

INIT_STD = 0.02  # GPT-2's initialisation of every weight matrix and embedding
SWIGLU_MULTIPLE = 64  # the SwiGLU MLP's width is 8/3 D rounded up to a multiple of this
SCANNED = "h"  # the blocks with model.scan_layers (stacked by layer); else h_0 .. h_{L-1}
HIDDEN_LAYERS = ("c_attn", "c_proj", "c_fc")  # the Dense layers inside the blocks


def kernel_inputs(names: tuple) -> int:
  """How many leading axes of the Dense kernel at `names` (its module path) are its inputs:
  attention's output projection contracts heads and head size, (H, K, D); any other its first."""
  return 2 if tuple(names[-3:-1]) == ("attn", "c_proj") else 1

# What an option is to a run (its field's "kind"). A resumed run keeps all but TRAINING's.
SHAPE = "shape"  # sizes and constants, which a pretrained model's config.json sets
DESIGN = "design"  # the architecture: GPT-2's by default, which GPT-2's weights need
INIT = "init"  # how the weights start: acts once, and the run's config.json records it
TRAINING = "training"  # how the model trains and runs; a run may change it when it resumes


def option(default, meaning: str, kind: str = DESIGN, legacy: dict | None = None):
  """A GPTConfig field that is also the config key model.NAME; `legacy` maps values that
  older runs' config.json files hold to today's."""
  return dataclasses.field(default=default,
                           metadata={"meaning": meaning, "kind": kind, "legacy": legacy or {}})


def head_size_of(n_embd: int, n_head: int, head_dim: int) -> int:
  """The size of each head: head_dim, or n_embd / n_head where it is 0."""
  return head_dim or n_embd // n_head


def kv_heads_of(n_head: int, n_kv_head: int) -> int:
  """The key/value heads: n_kv_head, or n_head where it is 0."""
  return n_kv_head or n_head


def mlp_features_of(n_embd: int, mlp: str, mlp_width: int) -> int:
  """The MLP's features: mlp_width, or where it is 0 4 n_embd; SwiGLU's three matrices keep
  about the 8 n_embd^2 weights of two with 8/3 n_embd, rounded up to a multiple of
  SWIGLU_MULTIPLE."""
  if mlp_width:
    return mlp_width
  if mlp != "swiglu":
    return 4 * n_embd
  return -(-8 * n_embd // (3 * SWIGLU_MULTIPLE)) * SWIGLU_MULTIPLE


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """The model's options. The run fills in vocab_size (its tokenizer's), dtype (`precision`),
  matmul_dtype (training's `matmul_precision`) and the LoRA fields (the `lora` section),
  sampling `quantize`; every other field is a config key of `model`."""
  vocab_size: int  # the tokenizer's; the embedding table is padded beyond it
  dtype: str = "float32"  # compute dtype; parameters are always float32
  matmul_dtype: str = ""  # the Dense layers' products; "" is XLA's default for dtype
  lora_rank: int = 0  # > 0: low-rank adapters on the Dense layers named in lora_targets
  lora_alpha: float = 16.0
  lora_targets: tuple = ()  # some of HIDDEN_LAYERS
  quantize: str = ""  # "int8": the matrices are int8 with scales, for sampling (quantize.py)

  n_layer: int = option(6, "Transformer blocks.", SHAPE)
  n_head: int = option(6, "Attention heads per block.", SHAPE)
  n_kv_head: int = option(
      0, "Key/value heads (grouped-query attention): each serves n_head / n_kv_head query "
      "heads, and the KV cache holds only these; 0 is n_head.", SHAPE)
  n_embd: int = option(384, "Width of the residual stream.", SHAPE)
  head_dim: int = option(0, "The size of each head; 0 is n_embd / n_head.", SHAPE)
  block_size: int = option(256, "Context length, in tokens.", SHAPE)
  bias: bool = option(False, "Biases in the linear layers and LayerNorms.", SHAPE)
  vocab_multiple: int = option(
      64, "The embedding table is padded to a multiple of this (padded ids are never "
      "sampled).", SHAPE)
  norm_eps: float = option(1e-5, "The epsilon of every LayerNorm or RMSNorm (QK-norm's too).",
                           SHAPE)
  rope_base: float = option(
      10000.0, "Rotary positions' base (rope_theta): the longest wavelength is 2 pi times "
      "this.", SHAPE)
  rope_scaling: str = option(
      "", "Rotary positions' scaling as a Hugging Face config.json's rope_scaling has it, in "
      'JSON: Llama 3\'s, {"rope_type": "llama3", "factor": ..., "low_freq_factor": ..., '
      '"high_freq_factor": ..., "original_max_position_embeddings": ...}; "" is none.', SHAPE)
  mlp_width: int = option(
      0, "The MLP's hidden width (intermediate_size); 0 derives it: 4 x n_embd, or 8/3 x "
      f"n_embd for swiglu, rounded up to a multiple of {SWIGLU_MULTIPLE}.", SHAPE)
  position: Literal["learned", "rope"] = option(
      "learned", "Positions: a learned table, or rotary embeddings on q and k.")
  norm: Literal["layernorm", "rmsnorm"] = option("layernorm", "The normalisation layers.")
  qk_norm: bool = option(False, "RMSNorm of q and k per head before their dot product.")
  mlp: Literal["gelu", "relu2", "swiglu"] = option(
      "gelu", "The MLP's activation (relu2 is ReLU squared; swiglu's width is 8/3 D, rounded "
      f"up to a multiple of {SWIGLU_MULTIPLE}).")
  tie_embeddings: bool = option(
      True, "The output layer reads the token embedding table; False gives it its own kernel.")
  qkv_bias: bool = option(False, "Biases on the q, k and v projections only (Qwen2's).")
  dropout: float = option(0.2, "Dropout rate, in [0, 1).", TRAINING)
  zero_init_proj: bool = option(
      False, "The projections into the residual stream start at zero.", INIT)
  attention: Literal["auto", "jaxgpt", "cudnn", "xla", "splash"] = option(
      "auto", "auto is cuDNN flash attention on NVIDIA GPUs and the Pallas splash kernel on "
      "TPUs where they apply, jaxgpt's own elsewhere (over 256 positions without attention "
      "dropout, a block of queries at a time, never holding the T x T scores); cudnn, xla and "
      "splash have no attention dropout (splash needs the length a multiple of 128; jaxgpt's "
      "runs other lengths).",
      TRAINING)
  remat: Literal["none", "full", "dots"] = option(
      "none", "What the backward pass recomputes: full keeps only each block's input (least "
      "memory), dots also keeps the weight matmuls' outputs.", TRAINING,
      legacy={True: "full", False: "none"})
  scan_layers: bool = option(
      False, "Run the blocks as one loop over parameters stacked by layer (one block to "
      "compile); checkpoints convert either way.", TRAINING)

  def __post_init__(self):
    problem = next(_problems(self), None)
    if problem:
      raise ValueError(problem)

  @property
  def head_size(self) -> int:
    return head_size_of(self.n_embd, self.n_head, self.head_dim)

  @property
  def kv_heads(self) -> int:
    return kv_heads_of(self.n_head, self.n_kv_head)

  @property
  def group_size(self) -> int:
    """G: the query heads that share one key/value head (1 without grouped-query attention)."""
    return self.n_head // self.kv_heads

  @property
  def llama3_rope_scaling(self) -> dict | None:
    """rope_scaling's fields, or None for none."""
    return json.loads(self.rope_scaling) if self.rope_scaling else None

  @property
  def init_std(self) -> float:
    return INIT_STD

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
  def mlp_features(self) -> int:
    """F (mlp_features_of)."""
    return mlp_features_of(self.n_embd, self.mlp, self.mlp_width)

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


def options() -> tuple[dataclasses.Field, ...]:
  """GPTConfig's fields that are config keys of `model`, in their order."""
  return tuple(f for f in dataclasses.fields(GPTConfig) if "meaning" in f.metadata)


def choices(field: dataclasses.Field) -> tuple:
  """The values an option takes: a Literal's, or () for any of its type."""
  hint = typing.get_type_hints(GPTConfig)[field.name]
  return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _problems(c: GPTConfig):
  """What makes the options unusable, each naming the key and the fix."""
  hints = typing.get_type_hints(GPTConfig)
  for field in options():
    value, key = getattr(c, field.name), f"model.{field.name}"
    if choices(field) and value not in choices(field):
      yield (f"{key}={value!r} is not one of {', '.join(choices(field))}: pass "
             f"--config.{key}=<one of those>")
    if hints[field.name] is bool and not isinstance(value, bool):
      yield f"{key}={value!r} is not True or False: pass --config.{key}=True or False"
    if hints[field.name] in (int, float) and not (isinstance(value, (int, float))
                                                  and math.isfinite(value)):
      yield f"{key}={value!r} is not a finite number: pass --config.{key}=<a number>"
  for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_multiple", "norm_eps",
               "rope_base"):
    if not getattr(c, name) > 0:
      yield (f"model.{name} must be positive, got {getattr(c, name)}: pass "
             f"--config.model.{name}=<a positive number>")
  if c.mlp_width < 0:
    yield (f"model.mlp_width={c.mlp_width} is negative: pass a width, or 0 to derive it from "
           "model.n_embd")
  if c.block_size == 1:
    yield ("model.block_size=1 leaves no token to predict from: pass "
           "--config.model.block_size=2 or more")
  for name in ("n_kv_head", "head_dim"):
    if getattr(c, name) < 0:
      yield (f"model.{name}={getattr(c, name)} is negative: pass a positive number, or 0 for "
             "the default")
  if c.n_head > 0 and not c.head_dim and c.n_embd % c.n_head:
    yield (f"model.n_embd={c.n_embd} is not divisible by model.n_head={c.n_head}: choose "
           "n_embd as a multiple of n_head, or set model.head_dim")
  if c.n_head > 0 and c.n_kv_head > 0 and c.n_head % c.n_kv_head:
    yield (f"model.n_head={c.n_head} is not divisible by model.n_kv_head={c.n_kv_head}: "
           "each key/value head serves the same number of query heads")
  yield from _rope_scaling_problems(c.rope_scaling)
  if not 0 <= c.dropout < 1:
    yield (f"model.dropout must be in [0, 1), got {c.dropout}: pass e.g. "
           "--config.model.dropout=0.1")
  if c.attention not in ("auto", "jaxgpt") and c.dropout != 0:
    yield (f"model.attention={c.attention} has no attention dropout but model.dropout="
           f"{c.dropout}: pass --config.model.attention=auto or --config.model.dropout=0")
  if c.position == "rope" and c.n_head > 0 and c.head_size > 0 and c.head_size % 2:
    yield (f"model.position=rope turns pairs of head features, but the head size "
           f"{c.head_size} (model.head_dim, or else model.n_embd / model.n_head) is odd: "
           "choose those that make it even")
  if c.vocab_size < 1:
    yield f"vocab_size must be positive, got {c.vocab_size}"


LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")


def _rope_scaling_problems(text: str):
  if not text:
    return
  fix = ('pass "" (none) or Llama 3\'s JSON: {"rope_type": "llama3", '
         + ", ".join(f'"{k}": ...' for k in LLAMA3_ROPE_KEYS) + "}")
  try:
    scaling = json.loads(text)
  except ValueError:
    scaling = None
  if not isinstance(scaling, dict):
    yield f"model.rope_scaling={text!r} is not a JSON object: {fix}"
  elif scaling.get("rope_type", scaling.get("type")) != "llama3":
    yield (f"model.rope_scaling has rope_type {scaling.get('rope_type', scaling.get('type'))!r}"
           f", which jaxgpt does not implement (only Llama 3's): {fix}")
  elif not all(isinstance(scaling.get(k), (int, float)) and scaling[k] > 0
               for k in LLAMA3_ROPE_KEYS):
    yield f"model.rope_scaling={text!r} lacks a positive number for one of its keys: {fix}"


class GPT(nn.Module):
  """tokens (B, T) -> float32 logits (B, T, V), V the padded vocabulary size.

  With `decode=True` the attention layers keep a key/value cache (collection "cache")
  of `block_size` positions, and `positions_T` gives each new token's position in the
  learned table (rotary embeddings take it from the cache's index, which equals it).
  `logits_at_S` (indices into the batch's B*T tokens, row after row) computes the logits
  (1, S, V) of only those tokens: the output layer is then S/(B*T) of its cost. Several
  sequences packed in each row take `positions_T` as (B, T), each row's own, and
  `attention_mask_BxTxS` (see attention.causal_attention).
  """
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens_BxT, deterministic: bool = True, decode: bool = False,
               positions_T=None, logits_at_S=None, attention_mask_BxTxS=None,
               hidden_and_head: bool = False):
    """The logits; with `hidden_and_head`, what they are made of instead: the final hidden
    states (B, T, D) and the output layer (D, V), for a loss that computes the logits a chunk
    at a time (jaxgpt/cross_entropy.py)."""
    c = self.config
    b, t = tokens_BxT.shape
    if positions_T is None:
      positions_T = jnp.arange(t)
    x_NxD, wte_VxD = self._token_embeddings(tokens_BxT.reshape(-1))
    x_BxTxD = x_NxD.reshape(b, t, -1)
    if c.position == "learned":
      wpe_TxD = self.param("wpe", normal(INIT_STD, ("position", "embed")),
                           (c.block_size, c.n_embd))
      wpe_at = jnp.take(wpe_TxD, positions_T, axis=0)
      x_BxTxD = x_BxTxD + (wpe_at if positions_T.ndim == 2 else wpe_at[None])
    x_NxD = x_BxTxD.reshape(b * t, -1)
    x_NxD = nn.Dropout(c.dropout)(x_NxD.astype(c.dtype), deterministic=deterministic)
    x_NxD = _constrain(x_NxD, ("activation_tokens", "activation_embed"))
    block = _remat(Block, c, scanned=c.scan_layers)
    if c.scan_layers:
      x_NxD, _ = _scanned(block, c.n_layer)(c, name=SCANNED)(
          x_NxD, b, deterministic, decode, positions_T, attention_mask_BxTxS)
    else:
      for i in range(c.n_layer):
        x_NxD = block(c, name=unrolled_name(i))(x_NxD, b, deterministic, decode, positions_T,
                                                attention_mask_BxTxS)
    x_NxD = _norm(c, "ln_f")(x_NxD)
    if hidden_and_head:
      return x_NxD.reshape(b, t, -1), self._float_head(wte_VxD)
    if logits_at_S is not None:
      x_NxD = jnp.take(x_NxD, logits_at_S, axis=0)
      b, t = 1, logits_at_S.shape[0]
    if c.quantize:
      logits_NxV = self._int8_head(x_NxD, wte_VxD)
    else:
      logits_NxV = jnp.dot(x_NxD, self._float_head(wte_VxD), preferred_element_type=jnp.float32)
    return output_logits(logits_NxV, c).reshape(b, t, c.padded_vocab_size)

  def _token_embeddings(self, tokens_N):
    """The tokens' rows (N, D) of the embedding table, and the table (V, D): float32, or
    int8 values and a scale per row (quantize.py)."""
    c = self.config
    if c.quantize:
      int8_VxD = self._int8_table("wte")
      return quantize.looked_up(*int8_VxD, tokens_N), int8_VxD
    wte_VxD = self.param("wte", normal(INIT_STD, ("vocab", "embed")),
                         (c.padded_vocab_size, c.n_embd))
    # Gather the (small) table before the lookup rather than looking up a sharded table.
    return jnp.take(_constrain(wte_VxD, (None, None)), tokens_N, axis=0), wte_VxD

  def _int8_head(self, x_NxD, wte_VxD):
    """The output layer's products (N, V) with int8 weights (V, D), the token embeddings' or
    its own, and a scale per token."""
    head_VxD = wte_VxD if self.config.tie_embeddings else self._int8_table("lm_head")
    return quantize.int8_matmul(x_NxD, *head_VxD, num_in=1)

  def _int8_table(self, name: str):
    """A (V, D) int8 parameter `name` and its scale per token (quantize.py)."""
    shape, names = (self.config.padded_vocab_size, self.config.n_embd), ("vocab", "embed")
    return (self.param(name, zeros(names), shape, jnp.int8),
            self.param(name + quantize.SCALE, ones(names[:1]), shape[:1]))

  def _float_head(self, wte_VxD):
    """The output layer (D, V): the token embeddings' transpose, or a kernel of its own."""
    c = self.config
    if c.tie_embeddings:
      return wte_VxD.astype(c.dtype).T
    return self.param("lm_head", normal(INIT_STD, ("embed", "vocab")),
                      (c.n_embd, c.padded_vocab_size)).astype(c.dtype)


def output_logits(logits_NxV, c: GPTConfig):
  """The output layer's float32 products (N, V) as logits: padded ids get no probability, so
  padding changes neither training nor sampling."""
  logits_NxV = jnp.where(jnp.arange(c.padded_vocab_size) < c.vocab_size, logits_NxV, -1e9)
  return _constrain(logits_NxV, ("activation_tokens", "activation_vocab"))


class Block(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_NxD, batch: int, deterministic: bool, decode: bool, positions_T,
               mask_BxTxS):
    c = self.config
    x_NxD = x_NxD + CausalSelfAttention(c, name="attn")(
        _norm(c, "ln_1")(x_NxD), batch, deterministic, decode, positions_T, mask_BxTxS)
    x_NxD = x_NxD + MLP(c, name="mlp")(
        _norm(c, "ln_2")(x_NxD), deterministic)
    x_NxD = _constrain(x_NxD, ("activation_tokens", "activation_embed"))
    return (x_NxD, None) if c.scan_layers else x_NxD  # nn.scan's (carry, output)


def _norm(c: GPTConfig, name: str) -> nn.Module:
  """The residual stream's normalisation: c.norm, LayerNorm or RMSNorm (no bias)."""
  if c.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype, scale_init=ones(("embed",)), name=name)
  return nn.LayerNorm(epsilon=c.norm_eps, use_bias=c.bias, dtype=c.dtype,
                      scale_init=ones(("embed",)), bias_init=zeros(("embed",)), name=name)


class MLP(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_NxD, deterministic: bool):
    c = self.config
    f = c.mlp_features
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
  # Argument 0 is the module: batch, deterministic and decode are Python values (positions_T
  # and the mask, arguments 5 and 6, are arrays or None).
  return nn.remat(block_cls, policy=REMAT_POLICIES[c.remat], prevent_cse=not scanned,
                  static_argnums=(2, 3, 4))


def _scanned(block, num_layers: int):
  """`block` run `num_layers` times as one loop, its parameters and cache stacked along a
  leading "layers" axis; batch, deterministic and decode stay Python values, and every
  layer reads the same positions and mask (all broadcast)."""
  return nn.scan(block, variable_axes={"params": 0, "cache": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * 5, length=num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})


def unrolled_name(i: int) -> str:
  return f"h_{i}"


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def _constrain(x, names):
  return nn.with_logical_constraint(x, names)

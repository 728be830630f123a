"""Int8 weights for sampling: each matrix stored as int8 with a float32 scale per output
channel, multiplied by int8 activations (a scale per token, taken as each matmul runs) into
int32 sums, as ONNX Runtime's dynamic quantisation and llama.cpp's 8-bit formats compute.

A quarter of float32's bytes per weight, and on CPU an integer matmul at least as fast as the
float one: a decode step, which reads every weight once per token, gets that much faster.
Only the matmuls change; embeddings' rows are scaled back to float32 when looked up, and
norms, biases, attention and the softmax stay in the compute dtype (logits in float32).

`quantized(params, scanned)` turns a model's float parameters into this form (GPTConfig's
`quantize="int8"` reads it); adapters must be merged first (jaxgpt.lora.merge).
"""

import math

import flax.traverse_util
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

INT8_MAX = 127
SCALE = "_scale"  # the suffix of a quantized matrix's scales: kernel_scale, wte_scale, ...


def int8_weights(w, num_in: int):
  """(int8 values, float32 scales): w ~ values * scales, the values a matrix (output
  channels, inputs) and the scales one per output channel (w's axes after the first
  `num_in`, in their shape), each its channel's largest magnitude / 127."""
  scale = jnp.max(jnp.abs(w), axis=tuple(range(num_in))) / INT8_MAX
  scale = jnp.where(scale > 0, scale, 1.0).astype(jnp.float32)
  values = jnp.round(w / scale[(None,) * num_in]).astype(jnp.int8)
  return values.reshape(math.prod(w.shape[:num_in]), -1).T, scale


def output_order(num_out: int) -> tuple:
  """The order in which a quantized matrix keeps a kernel's output axes: of several (c_attn's
  (G + 2, J, K), a SwiGLU c_fc's (2, F)), the second, which tensor parallelism splits (heads,
  MLP features), first, so that each device's share of the matrix is a contiguous block of
  rows (jaxgpt/generate.py splits the weights of a large model over the CPU devices)."""
  return (1, 0, *range(2, num_out)) if num_out > 1 else tuple(range(num_out))


def int8_kernel(w, num_in: int):
  """int8_weights of a Dense kernel (inputs..., outputs...), its outputs in output_order."""
  order = output_order(w.ndim - num_in)
  return int8_weights(w.transpose(*range(num_in), *(num_in + i for i in order)), num_in)


def int8_matmul(x, values, scale, num_in: int):
  """x . w in float32 for (values, scale) = int8_weights(w, num_in): x's last `num_in` axes
  contracted with the values' inputs, x rounded to int8 with a scale per row, the products
  summed in int32.

  The values are a matrix (outputs, inputs): XLA's CPU backend runs an int8 matmul about
  1.5x faster with its second operand in that layout, and copies it to another layout every
  call unless it is one matrix. A lone row is computed as two: one row goes to a loop about
  ten times slower than its matrix library, which takes two or more."""
  lead = x.shape[:x.ndim - num_in]
  rows_NxI = x.reshape(-1, values.shape[1]).astype(jnp.float32)
  lone = rows_NxI.shape[0] == 1
  if lone:
    rows_NxI = jnp.concatenate([rows_NxI, rows_NxI])
  row_scale_Nx1 = jnp.max(jnp.abs(rows_NxI), axis=1, keepdims=True) / INT8_MAX
  row_scale_Nx1 = jnp.where(row_scale_Nx1 > 0, row_scale_Nx1, 1.0)
  rows_NxI = jnp.round(rows_NxI / row_scale_Nx1).astype(jnp.int8)
  sums_NxO = jax.lax.dot_general(rows_NxI, values, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.int32)
  y_NxO = sums_NxO.astype(jnp.float32) * row_scale_Nx1 * scale.reshape(1, -1)
  return (y_NxO[:1] if lone else y_NxO).reshape(lead + scale.shape)


def int8_matmul_split_inputs(x, values, scale, num_in: int, axis: str):
  """int8_matmul with x's first contracted axis and the values' inputs split over the mesh
  axis `axis` (generation's tensor parallelism: attention's and the MLP's output
  projections). Each device scales its own share of a row and computes its float products;
  one all-reduce adds them (rather than a second one first for a row's largest input)."""
  lead = x.ndim - num_in
  x_spec = PartitionSpec(*([None] * lead), axis, *([None] * (num_in - 1)))

  def local(x, values, scale):
    return jax.lax.psum(int8_matmul(x, values, scale, num_in), axis)

  return jax.shard_map(local, in_specs=(x_spec, PartitionSpec(None, axis), PartitionSpec()),
                       out_specs=PartitionSpec(), axis_names={axis})(x, values, scale)


def looked_up(values_VxD, scale_V, tokens):
  """Rows of an int8 embedding table (values, a scale per row), in float32."""
  return jnp.take(values_VxD, tokens, axis=0) * jnp.take(scale_V, tokens)[..., None]


def quantized(params, scanned: bool):
  """The parameters of the int8 model (GPTConfig.quantize="int8") of the float ones: every
  Dense kernel as an int8 matrix `kernel` (outputs in output_order, inputs; see int8_matmul)
  and `kernel_scale`, and the token embeddings `wte` (V, D) and an untied output layer `lm_head`
  (then (V, D) too) as int8 with a scale per token. Layers stacked by layer (`scanned`) get
  scales per layer."""
  from jaxgpt.model import kernel_inputs  # pylint: disable=g-import-not-at-top  # (a cycle)
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    if path[-1] == "kernel":
      quantize = lambda w, n=kernel_inputs(path): int8_kernel(w, n)
      if scanned:  # every kernel is in a block
        quantize = jax.vmap(quantize)
      out[path], out[path[:-1] + ("kernel" + SCALE,)] = quantize(value)
    elif path in (("wte",), ("lm_head",)):
      out[path], out[(path[0] + SCALE,)] = int8_weights(value.T if path == ("wte",) else value, 1)
    else:
      out[path] = value
  return flax.traverse_util.unflatten_dict(out)


def cast_weights(params, dtype: str):
  """The float parameters in `dtype`, but for int8 matrices' scales (kept float32)."""
  def cast(path, x):
    if x.dtype == jnp.int8 or path[-1].key.endswith(SCALE):
      return x
    return x.astype(dtype)
  return jax.tree_util.tree_map_with_path(cast, params)

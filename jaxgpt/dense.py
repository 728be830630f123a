"""The model's one linear layer, Dense: x . kernel over named axes, with a LoRA adapter where
the config asks, and a backward pass laid out for XLA's CPU backend.

Parameters carry logical axis names (`jaxgpt/sharding.py` maps them to the mesh); the
initialisers here attach them.
"""

import functools
import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxgpt import quantize

if TYPE_CHECKING:
  from jaxgpt.model import GPTConfig


def normal(stddev: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def zeros(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


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
  config: "GPTConfig"
  use_bias: bool | None = None  # None: the config's `bias`

  @nn.compact
  def __call__(self, x):
    c = self.config
    if c.quantize:
      y = self._int8_product(x)
    else:
      kernel = self.param("kernel", normal(self.stddev, self.names), self.shape)
      y = contract(x, kernel, self.num_in, c.dtype, c.matmul_dtype)
    if c.lora_rank and self.name in c.lora_targets:
      y = y + self._adapter(x)
    if c.bias if self.use_bias is None else self.use_bias:
      out_shape, out_names = self.shape[self.num_in:], self.names[self.num_in:]
      bias = self.param("bias", zeros(out_names), out_shape).astype(c.dtype)
      y = y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)
    return y

  def _int8_product(self, x):
    """x . kernel with the kernel an int8 matrix (outputs, inputs), its outputs in
    quantize.output_order, and a scale per output channel (jaxgpt/quantize.py). The matrix's
    axes are named by their major axes, which decide a device's contiguous share."""
    order = quantize.output_order(len(self.shape) - self.num_in)
    out_shape = tuple(self.shape[self.num_in + i] for i in order)
    out_names = tuple(self.names[self.num_in + i] for i in order)
    matrix = (math.prod(out_shape), math.prod(self.shape[:self.num_in]))
    kernel = self.param("kernel", zeros((out_names[0], self.names[0])), matrix, jnp.int8)
    scale = self.param("kernel" + quantize.SCALE, ones(out_names), out_shape)
    split_by = _mesh_axis_splitting(self.names[0])
    if split_by:
      y = quantize.int8_matmul_split_inputs(x, kernel, scale, self.num_in, split_by)
    else:
      y = quantize.int8_matmul(x, kernel, scale, self.num_in)
    y = y.astype(self.config.dtype)
    lead = tuple(range(y.ndim - len(order)))
    return y.transpose(*lead, *(len(lead) + i for i in np.argsort(order)))

  def _adapter(self, x):
    c, r = self.config, self.config.lora_rank
    in_shape, out_shape = self.shape[:self.num_in], self.shape[self.num_in:]
    a = self.param("lora_a", normal(1 / math.sqrt(math.prod(in_shape)),
                                    self.names[:self.num_in] + ("lora",)), in_shape + (r,))
    b = self.param("lora_b", zeros(("lora",) + self.names[self.num_in:]), (r,) + out_shape)
    return (c.lora_alpha / r) * contract(contract(x, a, self.num_in, c.dtype, c.matmul_dtype), b,
                                         1, c.dtype, c.matmul_dtype)


def _mesh_axis_splitting(name: str) -> str | None:
  """The mesh axis of more than one device that a logical axis is split over, by the current
  rules and mesh; None where it is whole."""
  axis = nn.logical_to_mesh_axes((name,))[0]
  mesh = jax.sharding.get_abstract_mesh()
  return axis if axis and not mesh.empty and mesh.shape[axis] > 1 else None


def contract(x, kernel, num_in: int, dtype, product_dtype: str = ""):
  """x . kernel over the last `num_in` axes of x and the first `num_in` of kernel, in `dtype`,
  its products in `product_dtype` ("": XLA's default for `dtype`), named "dot" for
  remat="dots" (the custom VJP hides the dot from JAX's own dots policies)."""
  return checkpoint_name(
      tensordot(x.astype(dtype), kernel.astype(dtype), num_in, product_dtype), "dot")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tensordot(x, kernel, num_in: int, product_dtype: str):
  """x . kernel in x's dtype, its products in product_dtype with float32 sums: bfloat16
  products of float32 operands keep float32 outputs and gradients."""
  return _tensordot_fwd(x, kernel, num_in, product_dtype)[0]


def _dot(a, b, axes, product_dtype: str, out_dtype):
  """jnp.tensordot of a and b in product_dtype, summed in float32, returned in out_dtype.
  XLA's CPU backend sends bfloat16 products with a float32 result to YNNPACK's kernels for
  bfloat16 dot instructions (Intel AMX, AVX512-BF16), and those with a bfloat16 result to a
  loop about 3x slower; elsewhere bfloat16 sums in float32 anyway. float32 asks for full float32 products (TPUs otherwise
  take bfloat16 passes)."""
  precision = jax.lax.Precision.HIGHEST if product_dtype == "float32" else None
  return jnp.tensordot(a, b, axes=axes, precision=precision,
                       preferred_element_type=jnp.float32).astype(out_dtype)


def _first(n: int) -> tuple:
  return tuple(range(n))


def _last(ndim: int, n: int) -> tuple:
  return tuple(range(ndim - n, ndim))


def _tensordot_fwd(x, kernel, num_in: int, product_dtype: str):
  out_dtype = x.dtype
  if product_dtype:
    x, kernel = x.astype(product_dtype), kernel.astype(product_dtype)
  y = _dot(x, kernel, (_last(x.ndim, num_in), _first(num_in)), product_dtype, out_dtype)
  return y, (x, kernel)


def _tensordot_bwd(num_in: int, product_dtype: str, residuals, dy):
  """The gradients autodiff would give, in dy's dtype (the operands'), the kernel's taken
  from x with its token axes last (_tokens_last)."""
  x, kernel = residuals
  dy_p = dy.astype(x.dtype)
  num_tokens, num_out = x.ndim - num_in, kernel.ndim - num_in
  dx = _dot(dy_p, kernel, (_last(dy.ndim, num_out), _last(kernel.ndim, num_out)),
            product_dtype, dy.dtype)
  dkernel = _dot(_tokens_last(x, num_in), dy_p[None],
                 (_last(x.ndim + 1, num_tokens + 1), _first(num_tokens + 1)), product_dtype,
                 dy.dtype)
  return dx, dkernel


def _tokens_last(x, num_in: int):
  """x (tokens..., inputs...) as (inputs..., 1, tokens...), materialised on CPU: XLA's CPU
  backend sends the kernel's gradient to its fast matmul library only in this layout, and
  otherwise to one about 2x slower. The axis of 1 keeps a bfloat16 x in it: without it XLA
  sees the transpose of a 2-D x as a change of layout, which its bfloat16 matmul does not
  take, and computes that product in float32."""
  x_1 = x[None]
  tokens_last = _last(x_1.ndim, num_in) + _first(x_1.ndim - num_in)
  return jax.lax.platform_dependent(
      x_1, cpu=lambda x: jax.lax.optimization_barrier(x.transpose(tokens_last)),
      default=lambda x: x.transpose(tokens_last))


tensordot.defvjp(_tensordot_fwd, _tensordot_bwd)

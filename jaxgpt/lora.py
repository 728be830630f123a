"""Which parameters train, and folding LoRA adapters back into the weights they adapt.

Without LoRA every parameter trains. With `lora.rank > 0` only the adapters (`lora_a`,
`lora_b`) train: the optimizer sees only them, so it keeps state only for them, gradients
are taken only for them, and the frozen weights pass through a step bit for bit.
"""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp

from jaxgpt.model import SCANNED

ADAPTER_NAMES = ("lora_a", "lora_b")


def _is_adapter(path) -> bool:
  return path[-1] in ADAPTER_NAMES


def partition(params, lora_rank: int):
  """(trainable, frozen) halves of a parameter dict; `combine` puts them back together."""
  if not lora_rank:
    return params, {}
  flat = flax.traverse_util.flatten_dict(params)
  trainable = {p: v for p, v in flat.items() if _is_adapter(p)}
  frozen = {p: v for p, v in flat.items() if not _is_adapter(p)}
  return (flax.traverse_util.unflatten_dict(trainable),
          flax.traverse_util.unflatten_dict(frozen))


def combine(trainable, frozen):
  if not frozen:
    return trainable
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(frozen),
                                            **flax.traverse_util.flatten_dict(trainable)})


def merge(params, lora_rank: int, lora_alpha: float):
  """The parameters of the same model without adapters: kernel + (alpha / r) A . B, layer by
  layer in the scanned form (model.scan_layers)."""
  flat = flax.traverse_util.flatten_dict(params)
  merged = {}
  for path, value in flat.items():
    if _is_adapter(path):
      continue
    adapter = path[:-1]
    if path[-1] == "kernel" and adapter + ("lora_a",) in flat:
      a, b = flat[adapter + ("lora_a",)], flat[adapter + ("lora_b",)]
      a_dot_b = functools.partial(jnp.tensordot, axes=1)
      if path[0] == SCANNED:  # one product per layer
        a_dot_b = jax.vmap(a_dot_b)
      value = value + (lora_alpha / lora_rank) * a_dot_b(a, b)
    merged[path] = value
  return flax.traverse_util.unflatten_dict(merged)

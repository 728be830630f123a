"""The blocks' parameters in the two forms of `model.scan_layers`, and conversion between them.

Unrolled (the default): one subtree per block, h_0 .. h_{L-1}. Scanned: one subtree "h" whose
every array has a leading layers axis of length L. The functions work on any tree that holds
such a parameter dict (Adam's moments mirror the parameters), of arrays or of abstract arrays
(ShapeDtypeStructs with shardings): a checkpoint or GPT-2's weights are read in their own form
and converted to the model's.
"""

import itertools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxgpt.model import SCANNED, unrolled_name


def _is_unrolled(tree) -> bool:
  return isinstance(tree, dict) and unrolled_name(0) in tree


def _is_scanned(tree) -> bool:
  return isinstance(tree, dict) and SCANNED in tree


def is_scanned(tree) -> bool:
  """Whether `tree` holds blocks in the scanned form."""
  return any(map(_is_scanned, jax.tree.leaves(tree, is_leaf=_is_scanned)))


def stack_layers(tree):
  """`tree` with every h_0 .. h_{L-1} replaced by one "h" of their arrays stacked."""
  return jax.tree.map(lambda x: _stacked(x) if _is_unrolled(x) else x, tree, is_leaf=_is_unrolled)


def unstack_layers(tree):
  """`tree` with every "h" split along its layers axis into h_0 .. h_{L-1}; an "h" without
  arrays (an optimizer's state of frozen weights: LoRA's under Muon) into as many."""
  lengths = {leaves[0].shape[0] for x in jax.tree.leaves(tree, is_leaf=_is_scanned)
             if _is_scanned(x) and (leaves := jax.tree.leaves(x[SCANNED]))}
  if len(lengths) > 1:
    raise ValueError(f"scanned blocks of {sorted(lengths)} layers in one tree")
  num_layers = lengths.pop() if lengths else 0
  return jax.tree.map(lambda x: _unstacked(x, num_layers) if _is_scanned(x) else x, tree,
                      is_leaf=_is_scanned)


def _stacked(params: dict) -> dict:
  names = list(itertools.takewhile(params.__contains__, map(unrolled_name, itertools.count())))
  rest = {k: v for k, v in params.items() if k not in names}
  return {**rest, SCANNED: jax.tree.map(_stack, *(params[name] for name in names))}


def _unstacked(params: dict, num_layers: int) -> dict:
  rest = {k: v for k, v in params.items() if k != SCANNED}
  return {**rest, **{unrolled_name(i): jax.tree.map(lambda x, i=i: _take(x, i), params[SCANNED])
                     for i in range(num_layers)}}


def _stack(*xs):
  x = xs[0]
  if isinstance(x, jax.ShapeDtypeStruct):  # the layers axis is not split over devices
    return jax.ShapeDtypeStruct((len(xs), *x.shape), x.dtype, sharding=NamedSharding(
        x.sharding.mesh, PartitionSpec(None, *x.sharding.spec)))
  return jnp.stack(xs)


def _take(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=NamedSharding(
        x.sharding.mesh, PartitionSpec(*x.sharding.spec[1:])))
  return x[i]


def in_form(tree, scanned: bool):
  """`tree` with its blocks scanned or unrolled (unchanged if they already are)."""
  return stack_layers(tree) if scanned else unstack_layers(tree)


def converted(tree, abstract):
  """`tree` (arrays, either form) in the form of `abstract` and on its shardings; `abstract`
  may hold more parameters than `tree` (LoRA's adapters, which GPT-2's weights lack)."""
  scanned = is_scanned(abstract)
  if is_scanned(tree) == scanned:
    return tree
  shardings = {jax.tree_util.keystr(path): x.sharding
               for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  convert = lambda tree: in_form(tree, scanned)
  out_shardings = jax.tree_util.tree_map_with_path(
      lambda path, _: shardings[jax.tree_util.keystr(path)], jax.eval_shape(convert, tree))
  return jax.jit(convert, out_shardings=out_shardings)(tree)

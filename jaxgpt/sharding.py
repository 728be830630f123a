"""The device mesh, the logical-axis rules, and moving host batches onto the mesh.

The only module that knows the mesh axis names; the model speaks in logical names.
"""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxgpt.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Parameters shard their width over fsdp and their heads / MLP / vocabulary over tensor;
# activations shard their batch over (data, fsdp) and their heads / MLP / vocabulary over tensor.
LOGICAL_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("gate", None),  # a SwiGLU MLP's c_fc: its gate and value halves
    ("position", None),
    ("lora", None),
    ("layers", None),  # model.scan_layers' stacked blocks
    ("activation_batch", BATCH_AXES),
    ("activation_tokens", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

# Generation's tensor parallelism (jaxgpt/generate.py) also splits the rows it samples.
WEIGHT_SPLIT_RULES = LOGICAL_RULES + (("sampled_rows", "tensor"),)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Axis sizes from the config; one axis may be -1 to take the remaining devices."""
  sizes = [mesh_config[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1: give the "
                    "others their sizes")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f"{num_devices} devices cannot be split into the fixed mesh axes "
                      f"{dict(zip(MESH_AXES, sizes))}: choose sizes whose product divides {num_devices}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                    f"{num_devices} are available: make mesh.data*mesh.fsdp*mesh.tensor equal "
                    f"{num_devices} or set one of them to -1")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_shardings(mesh, logical_specs):
  """Maps a tree of logical PartitionSpecs to NamedShardings on the mesh."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


# What a parameter's logical axis is in the config, for the error of a mesh that cannot split it.
_AXIS_MEANINGS = {"heads": "heads (model.n_head; n_kv_head for keys and values)",
                  "mlp": "MLP width (model.mlp_width)", "embed": "width (model.n_embd)",
                  "vocab": "padded vocabulary (a multiple of model.vocab_multiple)"}


def check_divisible(shapes, logical_specs, mesh) -> None:
  """A UserError naming the first parameter axis that the mesh axes it maps to do not split
  evenly (a tree of shapes and one of their logical PartitionSpecs)."""
  specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  for leaf, spec in zip(jax.tree.leaves(shapes), specs):
    mesh_spec = nn.logical_to_mesh_axes(spec, LOGICAL_RULES)
    for size, name, axes in zip(leaf.shape, spec, mesh_spec):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      split = math.prod(mesh.shape[a] for a in axes)
      if size % split:
        sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
        raise UserError(f"the model's {_AXIS_MEANINGS.get(name, name)}, {size}, cannot be split "
                        f"over {sizes} devices: pass mesh sizes that divide it (e.g. "
                        f"--config.mesh.{axes[0]}=1) or a model they divide")


def global_batch_sharding(mesh, leading_dims: int = 0) -> NamedSharding:
  """Rows of a batch split over the data-parallel axes; `leading_dims` earlier dims stay whole."""
  return NamedSharding(mesh, PartitionSpec(*([None] * leading_dims), BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_array, mesh, leading_dims: int = 0) -> jax.Array:
  """Turns this process's share of a batch into one global array on the mesh."""
  return jax.make_array_from_process_local_data(
      global_batch_sharding(mesh, leading_dims), np.asarray(local_array))


@contextlib.contextmanager
def rules_context(mesh):
  """The context under which the model's logical names resolve on `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield

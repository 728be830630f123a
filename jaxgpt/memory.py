"""Whether a train state fits in the devices' memory, checked before any of it is allocated."""

import math
import os

import jax

from jaxgpt.errors import UserError


def bytes_per_device(abstract_tree) -> int:
  """The bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(abstract_tree))


def device_memory(device) -> tuple[int, str]:
  """The bytes `device` can hold, and where that figure comes from."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return stats["bytes_limit"], f"a {device.device_kind}"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  devices = jax.local_device_count()
  return host // devices, f"this machine's {host / 1e9:.0f} GB shared by {devices} CPU devices"


def check_state_fits(abstract_state) -> None:
  """A UserError, naming what the model would need, if its parameters, their gradients and
  the optimizer state alone exceed one device's memory (activations come on top)."""
  needed = bytes_per_device(abstract_state) + bytes_per_device(abstract_state.params)
  available, what = device_memory(jax.local_devices()[0])
  if needed > available:
    params = sum(math.prod(p.shape) for p in jax.tree.leaves(abstract_state.params))
    raise UserError(
        f"the model cannot fit: its {params / 1e9:.2f} B parameters, their gradients and the "
        f"optimizer state need {needed / 1e9:.1f} GB per device before any activation, more "
        f"than the {available / 1e9:.1f} GB of {what}: lower model.n_layer or model.n_embd, "
        "or shard it over more devices with mesh.fsdp")

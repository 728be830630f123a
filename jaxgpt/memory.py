"""Whether a train state fits in the devices' memory, checked before any of it is allocated,
and what a compiled train step needs of each device's memory."""

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


# What XLA's memory analysis reports, per device: arguments (the donated state and the
# batch), outputs ("alias": the part of them written in place of the donated arguments),
# temporaries (activations and the like) and the generated code.
_COMPILED = ("argument", "output", "alias", "temp", "generated_code")


def compiled_memory(compiled) -> dict[str, int]:
  """The bytes per device of a compiled program, and their total (aliased outputs counted
  once); empty where the backend does not report them."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  figures = {f"{name}_bytes": getattr(stats, f"{name}_size_in_bytes") for name in _COMPILED}
  figures["total_bytes"] = (figures["argument_bytes"] + figures["output_bytes"]
                           - figures["alias_bytes"] + figures["temp_bytes"]
                           + figures["generated_code_bytes"])
  return figures


def check_step_fits(figures: dict) -> None:
  """A UserError, before the first step runs, if the compiled train step (state, batch,
  activations and the rest) needs more than one device's memory."""
  if "total_bytes" not in figures:
    return
  available, what = device_memory(jax.local_devices()[0])
  if figures["total_bytes"] > available:
    raise UserError(
        f"the train step cannot fit: compiled, it needs {_size(figures['total_bytes'])} per "
        f"device ({_size(figures['temp_bytes'])} of it activations and other temporaries), "
        f"more than the {_size(available)} of {what}: lower train.batch_size or "
        "model.block_size, split the batch with train.grad_accum_steps, recompute activations "
        "with model.remat=full, or shard over more devices with mesh.fsdp")


def describe(figures: dict) -> str:
  """One line of a compiled train step's figures (compile_seconds and compiled_memory's)."""
  line = f"train step compiled in {figures['compile_seconds']:.1f} s"
  if "total_bytes" not in figures:
    return line + "; this backend reports no memory figures"
  size = {key: _size(value) for key, value in figures.items()}
  available, what = device_memory(jax.local_devices()[0])
  return (f"{line}; memory per device: arguments {size['argument_bytes']} (the donated state "
          f"and the batch), outputs {size['output_bytes']} ({size['alias_bytes']} of them in "
          f"the donated state's place), temporaries {size['temp_bytes']}, generated code "
          f"{size['generated_code_bytes']}: {size['total_bytes']} in all, of "
          f"{_size(available)} ({what})")


def _size(num_bytes: int) -> str:
  return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"

"""Start-up of JAX: CPU device count, the start-up banner, and which backend runs."""

import os
import platform

from jaxgpt.errors import UserError, first_line

# XLA's CPU backend runs much element-wise work on one core; splitting each batch over two
# CPU devices keeps both cores busy (see BENCHMARKS.md).
DEFAULT_CPU_DEVICES = 2


def configure_cpu_devices() -> None:
  """Sets the number of CPU devices unless the user did; must run before JAX starts."""
  import jax  # pylint: disable=g-import-not-at-top
  if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in \
      os.environ.get("XLA_FLAGS", ""):
    return
  jax.config.update("jax_num_cpu_devices", min(DEFAULT_CPU_DEVICES, os.cpu_count() or 1))


def start_backend() -> None:
  """Starts JAX; a platform in JAX_PLATFORMS that cannot start is an error, not a fallback."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.devices()
  except Exception as e:  # pylint: disable=broad-except  # jax raises RuntimeError or AssertionError

    raise UserError(f"JAX could not start JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r} "
                    f"({first_line(e)}): install jax for that accelerator, stop the process "
                    "holding it, or unset JAX_PLATFORMS") from None


def check_backend(requested: str) -> str:
  """The backend JAX runs on; a requested accelerator that JAX cannot use is an error."""
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  if requested not in ("auto", backend):
    raise UserError(f"backend={requested} was asked for but JAX runs on {backend} "
                    f"(devices: {jax.devices()}): install jax for {requested} "
                    f"(e.g. pip install 'jax[{'cuda13' if requested == 'gpu' else 'tpu'}]') "
                    "or pass --config.backend=auto")
  return backend


def banner() -> str:
  import flax, jax, optax, orbax.checkpoint  # pylint: disable=g-import-not-at-top,multiple-imports
  devices = jax.devices()
  return (f"jaxgpt on {jax.default_backend()}: {len(devices)} x {devices[0].device_kind}, "
          f"{jax.process_count()} process(es) | python {platform.python_version()}, "
          f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"orbax {orbax.checkpoint.__version__}")

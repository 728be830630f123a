"""Start-up of JAX: CPU device count, several processes, the compilation cache, the banner."""

import os
import platform

from jaxgpt import roll_call
from jaxgpt.errors import UserError, first_line

# XLA's CPU backend runs much element-wise work on one core; splitting each batch over two
# CPU devices keeps both cores busy (see BENCHMARKS.md).
DEFAULT_CPU_DEVICES = 2
DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
CACHE_DIR = "xla_cache"
# Downloads, and the compiled programs of pretrained models (which have no run folder).
USER_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jaxgpt")
# Programs that compile faster than this are cheaper to compile again than to read back.
MIN_CACHED_COMPILE_SECS = 2.0


BFLOAT16_DOT_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bfloat16_dot(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this machine's CPU has instructions for bfloat16 products summed in float32:
  Intel AMX's matrix units or AVX512-BF16 (Intel since Cooper Lake, AMD since Zen 4), as
  Linux's /proc/cpuinfo names them; False where it cannot be read."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      return any(line.startswith("flags") and set(BFLOAT16_DOT_FLAGS) & set(line.split())
                 for line in f)
  except OSError:
    return False


def configure_cpu_devices() -> None:
  """Sets the number of CPU devices unless the user did; must run before JAX starts."""
  import jax  # pylint: disable=g-import-not-at-top
  if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in \
      os.environ.get("XLA_FLAGS", ""):
    return
  jax.config.update("jax_num_cpu_devices", min(DEFAULT_CPU_DEVICES, os.cpu_count() or 1))


def initialize_distributed() -> None:
  """Joins the other processes of a multi-process run; must run before JAX starts.

  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID name the processes;
  without them a cluster that JAX detects (Cloud TPU, SLURM, Open MPI) does; one process
  on its own (a laptop, one GPU machine) starts nothing.
  """
  import jax  # pylint: disable=g-import-not-at-top
  given = {name: os.environ.get(name) for name in DISTRIBUTED_VARIABLES}
  if any(given.values()):
    address, host, port, num_processes, process_id = _distributed_variables(given)
    roll_call.take(host.strip("[]"), port, num_processes, process_id)
    _initialize(jax, address, num_processes, process_id)
  elif _cluster_process_count() > 1:
    _initialize(jax)


def _distributed_variables(given: dict) -> tuple[str, str, int, int, int]:
  """(JAX_COORDINATOR_ADDRESS, its host and port, JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""
  missing = [name for name, value in given.items() if not value]
  if missing:
    raise UserError(f"{', '.join(missing)} is not set: set all of {', '.join(given)} "
                    "for each process (or none of them for one process)")
  try:
    address, num_processes, process_id = given.values()
    num_processes, process_id = int(num_processes), int(process_id)
  except ValueError:
    raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be whole numbers, got "
                    f"{given['JAX_NUM_PROCESSES']!r} and {given['JAX_PROCESS_ID']!r}") from None
  host, _, port = address.rpartition(":")
  if not (host and port.isdigit()):
    raise UserError(f"JAX_COORDINATOR_ADDRESS={address!r} is not HOST:PORT: set it to process "
                    "0's host name or IP address and a free port, e.g. 10.0.0.2:1234")
  if not 0 <= process_id < num_processes:
    raise UserError(f"JAX_PROCESS_ID={process_id} is not in 0..{num_processes - 1}: number the "
                    f"JAX_NUM_PROCESSES={num_processes} processes from 0")
  return address, host, int(port), num_processes, process_id


def _cluster_process_count() -> int:
  """How many processes the cluster that JAX detects runs; 1 where it detects none.

  Asks JAX's own detectors (those jax.distributed.initialize() uses); on a Cloud TPU VM
  they read its metadata server, elsewhere only environment variables.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top  # no public API
    detectors = [c for c in clusters.ClusterEnv._cluster_types if not c.opt_in_only_method]  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # a JAX without these internals: no detection
    return 1
  cluster = next((c for c in detectors if c.is_env_present()), None)
  return cluster.get_process_count() if cluster else 1


def _initialize(jax, *args) -> None:
  # jaxgpt agrees on a stop step itself (signals.py): JAX's preemption service would take
  # SIGTERM from it and, in a blocked process, ignore it.
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(*args)
  except Exception as e:  # pylint: disable=broad-except  # jax raises RuntimeError, ValueError, ...
    raise UserError(f"the processes could not connect ({first_line(e)}): start every process "
                    "with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, a distinct "
                    "JAX_PROCESS_ID, and a coordinator port that process 0 can open") from None


def enable_compilation_cache(workdir: str) -> None:
  """Keeps compiled programs in WORKDIR/xla_cache, so a resumed run (or the next command on
  it) skips most compilation.

  In the workdir, not on the machine: a preempted TPU VM or Colab runtime is gone, its
  workdir (a bucket, a persistent disk, Google Drive) is not. JAX_COMPILATION_CACHE_DIR
  chooses another folder. Must run before anything is compiled.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, CACHE_DIR))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECS)


def keep_compiled_programs(folder: str, make: bool = False) -> None:
  """enable_compilation_cache(folder) where the folder can be written (made first, with
  `make`); in a read-only one every program is compiled, without a warning for each."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # the folder the user chose instead
    enable_compilation_cache(folder)
    return
  if make:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError:
      return
  if os.access(folder, os.W_OK):
    enable_compilation_cache(folder)


def start_backend() -> None:
  """Starts JAX; a platform in JAX_PLATFORMS that cannot start is an error, not a fallback."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.devices()
  except Exception as e:  # pylint: disable=broad-except  # jax raises RuntimeError or AssertionError
    raise UserError(f"JAX could not start JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r} "
                    f"({first_line(e)}): install jax for that accelerator, stop the process "
                    "holding it, or unset JAX_PLATFORMS") from None


def check_backend(config) -> None:
  """A requested accelerator (or cuDNN attention) that JAX cannot use is an error."""
  import jax  # pylint: disable=g-import-not-at-top
  backend, requested = jax.default_backend(), config.backend
  if config.model.attention == "cudnn" and backend != "gpu":
    raise UserError(f"model.attention=cudnn needs an NVIDIA GPU but JAX runs on {backend}: "
                    "pass --config.model.attention=auto (cuDNN where it applies)")
  if requested not in ("auto", backend):
    raise UserError(f"backend={requested} was asked for but JAX runs on {backend} "
                    f"(devices: {jax.devices()}): install jax for {requested} "
                    f"(e.g. pip install 'jax[{'cuda13' if requested == 'gpu' else 'tpu'}]') "
                    "or pass --config.backend=auto")


def banner() -> str:
  import flax, jax, optax, orbax.checkpoint  # pylint: disable=g-import-not-at-top,multiple-imports
  devices = jax.devices()
  return (f"jaxgpt on {jax.default_backend()}: {len(devices)} x {devices[0].device_kind}, "
          f"{jax.process_count()} process(es) | python {platform.python_version()}, "
          f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
          f"orbax {orbax.checkpoint.__version__}")

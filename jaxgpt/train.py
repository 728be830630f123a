"""python -m jaxgpt.train [--config=configs/NAME.py] [--workdir=DIR] [--config.KEY=VALUE ...]

Trains a GPT (by default on all of Shakespeare's plays), then prints a short sample.
Running it again with the same workdir resumes from the newest checkpoint.
"""

import ast
import contextlib
import os
import sys

from absl import flags

from jaxgpt import cli, peers, runtime, workdir_lock
from jaxgpt.errors import UserError, run_cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")


def define_config_flag():
  """--config (a config file, default configs/default.py) with --config.KEY=VALUE overrides."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:  # the default config file is read, and its overrides checked, here
    return config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Config file (a get_config() function); keys are overridden "
        "with --config.KEY=VALUE.", lock_config=True)
  except (AttributeError, KeyError) as e:
    raise cli.unknown_config_key(e) from None


def _config_name(config_path: str) -> str:
  return os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]


def main(argv=None):
  runtime.configure_cpu_devices()
  runtime.initialize_distributed()
  runtime.start_backend()
  config_flag = define_config_flag()
  workdir_flag = flags.DEFINE_string(
      "workdir", None, "Where checkpoints, metrics and the config go; default runs/<config name>.")
  check_config_file(sys.argv if argv is None else argv)
  cli.parse_flags(argv, __doc__)
  config = config_flag.value
  runtime.check_backend(config)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = os.path.abspath(workdir_flag.value or os.path.join("runs", _config_name(config_path)))
  runtime.enable_compilation_cache(workdir)
  # Process 0 locks the workdir for all the processes of a run.
  lock = workdir_lock.held(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with peers.watch(config.train.peer_timeout_secs), lock:
    trainer = Trainer(config, workdir, explicit_keys=_overridden_keys(sys.argv if argv is None
                                                                      else argv))
    _train_and_sample(trainer, config, workdir)


def _train_and_sample(trainer, config, workdir: str) -> None:
  trainer.log(runtime.banner())
  trainer.log(f"workdir: {workdir}")
  last = trainer.run()
  if trainer.is_main:
    summary = f"done: step {last['step']}"
    if "val_loss" in last:
      summary += f", val loss {last['val_loss']:.4f}"
    print(summary + f"\nworkdir: {workdir}", flush=True)
    if config.train.sample_tokens:
      print("---- sample ----")
      print(trainer.sample(max_new_tokens=config.train.sample_tokens))
      if last["step"] > 0:  # a checkpoint to sample from exists
        print(f"---- more with: python -m jaxgpt.sample --workdir={workdir}")


def _overridden_keys(argv) -> set[str]:
  """The config keys given on the command line (--config.KEY=VALUE or --config.KEY VALUE)."""
  prefix = "--config."
  return {arg[len(prefix):].split("=", 1)[0] for arg in argv[1:] if arg.startswith(prefix)}


def check_config_file(argv) -> None:
  """A missing, unparsable or get_config-less --config file is a clear error, not a
  flag-parser traceback or an "unknown key"."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":")[0]
      if not os.path.isfile(path):
        raise UserError(f"config file {path!r} does not exist: pass --config=configs/NAME.py "
                        f"(choices: {', '.join(sorted(os.listdir(os.path.join(REPO_ROOT, 'configs'))))})")
      _check_config_source(path)


def _check_config_source(path: str) -> None:
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
  except SyntaxError as e:
    raise UserError(f"config file {path} has a syntax error at line {e.lineno} ({e.msg}): "
                    "fix it, or start from configs/default.py") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"config file {path} cannot be read ({e}): pass a UTF-8 Python "
                    "file") from None
  if not any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
             for node in tree.body):
    raise UserError(f"config file {path} has no get_config() function: define one that "
                    "returns the config, as configs/default.py does")


if __name__ == "__main__":
  run_cli(main)

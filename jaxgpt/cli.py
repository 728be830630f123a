"""Flags shared by the commands: --help, --config files with --config.KEY overrides, and flag
errors as one clear line."""

import ast
import os
import sys

from absl import flags

from jaxgpt.errors import UserError, first_line

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ lies beside the jaxgpt package in a clone and, as its own package, when installed.
CONFIGS = os.path.join(REPO_ROOT, "configs")
DEFAULT_CONFIG = os.path.join(CONFIGS, "default.py")


def unknown_config_key(error: Exception) -> UserError:
  """ml_collections' AttributeError or KeyError for an override of a key that does not exist."""
  key = first_line(error).strip("'\"")
  return UserError(f"unknown config key {key!r}: run with --help and see the config file for "
                   "the keys that exist")


def parse_flags(argv, usage: str) -> None:
  """Parses absl flags; `--help` prints them and exits 0; bad flags raise UserError."""
  argv = sys.argv if argv is None else argv
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    print(usage.strip() + "\n")
    print(flags.FLAGS.module_help(sys.modules["__main__"]))
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(f"{first_line(e)} (see --help for the accepted flags)") from None
  except (AttributeError, KeyError) as e:
    raise unknown_config_key(e) from None
  if len(rest) > 1:
    raise UserError(f"unexpected argument {rest[1]!r}: flags are written --name=value "
                    "(see --help)")


def define_config_flag():
  """--config (a config file, default configs/default.py) with --config.KEY=VALUE overrides."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:  # the default config file is read, and its overrides checked, here
    return config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Config file (a get_config() function); keys are overridden "
        "with --config.KEY=VALUE.", lock_config=True)
  except (AttributeError, KeyError) as e:
    raise unknown_config_key(e) from None


def config_name(config_path: str) -> str:
  return os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]


def bundled_config(path: str) -> str:
  """The bundled configs/NAME.py for a --config of NAME, NAME.py or configs/NAME.py that is
  not a file here; any other path as it is."""
  if os.path.isfile(path) or os.path.dirname(path) not in ("", "configs"):
    return path
  name = os.path.basename(path)
  bundled = os.path.join(CONFIGS, name if name.endswith(".py") else name + ".py")
  return bundled if os.path.isfile(bundled) else path


def check_config_file(argv) -> None:
  """Rewrites each --config=NAME in argv, in place, to the bundled file's path (config_flags
  loads a path); a missing, unparsable or get_config-less --config file is a clear error, not a
  flag-parser traceback or an "unknown key"."""
  for i, arg in enumerate(argv):
    if i and arg.startswith("--config="):
      path, colon, config_arg = arg.split("=", 1)[1].partition(":")
      path = bundled_config(path)
      argv[i] = f"--config={path}{colon}{config_arg}"
      if not os.path.isfile(path):
        names = sorted(name[:-3] for name in os.listdir(CONFIGS)
                       if name.endswith(".py") and name != "__init__.py")
        raise UserError(f"config file {path!r} does not exist: pass --config=NAME or a config "
                        f"file's path (NAME: {', '.join(names)})")
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


def overridden_config_keys(argv) -> set[str]:
  """The config keys given on the command line (--config.KEY=VALUE or --config.KEY VALUE)."""
  prefix = "--config."
  return {arg[len(prefix):].split("=", 1)[0] for arg in argv[1:] if arg.startswith(prefix)}

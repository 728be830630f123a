"""Flags shared by the commands: --help, --config files with --config.KEY overrides, the
choice of a model to load (--workdir or --init_from), and flag errors as one clear line."""

import ast
import dataclasses
import difflib
import importlib.util
import logging
import os
import re
import sys
import textwrap

from absl import flags

from jaxgpt import configs, runtime
from jaxgpt.errors import UserError, first_line

# The bundled configs' folder: configs/ in a clone, jaxgpt/configs/ when installed.
CONFIGS = configs.__path__[0]
DEFAULT_CONFIG = os.path.join(CONFIGS, "default.py")


def unknown_config_key(error: Exception, argv) -> UserError:
  """ml_collections' AttributeError or KeyError for an override (in argv) of a key that does
  not exist, as that key and the existing key nearest to it."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  keys = [key for key, _ in config_lib.flat_items(config_lib.base_config())]
  unknown = sorted(overridden_config_keys(argv) - set(keys))
  # A KeyError's str() is the repr of its message (escaped quotes, a literal "\\n").
  message = str(error.args[0]) if error.args else ""
  key = unknown[0] if unknown else message.split("\n")[0].strip("'\"")
  nearest = _nearest_key(key, keys)
  hint = f" (did you mean {nearest}?)" if nearest else ""
  return UserError(f"unknown config key {key!r}{hint}: python -m jaxgpt.train --help lists "
                   "every key")


def _nearest_key(key: str, keys: list[str]) -> str | None:
  """The key whose name (after the last dot) is nearest to `key`'s, preferring one in the
  same section; None if no name is near."""
  section, _, name = key.rpartition(".")
  names = [k.rpartition(".")[2] for k in keys]
  nearest = difflib.get_close_matches(name, names, n=1)
  matches = [k for k, n in zip(keys, names) if nearest and n == nearest[0]]
  return min(matches, key=lambda k: not k.startswith(section + "."), default=None)


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """--workdir (with --checkpoint) or --init_from: the model a command loads."""
  workdir: flags.FlagHolder
  init_from: flags.FlagHolder
  checkpoint: flags.FlagHolder
  pretrained: str  # what --init_from loads, as an error names it

  def check(self) -> None:
    if bool(self.workdir.value) == bool(self.init_from.value):
      raise UserError("pass either --workdir (the run folder that `python -m jaxgpt.train` "
                      f"printed) or --init_from ({self.pretrained}), not both or neither")
    if self.init_from.value and self.checkpoint.present:
      raise UserError("--checkpoint picks one of a run's checkpoints, and --init_from loads "
                      "pretrained weights, which have one: drop --checkpoint, or pass "
                      "--workdir instead of --init_from")

  def load(self):
    """The run_loader.LoadedRun the flags name. Its compiled programs are kept, as training's
    are, in the run's xla_cache (a pretrained model's in ~/.cache/jaxgpt/xla_cache), so that
    the next command on it skips most compilation."""
    from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
    if self.init_from.value:
      runtime.keep_compiled_programs(runtime.USER_CACHE_DIR, make=True)
      return run_loader.load_pretrained(self.init_from.value)
    runtime.keep_compiled_programs(self.workdir.value)  # load_run names a missing one
    return run_loader.load_run(self.workdir.value, self.checkpoint.value)


CHECKPOINT_HELP = "latest (the newest readable), best (lowest validation loss) or a step number."


def define_run_flags(module_name: str, verb: str, init_from_help: str,
                     pretrained: str) -> RunFlags:
  """The flags of RunFlags, key flags of the module `module_name` (so its --help lists them;
  absl names the main module after sys.argv[0])."""
  key_of = sys.argv[0] if module_name == "__main__" else module_name

  def define(name: str, default, text: str) -> flags.FlagHolder:
    holder = flags.DEFINE_string(name, default, text)
    flags.FLAGS.register_key_flag_for_module(key_of, flags.FLAGS[name])
    return holder

  return RunFlags(
      define("workdir", None, f"The run to {verb} (as printed by train)."),
      define("init_from", None, init_from_help),
      define("checkpoint", "latest", CHECKPOINT_HELP),
      pretrained)


def parse_flags(argv, usage: str) -> None:
  """Parses absl flags; bad flags raise UserError. `--help` prints them (for a command with
  --config, also the named configs and every config key with its value) and exits 0."""
  argv = sys.argv if argv is None else argv
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    print(usage.strip() + "\n")
    print(flags.FLAGS.module_help(sys.modules["__main__"]))
    if "config" in flags.FLAGS:
      _parse([argv[0], *(a for a in argv[1:] if a.startswith("--config="))])
      print("\n" + config_help())
    sys.exit(0)
  _parse(argv)


def _parse(argv) -> None:
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # its warning of a None config; the error below says it
  _check_values_given(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(_flag_error(e)) from None
  except (AttributeError, KeyError) as e:
    _check_overridden_config_file(argv)
    raise unknown_config_key(e, argv) from None
  except Exception as e:  # pylint: disable=broad-except
    config_file = _config_file(argv)
    if config_file is None:
      raise
    # config_flags wraps what get_config() raises, not what the file raises as it loads
    raise UserError(f"config file {config_file} raised {type(e).__name__}: {e}: fix it (its "
                    "keys and their types are those of configs/default.py)") from None
  finally:
    absl_log.setLevel(level)
  if len(rest) > 1:
    raise UserError(f"unexpected argument {rest[1]!r}: flags are written --name=value "
                    "(see --help)")
  if "config" in flags.FLAGS:
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    flag = flags.FLAGS["config"]
    _check_config_value(config_flags.get_config_filename(flag), flag.value)


def _flag_error(error: flags.Error) -> str:
  """The flag error's line; for a config file whose get_config() raised, what it raised."""
  found = re.match(r"flag --config=(.*?): Error whilst parsing config file", str(error))
  if found:
    raised = str(error).strip().splitlines()[-1]
    return (f"config file {found.group(1)}'s get_config() failed ({raised}): fix it (its keys "
            "and their types are those of configs/default.py)")
  return f"{first_line(error)} (see --help for the accepted flags)"


def _config_file(argv) -> str | None:
  """The last --config=FILE of argv, if any."""
  files = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  return files[-1] if files else None


def _check_overridden_config_file(argv) -> None:
  """Where every overridden key exists, an override failed on what a config file's
  get_config() returned (not a config, or a partial one): that is the error to report."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  keys = {key for key, _ in config_lib.flat_items(config_lib.base_config())}
  path = _config_file(argv)
  if path is None or overridden_config_keys(argv) - keys:
    return
  path, *arg = path.split(":", 1)
  spec = importlib.util.spec_from_file_location("jaxgpt_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _check_config_value(path, module.get_config(*arg))


def _check_config_value(path: str, value) -> None:
  """A config file's get_config() must return a whole jaxgpt config."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  fix = "return jaxgpt.config.base_config() with your changes, as configs/default.py does"
  if not isinstance(value, ml_collections.ConfigDict):
    kind = "None" if value is None else type(value).__name__
    raise UserError(f"config file {path}'s get_config() returned {kind}, not a "
                    f"config{' (a missing return statement?)' if value is None else ''}: {fix}")
  given = {key for key, _ in config_lib.flat_items(value)}
  missing = [key for key, _ in config_lib.flat_items(config_lib.base_config())
             if key not in given]
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise UserError(f"config file {path}'s config has no {', '.join(missing[:3])}{more}: {fix}")


def _check_values_given(argv) -> None:
  """`--verify --out=DIR` is refused: absl would take "--out=DIR" as --verify's value."""
  for arg, following in zip(argv[1:], argv[2:]):
    name = arg[2:] if arg.startswith("--") and "=" not in arg else ""
    if (name in flags.FLAGS and not isinstance(flags.FLAGS[name], flags.BooleanFlag)
        and following.startswith("--")):
      raise UserError(f"{arg} has no value (the next argument is {following}): write "
                      f"{arg}=VALUE")


def define_config_flag():
  """--config (a config file, default configs/default.py) with --config.KEY=VALUE overrides."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:  # the default config file is read, and its overrides checked, here
    return config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "NAME (a named config, below) or the path of a config file "
        "(a get_config() function); its keys are overridden with --config.KEY=VALUE.",
        lock_config=True)
  except (AttributeError, KeyError) as e:
    raise unknown_config_key(e, sys.argv) from None


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
  flag-parser traceback or an "unknown key". `--config NAME` is first joined to --config=NAME."""
  _join_config_value(argv)
  given = [arg for arg in argv[1:] if arg.startswith("--config=")]
  if len(given) > 1:
    raise UserError(f"--config was given {len(given)} times ({', '.join(given)}): pass one "
                    "config, and change its keys with --config.KEY=VALUE")
  for i, arg in enumerate(argv):
    if i and arg.startswith("--config="):
      path, colon, config_arg = arg.split("=", 1)[1].partition(":")
      path = bundled_config(path)
      argv[i] = f"--config={path}{colon}{config_arg}"
      if not os.path.isfile(path):
        problem = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UserError(f"config file {path!r} {problem}: pass --config=NAME or a config "
                        f"file's path (NAME: {', '.join(named_configs())})")
      if not _defines_get_config(_config_source(path)):
        raise UserError(f"config file {path} has no get_config() function: define one that "
                        "returns the config, as configs/default.py does")


def _join_config_value(argv) -> None:
  for i in range(len(argv) - 2, 0, -1):
    if argv[i] == "--config" and not argv[i + 1].startswith("-"):
      argv[i:i + 2] = [f"--config={argv[i + 1]}"]


def _config_source(path: str) -> ast.Module:
  try:
    with open(path, encoding="utf-8") as f:
      return ast.parse(f.read(), path)
  except SyntaxError as e:
    raise UserError(f"config file {path} has a syntax error at line {e.lineno} ({e.msg}): "
                    "fix it, or start from configs/default.py") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"config file {path} cannot be read ({e}): pass a UTF-8 Python "
                    "file") from None


def _defines_get_config(tree: ast.Module) -> bool:
  return any(isinstance(node, ast.FunctionDef) and node.name == "get_config"
             for node in tree.body)


def named_configs() -> dict[str, str]:
  """{NAME: the first paragraph of its docstring} of the bundled configs/NAME.py files that
  are configs (have a get_config(); configs/recipe.py, which configs apply, has none)."""
  named = {}
  for file in sorted(os.listdir(CONFIGS)):
    tree = _config_source(os.path.join(CONFIGS, file)) if file.endswith(".py") else None
    if tree and _defines_get_config(tree):
      named[file[:-3]] = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
  return named


def config_help() -> str:
  """--config, the named configs, and every key of the config --config names with its value
  and meaning, in the layout of absl's flag help."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag = flags.FLAGS["config"]
  path = config_flags.get_config_filename(flag)
  shown = config_name(path) if os.path.dirname(path) == CONFIGS else path
  entries = [_help_entry("--config", flag.help, config_name(DEFAULT_CONFIG)), "",
             "named configs (--config=NAME):"]
  entries += [_help_entry(name, text) for name, text in named_configs().items()]
  entries += ["", f"config keys (--config.KEY=VALUE), with the values of --config={shown}:"]
  entries += [_help_entry(f"--config.{key}", config_lib.key_meanings().get(key, ""), repr(value))
              for key, value in config_lib.flat_items(flag.value)]
  return "\n".join(entries)


def _help_entry(name: str, text: str, default: str | None = None) -> str:
  entry = textwrap.fill(f"{name}: {text}", 80, initial_indent="  ", subsequent_indent="    ",
                        break_on_hyphens=False)
  return entry if default is None else f"{entry}\n    (default: {default})"


def overridden_config_keys(argv) -> set[str]:
  """The config keys given on the command line (--config.KEY=VALUE or --config.KEY VALUE)."""
  prefix = "--config."
  return {arg[len(prefix):].split("=", 1)[0] for arg in argv[1:] if arg.startswith(prefix)}

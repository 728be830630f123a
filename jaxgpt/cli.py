"""Flag parsing shared by the commands: --help, and flag errors as one clear line."""

import sys

from absl import flags

from jaxgpt.errors import UserError, first_line


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


"""Flag parsing shared by the commands: --help, and flag errors as one clear line."""

import sys

from absl import flags

from jaxgpt.errors import UserError, first_line


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
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key that does not exist
    raise UserError(f"unknown config key {first_line(e)}: run with --help and see the config "
                    "file for the keys that exist") from None
  if len(rest) > 1:
    raise UserError(f"unexpected argument {rest[1]!r}: flags are written --name=value "
                    "(see --help)")


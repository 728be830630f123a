"""The one error type users can cause, and the CLI wrapper that prints it as one line."""

import sys


class UserError(Exception):
  """Bad input the user can fix: a missing file, an impossible config, ...

  The message names the problem and the fix; the CLI prints it as one line on
  stderr and exits with status 2, without a traceback.
  """


def first_line(error: Exception) -> str:
  """The first line of an exception's message, for one-line error reports."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def run_cli(main, argv=None):
  """Runs `main(argv)`; turns a UserError into one stderr line and exit 2."""
  try:
    return main(argv)
  except UserError as e:
    message = " ".join(str(e).split())
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)

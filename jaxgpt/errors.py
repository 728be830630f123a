"""The one error type users can cause, and the CLI wrapper that prints it as one line."""

import sys


class UserError(Exception):
  """Bad input the user can fix: a missing file, an impossible config, ...

  The message names the problem and the fix; the CLI prints it as one line on
  stderr and exits with `exit_code` (2 unless said otherwise), without a traceback.
  """

  def __init__(self, message: str, exit_code: int = 2):
    super().__init__(message)
    self.exit_code = exit_code


class Interrupted(UserError):
  """The run was asked to stop (a signal or preemption) and saved its state first."""


def first_line(error: Exception) -> str:
  """The first line of an exception's message, for one-line error reports."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def one_line(error: Exception) -> str:
  """The error's message with its line breaks and runs of spaces made single spaces."""
  return " ".join(str(error).split())


def report(error: UserError) -> int:
  """Prints a UserError as one stderr line; returns its exit code."""
  message = one_line(error)
  label = "stopped" if isinstance(error, Interrupted) else "error"
  print(f"{label}: {message}", file=sys.stderr, flush=True)
  return error.exit_code


def run_cli(main, argv=None):
  """Runs `main(argv)`; turns a UserError into one stderr line and its exit code."""
  try:
    return main(argv)
  except UserError as e:
    sys.exit(report(e))
  except KeyboardInterrupt:
    sys.exit(report(Interrupted("interrupted (Ctrl-C); nothing saved was changed", 130)))

"""The one error type users can cause, and the CLI wrapper that prints it as one line."""

import _thread
import os
import signal
import sys
import threading


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


INTERRUPTED = "interrupted (Ctrl-C); nothing saved was changed"
_main_state = "before"  # of the command's main: before, running, finished


def run_cli(main):
  """Runs `main()`; turns a UserError into one stderr line and its exit code, and Ctrl-C
  at any moment into one `stopped:` line and exit status 130."""
  global _main_state
  handle_ctrl_c()
  _main_state = "running"
  try:
    result = main()
    _main_state = "finished"
    return result
  except UserError as e:
    sys.exit(report(e))
  except KeyboardInterrupt:
    # Ended at once: XLA may still be compiling on its threads, which Python's shutdown
    # crashes (a segmentation fault after the line); nothing was saved to finish.
    _exit_now(report(Interrupted(INTERRUPTED, 130)))
  except BrokenPipeError:  # stdout's reader has gone (`| head`): end quietly, as Unix tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    _exit_now(128 + signal.SIGPIPE)


def _exit_now(code: int) -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except OSError:
      pass
  os._exit(code)  # pylint: disable=protected-access


def handle_ctrl_c() -> None:
  """Ctrl-C raises KeyboardInterrupt, except during an import, before run_cli has called the
  command's main (the command module's own top level) or after main returned (Python's
  shutdown: JAX's and Orbax's exit handlers), where it ends the command at once (a
  KeyboardInterrupt inside a C extension's initialisation is turned into an ImportError, or
  crashes; nothing is saved before main); and a KeyboardInterrupt that
  Python dropped (raised in a garbage-collection callback or a __del__, such as JAX's, it is
  only "ignored") is raised again in the main thread. An ignored SIGINT stays ignored."""
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _on_ctrl_c)
  if sys.unraisablehook is not _reraise_interrupts:
    _reraise_interrupts.default = sys.unraisablehook
    sys.unraisablehook = _reraise_interrupts


def _on_ctrl_c(_, frame) -> None:
  if _main_state == "finished":  # Python's shutdown: what the command wrote is complete
    print("stopped: interrupted (Ctrl-C) as the command exited, after it had finished",
          file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access
  if _main_state == "before" or _importing(frame):
    print(f"stopped: {INTERRUPTED}", file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access
  raise KeyboardInterrupt


def _importing(frame) -> bool:
  while frame is not None:
    if frame.f_code.co_filename.startswith("<frozen importlib"):
      return True
    frame = frame.f_back
  return False


def _reraise_interrupts(unraisable) -> None:
  if isinstance(unraisable.exc_value, KeyboardInterrupt):
    # A moment later, from another thread: raised in this hook, it would be dropped again.
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.daemon = True
    timer.start()
  else:
    _reraise_interrupts.default(unraisable)

"""SIGTERM and SIGINT: the first asks the run to save and stop, a second one ends it at once.

The first signal only sets a flag; the training loop passes it into the train step, whose
sum over all processes makes every process stop, and save, at the same step, whichever
of them got the signal (a preempted worker, a Ctrl-C, a scheduler's kill). A second signal
means the user will not wait for that save: a thread ends the process even while the main
thread is blocked in a collective or a checkpoint barrier, where Python handlers cannot run.
"""

import contextlib
import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A repeat this soon after the first signal is the same request: GNU timeout (without
# --foreground) signals the process and then its whole process group, the process again.
SAME_REQUEST_SECS = 0.5


class StopRequest:
  """Whether, and by which signal, this process was asked to stop."""

  def __init__(self):
    self.signal_name = None

  def __bool__(self) -> bool:
    return self.signal_name is not None

  @property
  def exit_code(self) -> int:
    return 128 + signal.Signals[self.signal_name or "SIGTERM"].value

  @contextlib.contextmanager
  def installed(self):
    """Catches SIGTERM and SIGINT while the block runs."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # Python's C-level handler writes each caught signal's number to this pipe at once.
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}
    watcher = threading.Thread(target=_exit_on_second_signal, args=(read_fd,), daemon=True)
    watcher.start()
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
      signal.set_wakeup_fd(previous_fd)
      os.close(write_fd)  # ends the watcher
      watcher.join()
      os.close(read_fd)

  def _request(self, signum, _):
    self.signal_name = self.signal_name or signal.Signals(signum).name


def _exit_on_second_signal(read_fd: int) -> None:
  first = None  # when the first signal came
  while data := os.read(read_fd, 64):
    for signum in data:
      if signum not in STOP_SIGNALS:
        continue
      name = signal.Signals(signum).name
      if first is None:
        first = time.monotonic()
        print(f"{name}: saving and stopping after the current step (send it again to stop at "
              "once, without saving)", file=sys.stderr, flush=True)
      elif time.monotonic() - first >= SAME_REQUEST_SECS:
        print(f"stopped: {name} again: exiting without saving this step; the newest complete "
              "checkpoint is kept: run the same command to resume from it",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)  # pylint: disable=protected-access

"""The first SIGINT or SIGTERM asks a run to save and stop; a second ends it at once, unless it
comes within signals.SAME_REQUEST_SECS of the first (GNU timeout signals the process and then
its process group: one request, twice). Ctrl-C outside a command's main (errors.run_cli) ends
it at once with one `stopped:` line."""

import os
import signal
import threading
import time

import pytest

from jaxgpt import errors, signals


def _exits(monkeypatch, signal_times):
  """The exit codes the watcher asks for, given signals at those seconds from the start."""
  exits = []
  monkeypatch.setattr(signals.os, "_exit", exits.append)
  read_fd, write_fd = os.pipe()
  watcher = threading.Thread(target=signals._exit_on_second_signal, args=(read_fd,))
  watcher.start()
  started = time.monotonic()
  for at, signum in signal_times:
    time.sleep(max(0.0, at - (time.monotonic() - started)))
    os.write(write_fd, bytes([signum]))
  os.close(write_fd)
  watcher.join()
  os.close(read_fd)
  return exits


@pytest.mark.parametrize("signal_times, exits", [
    ([(0.0, signal.SIGINT)], []),
    ([(0.0, signal.SIGINT), (0.0, signal.SIGINT)], []),  # GNU timeout's pair
    ([(0.0, signal.SIGTERM), (0.1, signal.SIGTERM)], []),
    ([(0.0, signal.SIGINT), (0.8, signal.SIGINT)], [128 + signal.SIGINT]),  # Ctrl-C again
    ([(0.0, signal.SIGTERM), (0.0, signal.SIGTERM), (0.8, signal.SIGINT)],
     [128 + signal.SIGINT]),
])
def test_a_second_signal_ends_the_run_unless_it_repeats_the_first_at_once(
    signal_times, exits, monkeypatch, capsys):
  assert _exits(monkeypatch, signal_times) == exits
  stderr = capsys.readouterr().err
  assert stderr.count("saving and stopping after the current step") == 1
  assert ("exiting without saving" in stderr) == bool(exits)


@pytest.mark.parametrize("state, line", [
    ("before", "stopped: interrupted (Ctrl-C); nothing saved was changed"),
    ("finished", "stopped: interrupted (Ctrl-C) as the command exited, after it had finished"),
])
def test_ctrl_c_outside_the_commands_main_is_one_stopped_line_and_130(state, line, monkeypatch,
                                                                        capsys):
  monkeypatch.setattr(errors, "_main_state", state)
  monkeypatch.setattr(errors.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
  with pytest.raises(SystemExit) as exited:
    errors._on_ctrl_c(signal.SIGINT, None)
  assert exited.value.code == 130 and capsys.readouterr().err == line + "\n"


def test_ctrl_c_while_the_commands_main_runs_raises_keyboard_interrupt(monkeypatch):
  monkeypatch.setattr(errors, "_main_state", "running")
  with pytest.raises(KeyboardInterrupt):
    errors._on_ctrl_c(signal.SIGINT, None)

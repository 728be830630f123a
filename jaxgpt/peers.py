"""The other processes of a multi-process run: when one fails or dies, all stop, each with a line.

Without this, a process that fails (a save error, a bad batch, a bug) or dies (killed, out of
memory, its machine lost) leaves the others blocked in their next collective until JAX's
heartbeat timeout aborts them with a C++ stack trace. Here every process beats a heartbeat
into JAX's coordination service, and a process that ends with an error leaves its error line
there; a thread in every process ends it with one clear line as soon as another process
reports an error, or when another's heartbeat has stopped for `timeout_secs`.
"""

import contextlib
import hashlib
import os
import sys
import threading
import time
import traceback

from jaxgpt.errors import Interrupted, UserError, first_line, one_line, report

_PREFIX = "jaxgpt/peers/"
_FAILED = _PREFIX + "failed"
_AGREED = "jaxgpt/agreed/"  # what each process must share with process 0 (value_of_process_0)
_READ = "jaxgpt/failure_read/"  # each process that read the failure report, just before it ends
_DONE = "done"
EXIT_CODE = 2
POLL_SECS = 1.0  # how often the watcher reads the other processes' reports
RESUME = ("the newest complete checkpoint is kept: run the same command on every process to "
          "resume from it")
TIMEOUT_SECS = 60  # how long a silent process is waited for (train.peer_timeout_secs' default)


@contextlib.contextmanager
def watch(timeout_secs: float, after: str = RESUME):
  """While the block runs, ends this process if another process fails or stops responding;
  its line ends with `after` (what is kept, and what to do)."""
  client = _client()
  if client is None:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  watcher = _Watcher(client, jax.process_index(), jax.process_count(), timeout_secs, after)
  watcher.start()
  try:
    yield
  except (Interrupted, KeyboardInterrupt):  # every process stops at the same step: no failure
    watcher.stop()
    raise
  except BaseException as e:  # pylint: disable=broad-except
    # Reported, then gone at once: the others end as soon as they read the report, and
    # process 0 takes the coordination service with it, which JAX would answer with an abort
    # here if this process were still running.
    if isinstance(e, UserError):
      code, reason = report(e), one_line(e)
    elif lost_a_peer(e):  # a collective whose other end died: the watcher's line, not a trace
      reason = (f"a collective with another process failed ({first_line(e)}): it probably "
                "died or lost its machine; see its log")
      watcher.stop(failure=reason)
      _exit(reason, after)
    else:
      traceback.print_exc()
      code, reason = 1, f"{type(e).__name__}: {first_line(e)}"
    watcher.stop(failure=reason)
    os._exit(code)  # pylint: disable=protected-access
  watcher.stop()


def check_same_command(description: str, timeout_secs: float, differs: str) -> None:
  """Every process must run the same command: with another workdir, config or data,
  processes block in their first save for good, or abort in a collective whose shapes
  differ. `differs`: what may differ, for the error ("its flags differ")."""
  digest = hashlib.sha256(description.encode()).hexdigest()
  if value_of_process_0("command", digest, timeout_secs) != digest:
    raise UserError(f"process {_process_index()} runs another command than process 0 ("
                    f"{differs}): start the same command on every process")


def value_of_process_0(name: str, value: str, timeout_secs: float) -> str:
  """Process 0's `value` of `name`, each process giving its own (`value` where this process
  is the only one)."""
  client = _client()
  if client is None:
    return value
  client.key_value_set(f"{_AGREED}{name}/{_process_index()}", value)
  return client.blocking_key_value_get(f"{_AGREED}{name}/0", int(timeout_secs * 1000))


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def lost_a_peer(error: BaseException) -> bool:
  """Whether `error` is a collective's on a connection that another process closed (Gloo's,
  on CPUs; elsewhere JAX's heartbeat or the watcher notices a dead process first)."""
  text = str(error).lower()
  return type(error).__name__ == "JaxRuntimeError" and any(
      words in text for words in ("connection reset", "connection closed", "broken pipe"))


def _client():
  """JAX's coordination-service client in a multi-process run, else None."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return None
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top  # no public API
    return distributed.global_state.client
  except (ImportError, AttributeError):  # a JAX without it: JAX's own heartbeat still applies
    return None


class _Watcher:
  """Beats this process's heartbeat and watches the other processes' beats and errors."""

  def __init__(self, client, process_id, process_count, timeout_secs, after: str):
    self._client, self._id, self._count, self._after = client, process_id, process_count, after
    self._timeout, self._interval = timeout_secs, POLL_SECS
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="jaxgpt-peers")

  def start(self):
    self._thread.start()

  def stop(self, failure: str | None = None):
    """Ends the watch; `failure` tells the other processes that this one failed."""
    self._stopped.set()
    self._thread.join()
    with contextlib.suppress(Exception):
      self._client.key_value_set(self._key(self._id), _DONE, allow_overwrite=True)
      if failure:  # the last word: process 0 may end at once, and the coordination service
        self._client.key_value_set(_FAILED, f"process {self._id} failed: {failure}")
        if self._id == 0:
          self._wait_until_read()

  def _wait_until_read(self):
    """Process 0's coordination service ends with it, and JAX aborts the processes still
    running with a C++ stack trace: wait (a few polls at most) until each running process
    has read the failure and is ending with its line."""
    deadline = time.monotonic() + 3 * self._interval + 1
    while time.monotonic() < deadline:
      entries = dict(self._client.key_value_dir_get(_PREFIX))
      read = dict(self._client.key_value_dir_get(_READ))
      if all(other == self._id or entries.get(self._key(other)) == _DONE
             or f"{_READ}{other}" in read for other in range(self._count)):
        time.sleep(0.1)  # from its report to its exit
        return
      time.sleep(0.05)

  def _key(self, process_id):
    return f"{_PREFIX}{process_id}"

  def _run(self):
    beat = 0
    # Each other process's last beat and when it changed (none yet: since the watch began).
    seen = {other: (None, time.monotonic()) for other in range(self._count)}
    while not self._stopped.wait(0 if beat == 0 else self._interval):
      beat += 1
      try:
        self._client.key_value_set(self._key(self._id), str(beat), allow_overwrite=True)
        entries = dict(self._client.key_value_dir_get(_PREFIX))
      except Exception as e:  # pylint: disable=broad-except
        if self._stopped.is_set():
          return
        _exit(f"lost contact with process 0, which runs the coordination service "
              f"({first_line(e)}): it probably died; see its log", self._after)
      if _FAILED in entries:
        with contextlib.suppress(Exception):
          self._client.key_value_set(f"{_READ}{self._id}", "1")
        _exit(entries[_FAILED], self._after)
      now = time.monotonic()
      for other in range(self._count):
        value = entries.get(self._key(other))
        if other == self._id or value == _DONE:
          continue
        if seen[other][0] != value:
          seen[other] = (value, now)
        elif now - seen[other][1] > self._timeout:
          _exit(f"process {other} has not responded for {self._timeout:.0f} s: it probably "
                "died or lost its machine; see its log", self._after)


def _exit(reason: str, after: str):
  """Ends this process at once: the main thread may be blocked in a collective for good."""
  if after and after not in reason:
    reason += f"; {after}"
  print(f"error: {reason}", file=sys.stderr, flush=True)
  os._exit(EXIT_CODE)  # pylint: disable=protected-access

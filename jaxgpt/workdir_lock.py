"""One training run per workdir: a lock that a second `train` on the same folder stops at.

The lock is an exclusive flock on WORKDIR/lock, which the kernel releases when its holder
exits however it ends (kill -9 included), so a stale lock never blocks a resume. While held,
the file names its holder (host, pid, start time) for the message of the run that finds it
taken; released, it has its old text back.
Filesystems without flock (some network and FUSE mounts) get a warning and no lock. In a run
of several processes, process 0 holds the lock for all of them.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time

from jaxgpt import runtime
from jaxgpt.errors import UserError

LOCK_FILE = "lock"
HOLDER_WAIT_S = 2.0  # how long a run that finds the lock held waits for its holder's name
# What flock answers where the filesystem cannot lock.
_UNSUPPORTED = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirBusy(UserError):
  """Another run holds the workdir's lock."""


@contextlib.contextmanager
def held(workdir: str):
  """Holds the workdir's lock while the block runs; a UserError if another run holds it.
  A run that took the lock and fails before it has written a result (refused at start) leaves
  the workdir as it found it: what it made goes (the folder too where it made it), and the
  lock file, which names its holder only while held, gets its old text back. A run that finds
  the lock taken changes nothing: what changed meanwhile is the holder's."""
  before = _snapshot(workdir)
  try:
    yield from _locked(workdir, os.path.join(workdir, LOCK_FILE))
  except WorkdirBusy:
    raise
  except BaseException:
    _undo_start_up(workdir, before)
    raise


def _snapshot(workdir: str) -> dict[str, tuple[int, int] | None] | None:
  """Every path under `workdir` with its file's size and modification time (None for a
  folder); None where `workdir` is not a folder."""
  if not os.path.isdir(workdir):
    return None
  found = {}
  for root, folders, files in os.walk(workdir):
    for name in folders + files:
      path = os.path.join(root, name)
      with contextlib.suppress(OSError):
        stat = os.lstat(path)
        found[os.path.relpath(path, workdir)] = (None if name in folders
                                                 else (stat.st_size, stat.st_mtime_ns))
  return found


def _undo_start_up(workdir: str, before: dict | None) -> None:
  """Removes what a run refused at start made, if that is all it changed: its lock, compiled
  programs, TensorBoard files, and empty checkpoint folders and metrics. A run that changed
  anything else (its config, metrics, checkpoints) had begun, and keeps all."""
  after, old = _snapshot(workdir) or {}, before or {}
  made = [path for path, stat in after.items()
          if path != LOCK_FILE and old.get(path, "absent") != stat]
  if not all(_made_at_start(path, after[path]) for path in made):
    return
  if LOCK_FILE not in old:
    made.append(LOCK_FILE)
  with contextlib.suppress(OSError):
    for path in sorted(made, reverse=True):  # what a folder holds before the folder
      path = os.path.join(workdir, path)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
    if before is None:
      os.rmdir(workdir)


def _made_at_start(path: str, stat: tuple[int, int] | None) -> bool:
  from jaxgpt import checkpoint, metrics  # pylint: disable=g-import-not-at-top
  if path.split(os.sep)[0] in (runtime.CACHE_DIR, metrics.TENSORBOARD_DIR):
    return True
  if path in (checkpoint.LATEST_DIR, checkpoint.BEST_DIR):  # not what they hold
    return True
  return path == metrics.METRICS_FILE and stat is not None and stat[0] == 0


def _locked(workdir: str, path: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  except (FileExistsError, NotADirectoryError):
    raise UserError(f"--workdir {workdir} is a file, not a folder: pass a folder (new or a "
                    "run's)") from None
  except OSError as e:
    if os.path.lexists(path) and os.access(workdir, os.W_OK):  # the folder is not the cause
      raise UserError(f"the lock file {path} cannot be opened for writing ({e.strerror}): make "
                      "it a writable file (chmod u+w, or chattr -i where it is immutable) or "
                      "delete it; no run holds a lock through a file it cannot open") from None
    raise UserError(f"--workdir {workdir} cannot be written ({e.strerror}): pass a folder "
                    "you can write to") from None
  with f:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(f"{workdir} is in use by another training run ({_holder(f)}): wait "
                        "for it to end or stop it, or pass another --workdir; sample, export "
                        "and bench can read it meanwhile") from None
    except OSError as e:
      if e.errno not in _UNSUPPORTED:
        raise
      print(f"warning: {workdir} cannot be locked on this filesystem ({e.strerror}): make "
            "sure no other training run uses it", file=sys.stderr, flush=True)
      yield
      return
    f.seek(0)
    previous = f.read()
    _rewrite(f, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "since": datetime.datetime.now().isoformat(timespec="seconds")}))
    try:
      yield
    finally:
      with contextlib.suppress(OSError):  # the workdir may have become read-only meanwhile
        _rewrite(f, previous)


def _rewrite(f, text: str) -> None:
  f.seek(0)
  f.truncate()
  f.write(text)
  f.flush()


def running_holder(workdir: str) -> str | None:
  """Who holds the workdir's lock as its file says, unless that process is known to be gone
  (on this host); None where no run holds it. Reads only: a lock taken here, even shared,
  would refuse a training run that starts meanwhile."""
  try:
    with open(os.path.join(workdir, LOCK_FILE), encoding="utf-8") as f:
      owner = json.loads(f.read())
    pid, host = int(owner["pid"]), str(owner["host"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if host == socket.gethostname() and not _alive(pid):
    return None
  return _described(owner)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # another user's process
    return True
  return True


def _described(owner: dict) -> str:
  """The lock file's holder, as a message names it."""
  return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"


def _holder(f) -> str:
  """Who holds the lock, as its file says. The holder writes that just after taking the lock,
  so a file that does not say yet is read again for up to HOLDER_WAIT_S."""
  deadline = time.monotonic() + HOLDER_WAIT_S
  while True:
    f.seek(0)
    try:
      return _described(json.loads(f.read()))
    except (ValueError, KeyError, TypeError):
      if time.monotonic() >= deadline:
        return "its holder did not say who it is"
      time.sleep(0.05)

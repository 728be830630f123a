"""One training run per workdir: a lock that a second `train` on the same folder stops at.

The lock is an exclusive flock on WORKDIR/lock, which the kernel releases when its holder
exits however it ends (kill -9 included), so a stale lock never blocks a resume. The file
names its holder (host, pid, start time) for the message of the run that finds it taken.
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

from jaxgpt import runtime
from jaxgpt.errors import UserError

LOCK_FILE = "lock"
# What flock answers where the filesystem cannot lock.
_UNSUPPORTED = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def held(workdir: str):
  """Holds the workdir's lock while the block runs; a UserError if another run holds it.
  A run that fails before it has written a result (refused at start) takes away what it made,
  and the folder too where it made it."""
  before = _listing(workdir)
  try:
    yield from _locked(workdir, os.path.join(workdir, LOCK_FILE))
  except BaseException:
    _remove_start_up_files(workdir, before)
    raise


def _listing(workdir: str) -> set[str] | None:
  """The names in `workdir`, or None where it does not exist."""
  try:
    return set(os.listdir(workdir))
  except OSError:
    return None


def _remove_start_up_files(workdir: str, before: set[str] | None) -> None:
  """Removes what a run refused at start made: its lock, compiled programs, and empty
  checkpoint folders and metrics (the event file of the same metrics goes with them)."""
  from jaxgpt import checkpoint, metrics  # pylint: disable=g-import-not-at-top
  new = (_listing(workdir) or set()) - (before or set())
  start_up = {LOCK_FILE, runtime.CACHE_DIR, checkpoint.LATEST_DIR, checkpoint.BEST_DIR,
              metrics.METRICS_FILE, metrics.TENSORBOARD_DIR}
  empty = {checkpoint.LATEST_DIR, checkpoint.BEST_DIR, metrics.METRICS_FILE}
  if not new or not new <= start_up or any(_has_data(os.path.join(workdir, n)) for n in new & empty):
    return
  with contextlib.suppress(OSError):
    for name in new:
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
    if before is None:
      os.rmdir(workdir)


def _has_data(path: str) -> bool:
  return bool(os.listdir(path)) if os.path.isdir(path) else os.path.getsize(path) > 0


def _locked(workdir: str, path: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  except (FileExistsError, NotADirectoryError):
    raise UserError(f"--workdir {workdir} is a file, not a folder: pass a folder (new or a "
                    "run's)") from None
  except OSError as e:
    if os.path.isfile(path) and os.access(workdir, os.W_OK) and e.errno in (errno.EACCES,
                                                                           errno.EPERM):
      raise UserError(f"the lock file {path} cannot be opened for writing ({e.strerror}): make "
                      "it writable (chmod u+w, or chattr -i where it is immutable) or delete "
                      "it; no run holds a lock through a file it cannot open") from None
    raise UserError(f"--workdir {workdir} cannot be written ({e.strerror}): pass a folder "
                    "you can write to") from None
  with f:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f"{workdir} is in use by another training run ({_holder(f)}): wait for "
                      "it to end or stop it, or pass another --workdir; sample, export and "
                      "bench can read it meanwhile") from None
    except OSError as e:
      if e.errno not in _UNSUPPORTED:
        raise
      print(f"warning: {workdir} cannot be locked on this filesystem ({e.strerror}): make "
            "sure no other training run uses it", file=sys.stderr, flush=True)
      yield
      return
    f.seek(0)
    f.truncate()
    json.dump({"host": socket.gethostname(), "pid": os.getpid(),
               "since": datetime.datetime.now().isoformat(timespec="seconds")}, f)
    f.flush()
    yield


def _holder(f) -> str:
  f.seek(0)
  try:
    owner = json.loads(f.read())
    return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
  except (ValueError, KeyError, TypeError):
    return "its holder did not say who it is"

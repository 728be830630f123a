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
import socket
import sys

from jaxgpt.errors import UserError

LOCK_FILE = "lock"
# What flock answers where the filesystem cannot lock.
_UNSUPPORTED = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def held(workdir: str):
  """Holds the workdir's lock while the block runs; a UserError if another run holds it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    f = open(os.path.join(workdir, LOCK_FILE), "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  except (FileExistsError, NotADirectoryError):
    raise UserError(f"--workdir {workdir} is a file, not a folder: pass a folder (new or a "
                    "run's)") from None
  except OSError as e:
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

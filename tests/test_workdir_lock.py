"""The workdir lock: one training run per folder; a refused run leaves the folder as it was."""

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from jaxgpt import runtime, workdir_lock
from jaxgpt.errors import UserError


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.held(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {os.getpid()} on "):
      with workdir_lock.held(workdir):
        pass
  with workdir_lock.held(workdir):  # released: free again
    assert json.loads((tmp_path / "run" / "lock").read_text())["pid"] == os.getpid()


def test_a_run_refused_at_start_removes_what_it_made(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(UserError):
    with workdir_lock.held(str(workdir)):
      (workdir / runtime.CACHE_DIR).mkdir()
      raise UserError("refused")
  assert not workdir.exists()


def test_a_run_that_finds_the_lock_taken_leaves_the_holders_start_up(tmp_path, monkeypatch):
  """The refused run looks at the folder before it tries the lock; what the holder made
  meanwhile (the folder, its lock, compiled programs) is the holder's and stays."""
  workdir = tmp_path / "run"
  snapshot = workdir_lock._snapshot  # pylint: disable=protected-access
  with contextlib.ExitStack() as holder:

    def holder_starts_after(path):
      before = snapshot(path)
      monkeypatch.setattr(workdir_lock, "_snapshot", snapshot)
      holder.enter_context(workdir_lock.held(path))
      (workdir / runtime.CACHE_DIR).mkdir()
      return before

    monkeypatch.setattr(workdir_lock, "_snapshot", holder_starts_after)
    with pytest.raises(workdir_lock.WorkdirBusy):
      with workdir_lock.held(str(workdir)):
        pass
    assert sorted(os.listdir(workdir)) == sorted([runtime.CACHE_DIR, workdir_lock.LOCK_FILE])
    assert json.loads((workdir / "lock").read_text())["pid"] == os.getpid()


def test_reading_a_workdir_that_a_training_run_is_starting_in_says_so(tmp_path):
  """Before the run's config.json and first checkpoint, sample said "config.json is missing:
  pass the --workdir that train printed", which was that workdir."""
  from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-12-07T14:00:00"}
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
  with pytest.raises(UserError, match=f"a training run \\(pid {os.getpid()} on .*\\) is starting"):
    run_loader.load_run(str(tmp_path))
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  holder["pid"] = int(gone.stdout)  # a run killed before it released the lock
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
  with pytest.raises(UserError, match="holds no jaxgpt run"):
    run_loader.load_run(str(tmp_path))

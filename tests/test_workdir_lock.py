"""The workdir lock: one training run per folder; a refused run leaves the folder as it was."""

import contextlib
import json
import os

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

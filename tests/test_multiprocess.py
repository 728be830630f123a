"""Several processes: two processes x 2 CPU devices train exactly like one process x 4."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgpt import runtime
from jaxgpt.data.pipeline import row_ids
from jaxgpt.errors import UserError

from test_cli import REPO
from test_resilience import SMALL
from test_trainer import _losses

STEPS = 10
ARGS = [*SMALL, f"--config.train.max_steps={STEPS}", "--config.train.checkpoint_every=5",
        "--config.train.eval_every=5"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def started():
  """The processes a test starts; those still running at its end are killed."""
  processes = []
  yield processes
  for p in processes:
    if p.poll() is None:
      p.kill()
      p.communicate()


def _start(text_file, workdir, devices, **env):
  # Every compilation is cached, so that the resumed processes show the cache at work.
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env}
  env.pop("JAX_COMPILATION_CACHE_DIR")  # this test checks the run's own cache in its workdir
  return subprocess.Popen(
      [sys.executable, "-m", "jaxgpt.train", *ARGS, "--config.data.source=text",
       f"--config.data.path={text_file}", f"--workdir={workdir}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_pair(text_file, workdir):
  address = f"127.0.0.1:{_free_port()}"
  return [_start(text_file, workdir, 2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)) for i in range(2)]


def _finish(process, timeout=240):
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


def _wait_for_step(workdir, step, processes):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline:
    for p in processes:
      assert p.poll() is None, _finish(p)
    if os.path.exists(path) and max(_losses(workdir), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} never came")


def test_two_processes_train_like_one_and_resume_together(text_file, tmp_path, started):
  reference = _start(text_file, tmp_path / "one", 4)
  workdir = tmp_path / "two"
  pair = _start_pair(text_file, workdir)
  started += [reference, *pair]
  _wait_for_step(workdir, 3, pair)
  for p in pair:
    p.send_signal(signal.SIGTERM)  # as a preempted Cloud TPU VM would get it
  for p in pair:
    code, _, stderr = _finish(p)
    assert code == 128 + signal.SIGTERM and "after step" in stderr, stderr
  stopped = max(_losses(workdir))
  assert stopped < STEPS and str(stopped) in os.listdir(workdir / "checkpoints")

  pair = _start_pair(text_file, workdir)
  started += pair
  results = [_finish(p) for p in pair]
  for code, stdout, stderr in results:
    assert code == 0, stderr
  assert f"resuming from the checkpoint of step {stopped}" in results[0][1]
  assert "step" not in results[1][1], "only process 0 prints"
  assert _finish(reference)[0] == 0
  expected, got = _losses(tmp_path / "one"), _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-4
  assert _losses(workdir, "val_loss") == pytest.approx(_losses(tmp_path / "one", "val_loss"),
                                                       abs=1e-4)
  assert os.listdir(workdir / runtime.CACHE_DIR), "nothing was compiled into the cache"


def _clear_distributed_env(monkeypatch):
  for name in runtime.DISTRIBUTED_VARIABLES:
    monkeypatch.delenv(name, raising=False)


def test_one_process_without_a_cluster_starts_nothing(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  _clear_distributed_env(monkeypatch)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  runtime.initialize_distributed()
  assert not calls


@pytest.mark.parametrize("env, words", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, ["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"]),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     ["whole numbers"]),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     ["JAX_PROCESS_ID=2"]),
])
def test_incomplete_distributed_variables_are_named(monkeypatch, env, words):
  _clear_distributed_env(monkeypatch)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserError) as error:
    runtime.initialize_distributed()
  for word in words:
    assert word in str(error.value)


def test_explicit_variables_are_passed_to_jax(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  _clear_distributed_env(monkeypatch)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:8476")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  runtime.initialize_distributed()
  assert calls == [("10.0.0.1:8476", 4, 3)]


@pytest.mark.parametrize("processes, micro_batches", [(2, 1), (4, 2), (2, 4)])
def test_processes_make_the_rows_of_one_process(processes, micro_batches):
  """Each micro-batch of the global batch holds the same rows for any number of processes."""
  rows = 8 // processes

  def global_micro_batches(count):
    parts = [row_ids(p, 8 // count, count, micro_batches).reshape(micro_batches, -1)
             for p in range(count)]
    return np.concatenate(parts, axis=1)

  assert rows % micro_batches == 0
  np.testing.assert_array_equal(global_micro_batches(processes), global_micro_batches(1))
  np.testing.assert_array_equal(global_micro_batches(1).ravel(), np.arange(8))

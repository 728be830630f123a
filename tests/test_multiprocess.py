"""Several processes: two processes x 2 CPU devices train exactly like one process x 4."""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgpt import checkpoint, peers, roll_call, runtime
from jaxgpt.data.pipeline import row_ids
from jaxgpt.errors import UserError

from helpers import REPO, logged_losses, tiny_args


STEPS = 10
ARGS = tiny_args(dropout=0.1, train=dict(eval_steps=2, max_steps=STEPS, eval_every=5,
                                         checkpoint_every=5, log_every=1, sample_tokens=0))
FAILING_SAVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "failing_save.py")
OTHER_CPU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "other_cpu.py")


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


def _start(text_file, workdir, devices, *args, script=("-m", "jaxgpt.train"), unset=(), **env):
  env = {**{k: v for k, v in os.environ.items() if k not in unset},
         "JAX_NUM_CPU_DEVICES": str(devices), **env}
  return subprocess.Popen(
      [sys.executable, *script, *ARGS, "--config.data.source=text",
       f"--config.data.path={text_file}", f"--workdir={workdir}", *args],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_pair(text_file, workdir, *args, **kwargs):
  return _start_pair_each(text_file, workdir, [args, args], **kwargs)


def _start_pair_each(text_file, workdir, args, **kwargs):
  """Processes 0 and 1 of a run, each with its own arguments."""
  address = f"127.0.0.1:{_free_port()}"
  return [_start(text_file, workdir, 2, *args[i], JAX_COORDINATOR_ADDRESS=address,
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), **kwargs) for i in range(2)]


def _finish(process, timeout=240):
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


def _wait_for_step(workdir, step, processes):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline:
    for p in processes:
      assert p.poll() is None, _finish(p)
    if os.path.exists(path) and max(logged_losses(workdir), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} never came")


def _assert_one_line_error(stderr, *words):
  assert "Traceback" not in stderr and "Check failure" not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), stderr
  for word in words:
    assert word in last, last


@pytest.fixture(scope="module")
def reference(text_file, tmp_path_factory):
  """An uninterrupted run of one process with 4 devices: its workdir."""
  workdir = tmp_path_factory.mktemp("one")
  code, _, stderr = _finish(_start(text_file, workdir, 4))
  assert code == 0, stderr
  return workdir


def _assert_same_run(workdir, reference):
  expected, got = logged_losses(reference), logged_losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-4
  assert logged_losses(workdir, "val_loss") == pytest.approx(logged_losses(reference, "val_loss"), abs=1e-4)


def _stop_step(stderr) -> int:
  return int(stderr.split("after step ")[1].split(",")[0])


@pytest.mark.slow
def test_processes_given_other_workdirs_or_configs_stop_with_one_line(text_file, tmp_path,
                                                                       started):
  """Another --workdir on process 1 blocked both processes in their first save for good;
  another model shape aborted both in a collective with a C++ stack."""
  for name, args in (("workdirs", [[], [f"--workdir={tmp_path / 'other'}"]]),
                     ("configs", [[], ["--config.model.n_embd=64"]])):
    pair = _start_pair_each(text_file, tmp_path / name, args)
    started += pair
    (code0, _, stderr0), (code1, _, stderr1) = [_finish(p) for p in pair]
    assert code1 == 2, stderr1
    _assert_one_line_error(stderr1, "process 1 runs another command than process 0",
                           "start the same command on every process")
    assert code0 == 2, stderr0
    _assert_one_line_error(stderr0, "process 1 failed")
    assert not os.path.exists(tmp_path / "other")


@pytest.mark.slow
def test_processes_whose_cpus_resolve_auto_products_differently_stop_with_one_line(
    text_file, tmp_path, started):
  """matmul_precision=auto takes bfloat16 products on a CPU with bfloat16 dot instructions:
  processes on CPUs with and without them would compile different programs."""
  pair = _start_pair_each(text_file, tmp_path, [[], []], script=(OTHER_CPU,), PYTHONPATH=REPO)
  started += pair
  (code0, _, stderr0), (code1, _, stderr1) = [_finish(p) for p in pair]
  assert code1 == 2, stderr1
  _assert_one_line_error(stderr1, "matmul_precision=auto takes", "process 1's CPU",
                         "--config.matmul_precision=float32")
  assert code0 == 2, stderr0
  _assert_one_line_error(stderr0, "process 1 failed")
  assert {p.name for p in tmp_path.rglob("*")} <= {"lock", "checkpoints"}  # nothing saved


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_together(text_file, tmp_path, started,
                                                          reference):
  workdir = tmp_path / "two"
  # Every compilation is cached in the run's own workdir, so the resumed pair shows it at work.
  own_cache = {"unset": ("JAX_COMPILATION_CACHE_DIR",),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  pair = _start_pair(text_file, workdir, **own_cache)
  started += pair
  _wait_for_step(workdir, 3, pair)
  for p in pair:
    p.send_signal(signal.SIGTERM)  # as a preempted Cloud TPU VM would get it
  stops = []
  for p in pair:
    code, _, stderr = _finish(p)
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    stops.append(_stop_step(stderr))
  assert stops[0] == stops[1] < STEPS
  assert str(stops[0]) in os.listdir(workdir / "checkpoints")

  pair = _start_pair(text_file, workdir, **own_cache)
  started += pair
  results = [_finish(p) for p in pair]
  for code, _, stderr in results:
    assert code == 0, stderr
  assert f"resuming from the checkpoint of step {stops[0]}" in results[0][1]
  assert "step" not in results[1][1], "only process 0 prints"
  _assert_same_run(workdir, reference)
  assert os.listdir(workdir / runtime.CACHE_DIR), "nothing was compiled into the cache"


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_at_one_step_and_one_process_resumes(
    text_file, tmp_path, started, reference):
  """A preempted worker: every process saves the same step; the run moves to 1 process."""
  workdir = tmp_path / "two"
  pair = _start_pair(text_file, workdir)
  started += pair
  _wait_for_step(workdir, 3, pair)
  pair[1].send_signal(signal.SIGTERM)
  (code0, _, stderr0), (code1, _, stderr1) = (_finish(p) for p in pair)
  assert code1 == 128 + signal.SIGTERM and "stopped by SIGTERM after step" in stderr1, stderr1
  assert code0 == 128 + signal.SIGTERM and "stopped by another process" in stderr0, stderr0
  assert _stop_step(stderr0) == _stop_step(stderr1) < STEPS
  code, _, stderr = _finish(_start(text_file, workdir, 4))
  assert code == 0, stderr
  _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_two_processes_train_from_token_shards_like_one_process_from_the_text(
    token_dir, tmp_path, started, reference, text_file):
  pair = _start_pair(text_file, tmp_path, "--config.data.source=tokens",
                     f"--config.data.path={token_dir}")
  started += pair
  for p in pair:
    code, _, stderr = _finish(p)
    assert code == 0, stderr
  _assert_same_run(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_best_periodic_and_final_saves_on_one_step_never_collide(text_file, tmp_path, started,
                                                                 trial):
  """Every other step is evaluated, a new best and a periodic save; the last is also final.
  Before the managers' barriers had keys of their own, this hung or failed 2 times in 3."""
  del trial
  pair = _start_pair(text_file, tmp_path, "--config.train.eval_every=2",
                     "--config.train.checkpoint_every=2", "--config.train.max_steps=12",
                     "--config.model.dropout=0")
  started += pair
  for p in pair:
    code, _, stderr = _finish(p, timeout=180)
    assert code == 0, stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "12", "8"]
  assert checkpoint.Checkpointer(tmp_path, read_only=True).best_step() is not None


@pytest.mark.slow
def test_a_dead_process_stops_the_others_with_one_line(text_file, tmp_path, started):
  pair = _start_pair(text_file, tmp_path, "--config.train.peer_timeout_secs=5",
                     "--config.train.max_steps=100000")
  started += pair
  _wait_for_step(tmp_path, 3, pair)
  pair[1].kill()
  killed = time.time()
  code, _, stderr = _finish(pair[0], timeout=120)
  assert code == 2 and time.time() - killed < 60
  _assert_one_line_error(stderr, "process 1 has not responded", "resume")


@pytest.mark.slow
def test_a_second_signal_ends_a_process_blocked_by_a_hung_peer(text_file, tmp_path, started):
  pair = _start_pair(text_file, tmp_path, "--config.train.max_steps=100000")
  started += pair
  _wait_for_step(tmp_path, 3, pair)
  pair[1].send_signal(signal.SIGSTOP)  # hung: process 0 waits for it in the next collective
  time.sleep(1)
  pair[0].send_signal(signal.SIGTERM)  # cannot finish its step, so cannot save
  time.sleep(1)
  pair[0].send_signal(signal.SIGTERM)
  code, _, stderr = _finish(pair[0], timeout=30)
  assert code == 128 + signal.SIGTERM and "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM again"), stderr


def test_process_0_refused_at_start_stops_the_others_with_its_line(text_file, tmp_path, started):
  """A workdir in use: process 0 ended at once, and JAX aborted process 1 (C++ stack trace)
  when the coordination service went with it, before process 1 read the report."""
  tmp_path.mkdir(exist_ok=True)
  with open(tmp_path / "lock", "a+", encoding="utf-8") as lock:
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the workdir
    started += _start_pair(text_file, tmp_path)
    for process in started:
      code, _, stderr = _finish(process, timeout=120)
      assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
      _assert_one_line_error(stderr, "is in use by another training run")


@pytest.mark.slow
def test_a_failed_save_on_one_process_stops_all_and_keeps_the_last_checkpoint(
    text_file, tmp_path, started):
  pair = _start_pair(text_file, tmp_path, "--config.train.checkpoint_every=2",
                     "--config.train.eval_every=2", script=(FAILING_SAVE,), PYTHONPATH=REPO)
  started += pair
  results = [_finish(p, timeout=180) for p in pair]
  for code, _, stderr in results:
    assert code == 2
    _assert_one_line_error(stderr)
  assert "No space left on device" in results[1][2]
  assert checkpoint.Checkpointer(tmp_path, read_only=True).latest_step() == 2


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


def test_a_collective_whose_peer_died_is_a_lost_peer_not_a_traceback():
  """Process 1 killed mid-step: process 0's all-reduce failed with Gloo's "Connection reset by
  peer" (1 in 5 tries) before the watcher saw the silence, and printed a traceback."""
  import jax  # pylint: disable=g-import-not-at-top
  reset = jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [pair.cc:534] Read error "
                                     "[127.0.0.1]:4567: Connection reset by peer")
  assert peers.lost_a_peer(reset)
  assert not peers.lost_a_peer(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory"))
  assert not peers.lost_a_peer(ValueError("Connection reset by peer"))


@pytest.mark.parametrize("env, words", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, ["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"]),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     ["whole numbers"]),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     ["JAX_PROCESS_ID=2"]),
    ({"JAX_COORDINATOR_ADDRESS": "notahost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     ["JAX_COORDINATOR_ADDRESS='notahost' is not HOST:PORT"]),  # "list index out of range"
    ({"JAX_COORDINATOR_ADDRESS": "h:", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     ["is not HOST:PORT"]),
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
  monkeypatch.setattr(roll_call, "take", lambda *a: calls.append(a))
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  runtime.initialize_distributed()
  assert calls == [("10.0.0.1", 8476, 4, 3), ("10.0.0.1:8476", 4, 3)]


@pytest.mark.parametrize("process_id, words", [
    (0, "process 1 of JAX_NUM_PROCESSES=2 did not check in within 2 s"),
    (1, "process 0 did not answer at JAX_COORDINATOR_ADDRESS=127.0.0.1:")])
def test_a_process_whose_peer_never_starts_stops_with_one_line(text_file, tmp_path, started,
                                                                 process_id, words):
  """It aborted in JAX's C++ join, with a stack trace, after five minutes."""
  code = ("from jaxgpt import roll_call, train; from jaxgpt.errors import run_cli; "
          "roll_call.TIMEOUT_SECS = 2; run_cli(train.main)")
  started.append(_start(text_file, tmp_path / "run", 2, script=("-c", code),
                        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
                        JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id)))
  code, _, stderr = _finish(started[0], timeout=60)
  assert code == 2
  assert len(stderr.strip().splitlines()) == 1 and words in stderr, stderr
  assert not (tmp_path / "run").exists()


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

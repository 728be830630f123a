"""Never lose a step: signals, kills, other meshes, strict and damaged checkpoints, NaNs."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxgpt import checkpoint
from jaxgpt.errors import UserError
from jaxgpt.trainer import Trainer

from helpers import REPO, assert_clean_error, logged_losses, run, text_config, tiny_args
from helpers import tiny_config


STEPS = 80
RUN_ARGS = tiny_args(dropout=0.1, train=dict(eval_steps=2, max_steps=STEPS, eval_every=40,
                                             checkpoint_every=10, log_every=1, sample_tokens=0))


def _train_args(text_file, workdir):
  return [*RUN_ARGS, "--config.data.source=text", f"--config.data.path={text_file}", f"--workdir={workdir}"]


@pytest.fixture(scope="module")
def reference(text_file, tmp_path_factory):
  """The uninterrupted run's losses by step."""
  workdir = tmp_path_factory.mktemp("reference")
  run("train", *_train_args(text_file, workdir))
  return logged_losses(workdir)


def _start(text_file, workdir):
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  return subprocess.Popen([sys.executable, "-m", "jaxgpt.train", *_train_args(text_file, workdir)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for_step(workdir, step, process):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()
    if os.path.exists(path) and max(logged_losses(workdir), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} never came")


def _train_steps_in_order(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(l)["step"] for l in f if "train_loss" in l]


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_resume_loses_nothing(text_file, reference, tmp_path):
  workdir = tmp_path / "run"
  process = _start(text_file, workdir)
  _wait_for_step(workdir, 25, process)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  assert time.time() - sent < 60
  assert process.returncode == 128 + signal.SIGTERM
  assert "Traceback" not in stderr and "stopped by SIGTERM after step" in stderr
  stopped = int(stderr.split("after step ")[1].split(",")[0])
  assert stopped >= 25
  assert checkpoint.Checkpointer(workdir, read_only=True).latest_step() == stopped
  run("train", *_train_args(text_file, workdir))
  steps = _train_steps_in_order(workdir)
  assert steps == list(range(1, STEPS + 1)), "a step was lost or repeated"
  resumed = logged_losses(workdir)
  assert max(abs(resumed[s] - reference[s]) for s in reference) <= 1e-6


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_stops_before_writing(text_file, reference, tmp_path):
  workdir = tmp_path / "run"
  runs = [_start(text_file, workdir), _start(text_file, workdir)]
  holder = _lock_holder(workdir, runs)
  holder.send_signal(signal.SIGSTOP)  # so the other run always finds the lock held
  try:
    other, = [p for p in runs if p is not holder]
    other.wait(timeout=300)
  finally:
    holder.send_signal(signal.SIGCONT)
  results = [(p, *p.communicate(timeout=300)) for p in runs]
  (winner, _, _), = [r for r in results if r[0].returncode == 0]
  (loser, _, stderr), = [r for r in results if r[0].returncode != 0]
  assert loser.returncode == 2 and "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "in use by another training run" in last, stderr
  assert f"pid {winner.pid} " in last
  assert _train_steps_in_order(workdir) == list(range(1, STEPS + 1))
  assert logged_losses(workdir) == reference


def _lock_holder(workdir, runs):
  """The one of `runs` that holds the workdir's lock, once it has written its pid there."""
  deadline = time.time() + 300
  while time.time() < deadline:
    with contextlib.suppress(OSError, ValueError):
      pid = json.loads((workdir / "lock").read_text())["pid"]
      return next(p for p in runs if p.pid == pid)
    time.sleep(0.01)
  raise AssertionError("no run took the lock")


def _without_model_flags(args):
  return [a for a in args if not a.startswith("--config.model.")]


@pytest.mark.slow
def test_a_resume_keeps_the_runs_identity(text_file, tmp_path):
  workdir, text = tmp_path / "run", tmp_path / "text.txt"
  with open(text_file, encoding="utf-8") as f:
    text.write_text(f.read())
  text_file = str(text)
  run("train", *_train_args(text_file, workdir), "--config.train.max_steps=10")
  # The config file alone sizes the model otherwise (as configs/default.py does by backend).
  resumed = run("train", *_without_model_flags(_train_args(text_file, workdir)),
                "--config.train.max_steps=20")
  assert "with its own" in resumed.stdout and "model.n_layer=2" in resumed.stdout
  assert "done: step 20" in resumed.stdout
  contradicted = run("train", *_train_args(text_file, workdir), "--config.model.n_layer=3",
                     "--config.train.max_steps=30", check=False)
  assert_clean_error(contradicted, "model.n_layer=3", "model.n_layer=2", "new --workdir")
  other = tmp_path / "other.txt"  # a character the run's tokenizer does not have
  other.write_text(text.read_text() + "\u00a7")
  assert_clean_error(run("train", *_train_args(other, workdir), check=False),
                     "training data differs", "'\u00a7'")
  text.write_text(text.read_text()[::-1])  # the same file and characters, other data
  best_before = _hashes(workdir / "best")
  other_data = run("train", *_train_args(text_file, workdir), "--config.train.max_steps=30",
                   check=False)
  assert_clean_error(other_data, "training data differs")
  assert _hashes(workdir / "best") == best_before


@pytest.mark.slow
def test_a_run_resumes_and_evaluates_from_any_folder_and_after_its_data_moves(text_file,
                                                                              tmp_path):
  """config.json kept data.path as typed: from another folder the run could be neither
  resumed (passing the path was refused as another data.path) nor evaluated."""
  with open(text_file, encoding="utf-8") as f:
    (tmp_path / "text.txt").write_text(f.read())
  workdir = tmp_path / "run"
  args = [*RUN_ARGS, "--config.data.source=text", f"--workdir={workdir}"]
  run("train", *args, "--config.data.path=text.txt", "--config.train.max_steps=10", cwd=tmp_path)
  saved_path = lambda: json.loads((workdir / "config.json").read_text())["data"]["path"]
  assert saved_path() == str(tmp_path / "text.txt")
  assert "done: step 20" in run("train", *args, "--config.train.max_steps=20").stdout  # from REPO
  assert "val " in run("eval", f"--workdir={workdir}", "--data=val").stdout
  (tmp_path / "text.txt").rename(tmp_path / "moved.txt")
  assert_clean_error(run("eval", f"--workdir={workdir}", "--data=val", check=False),
                     "does not exist", "--data=PATH")
  moved = run("train", *args, "--config.data.path=moved.txt", "--config.train.max_steps=30",
              cwd=tmp_path)
  assert "done: step 30" in moved.stdout and saved_path() == str(tmp_path / "moved.txt")
  (tmp_path / "moved.txt").write_text((tmp_path / "moved.txt").read_text() + "O Romeo!\n")
  assert_clean_error(run("eval", f"--workdir={workdir}", "--data=val", check=False),
                     "has changed since the run trained on it")


@pytest.mark.slow
def test_max_steps_at_or_below_the_saved_step_trains_nothing_and_keeps_the_config(text_file,
                                                                                 tmp_path):
  workdir = tmp_path / "run"
  run("train", *_train_args(text_file, workdir), "--config.train.max_steps=10")
  saved = (workdir / "config.json").read_text()
  result = run("train", *_train_args(text_file, workdir), "--config.train.max_steps=5")
  assert "already at step 10, past train.max_steps=5" in result.stdout
  assert (workdir / "config.json").read_text() == saved
  again = run("train", *_train_args(text_file, workdir), "--config.train.max_steps=10",
               "--config.train.warmup_steps=7")
  assert "already at step 10, at train.max_steps=10: nothing to train" in again.stdout
  assert (workdir / "config.json").read_text() == saved
  assert "resuming" not in again.stdout  # it said it resumed, then trained nothing
  assert _train_steps_in_order(workdir) == list(range(1, 11))


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_the_rerun_resumes(text_file, reference,
                                                                      small_disk):
  workdir, filler = small_disk / "run", small_disk / "filler"
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  full = subprocess.run([sys.executable, os.path.join(REPO, "tests", "filling_save.py"),
                         *_train_args(text_file, workdir)], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env={**env, "JAXGPT_TEST_FILLER": str(filler), "PYTHONPATH": REPO})
  assert full.returncode == 2, full.stderr
  assert "Traceback" not in full.stderr and "ERROR" not in full.stderr, full.stderr
  last = full.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the disk holding") and "is full" in last, full.stderr
  assert "the newest complete checkpoint, 10, is kept" in last
  assert checkpoint.Checkpointer(workdir, read_only=True).all_steps() == [10]
  filler.unlink()
  run("train", *_train_args(text_file, workdir))
  resumed = logged_losses(workdir)
  assert max(abs(resumed[s] - reference[s]) for s in reference) <= 1e-6


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line_and_can_be_sampled(text_file, small_disk, monkeypatch):
  workdir = small_disk / "run"
  run("train", *_train_args(text_file, workdir), "--config.train.max_steps=10")
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  assert_clean_error(run("train", *_train_args(text_file, workdir), check=False),
                     "cannot be written", "Read-only file system")
  # Sampling would keep its compiled programs in the run's xla_cache: here it cannot, quietly.
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  sampled = run("sample", f"--workdir={workdir}", "--max_new_tokens=5")
  assert sampled.stdout and "compilation cache" not in sampled.stderr, sampled.stderr


@pytest.mark.slow
def test_sigkill_resumes_from_the_newest_complete_checkpoint(text_file, reference, tmp_path):
  workdir = tmp_path / "run"
  process = _start(text_file, workdir)
  _wait_for_step(workdir, 35, process)
  process.kill()
  process.communicate()
  saved = checkpoint.Checkpointer(workdir, read_only=True).latest_step()
  assert saved is not None and saved >= 10  # the save of step 30 may still have been running
  run("train", *_train_args(text_file, workdir))
  steps = _train_steps_in_order(workdir)
  assert steps[-1] == STEPS and set(steps) == set(range(1, STEPS + 1))
  resumed = logged_losses(workdir)  # the last value logged for each step
  assert max(abs(resumed[s] - reference[s]) for s in reference) <= 1e-6
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]


def _drop_checkpoint(workdir, step):
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [((2, 2, 2), (1, 1, 1)), ((1, 1, 1), (2, 2, 2))])
def test_resume_on_another_mesh(text_file, tmp_path, first, second):
  """Checkpoint 5 of a 10-step run resumes on another mesh and ends like the 1-device run."""
  def trainer(workdir, mesh):
    c = text_config(text_file)
    c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    return Trainer(c, str(workdir), devices=jax.devices()[:int(np.prod(mesh))])

  trainer(tmp_path / "one", (1, 1, 1)).run()
  trainer(tmp_path / "moved", first).run()
  _drop_checkpoint(tmp_path / "moved", 10)
  trainer(tmp_path / "moved", second).run()
  expected, got = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "moved")
  np.testing.assert_allclose([got[s] for s in expected], list(expected.values()), atol=1e-4)


@pytest.mark.slow
def test_a_differently_shaped_model_is_refused_by_name(text_file, tmp_path):
  Trainer(text_config(text_file), str(tmp_path)).run()
  wider = text_config(text_file)
  wider.model.n_embd = 48
  with pytest.raises(UserError, match=r"parameter .* has shape"):
    Trainer(wider, str(tmp_path)).run()
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    assert json.load(f)["model"]["n_embd"] == 32, "a failed run overwrote the saved config"


def _hashes(folder):
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.join(root, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.mark.slow
def test_a_damaged_newest_checkpoint(text_file, tmp_path):
  workdir = tmp_path / "run"
  run("train", *_train_args(text_file, workdir), "--config.train.max_steps=20")
  shutil.copytree(workdir / "best", tmp_path / "best")
  _truncate_files(*(workdir / "best").glob("*/metrics"))  # read when best/ is opened
  sample = run("sample", f"--workdir={workdir}", "--max_new_tokens=10", "--prompt=ROMEO:")
  assert "best cannot be read" in sample.stderr and "ROMEO:" in sample.stdout
  for command in (["sample", f"--workdir={workdir}", "--checkpoint=best"],
                  ["train", *_train_args(text_file, workdir), "--config.train.max_steps=30"]):
    assert_clean_error(run(*command, check=False), "best cannot be read",
                       f"move {workdir / 'best' / '20'} out")
  shutil.rmtree(workdir / "best")
  shutil.copytree(tmp_path / "best", workdir / "best")
  older = _hashes(workdir / "checkpoints" / "10")
  _truncate_files(workdir / "checkpoints" / "20")
  sample = run("sample", f"--workdir={workdir}", "--max_new_tokens=10", "--prompt=ROMEO:")
  assert "checkpoint 20" in sample.stderr and "ROMEO:" in sample.stdout
  assert_clean_error(run("sample", f"--workdir={workdir}", "--checkpoint=20", check=False),
                     "checkpoint 20", "pass another --checkpoint")
  resume = run("train", *_train_args(text_file, workdir), "--config.train.max_steps=30", check=False)
  assert_clean_error(resume, "damaged", "20")
  assert _hashes(workdir / "checkpoints" / "10") == older
  for params in (workdir / "checkpoints").glob("*/params"), (workdir / "best").glob("*/params"):
    _truncate_files(*params)
  assert_clean_error(run("sample", f"--workdir={workdir}", check=False),
                     "every checkpoint", "is damaged")
  _truncate_files(workdir / "best")  # its metrics too, which opening the folder reads
  assert_clean_error(run("sample", f"--workdir={workdir}", check=False),
                     "every checkpoint", "is damaged")


def _truncate_files(*folders):
  """Cuts every file under the folders to half its size."""
  for folder in folders:
    for root, _, files in os.walk(folder):
      for name in files:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_sampled(text_file, tmp_path):
  run("train", *_train_args(text_file, tmp_path), "--config.train.eval_every=10",
      "--config.train.keep_checkpoints=1")
  best = checkpoint.Checkpointer(tmp_path, read_only=True).best_step()
  val = logged_losses(tmp_path, "val_loss")
  assert best == min(val, key=val.get)
  for which in ("best", "latest", str(STEPS)):
    result = run("sample", f"--workdir={tmp_path}", f"--checkpoint={which}", "--max_new_tokens=5")
    assert result.returncode == 0
  assert_clean_error(run("sample", f"--workdir={tmp_path}", "--checkpoint=3", check=False), "3")


@pytest.mark.slow
def test_a_workdir_with_only_its_best_checkpoint_is_kept(text_file, tmp_path):
  run("train", *_train_args(text_file, tmp_path), "--config.train.max_steps=40")
  shutil.rmtree(tmp_path / "checkpoints")
  best = _hashes(tmp_path / "best")
  assert_clean_error(run("train", *_train_args(text_file, tmp_path), check=False),
                     "best checkpoint (step 40)", "--checkpoint=best")
  assert_clean_error(run("sample", f"--workdir={tmp_path}", check=False), "--checkpoint=best")
  assert run("sample", f"--workdir={tmp_path}", "--checkpoint=best",
             "--max_new_tokens=5").returncode == 0
  assert _hashes(tmp_path / "best") == best
  _truncate_files(*(tmp_path / "best").glob("*/params"))
  damaged = _hashes(tmp_path / "best")
  assert_clean_error(run("train", *_train_args(text_file, tmp_path), check=False),
                     "best cannot be read", "no other checkpoint", "new --workdir")
  assert _hashes(tmp_path / "best") == damaged


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step(text_file, tmp_path):
  result = run("train", *_train_args(text_file, tmp_path), "--config.train.learning_rate=1e12",
               "--config.train.grad_clip=0", "--config.train.warmup_steps=0", check=False)
  assert_clean_error(result, "at step")
  assert "(None)" not in result.stderr  # it said "the newest good checkpoint (None) is kept"


@pytest.mark.parametrize("args, env, words", [
    (["--config.backend=gpu"], {}, ["backend=gpu"]),
    pytest.param([], {"JAX_PLATFORMS": "cuda"}, ["JAX_PLATFORMS"], marks=pytest.mark.slow),
])
def test_an_accelerator_that_cannot_start_is_an_error(text_file, tmp_path, args, env, words):
  result = subprocess.run([sys.executable, "-m", "jaxgpt.train", *_train_args(text_file, tmp_path), *args],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
  assert_clean_error(result, *words)


def test_sampling_needs_a_checkpoint(text_file, tmp_path):
  (tmp_path / "config.json").write_text(tiny_config().to_json())
  (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": "ab"}))
  assert_clean_error(run("sample", f"--workdir={tmp_path}", check=False), "checkpoint")


@contextlib.contextmanager
def _read_only(path):
  """`path`, a file, read-only on its own (a read-only bind mount of it: a file's mode does
  not stop root, who runs the tests)."""
  bound = _mount("--bind", path, path)
  if bound.returncode:
    pytest.skip(f"cannot bind-mount a file here: {bound.stderr.strip()}")
  try:
    read_only = _mount("-o", "remount,bind,ro", path)
    if read_only.returncode:
      pytest.skip(f"cannot make a bind mount read-only here: {read_only.stderr.strip()}")
    yield
  finally:
    subprocess.run(["umount", str(path)], check=True)


def _mount(*args):
  return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_a_read_only_lock_file_is_named_not_the_workdir(text_file, tmp_path):
  lock = tmp_path / "run" / "lock"
  lock.parent.mkdir()
  lock.write_text("")
  with _read_only(lock):
    result = run("train", *_train_args(text_file, lock.parent), check=False)
  assert_clean_error(result, f"the lock file {lock} cannot be opened for writing (Read-only "
                     "file system)", "make it a writable file", "or delete it")
  assert os.listdir(lock.parent) == ["lock"]


def test_a_read_only_metrics_file_is_one_line_and_changes_nothing(text_file, tmp_path):
  metrics = tmp_path / "run" / "metrics.jsonl"
  metrics.parent.mkdir()
  metrics.write_text('{"step": 1, "train_loss": 4.2}\n{"step": 2, "train_lo')  # a torn line
  with _read_only(metrics):
    result = run("train", *_train_args(text_file, metrics.parent), check=False)
  assert_clean_error(result, f"{metrics} cannot be written (Read-only file system)",
                     "make it writable", "nothing in the workdir was changed")
  assert os.listdir(metrics.parent) == ["metrics.jsonl"]
  assert metrics.read_text() == '{"step": 1, "train_loss": 4.2}\n{"step": 2, "train_lo'


@pytest.mark.slow
def test_a_lock_that_is_a_folder_is_named_not_the_workdir(text_file, tmp_path):
  lock = tmp_path / "run" / "lock"
  lock.mkdir(parents=True)
  result = run("train", *_train_args(text_file, lock.parent), check=False)
  assert_clean_error(result, f"the lock file {lock} cannot be opened for writing (Is a "
                     "directory)", "make it a writable file", "or delete it")
  assert os.listdir(lock.parent) == ["lock"]

"""The training loop end to end in-process: mesh parity, checkpoints, metrics, sampling."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from jaxgpt import checkpoint, metrics, sharding, state as state_lib
from jaxgpt.errors import UserError
from jaxgpt.trainer import Trainer

from helpers import REPO, logged_losses, text_config, tiny_args, tiny_config

@pytest.mark.slow
def test_ten_steps_on_a_2x2x2_mesh_equal_one_device(text_file, tmp_path):
  one = text_config(text_file)
  one.mesh.update(data=1, fsdp=1, tensor=1)
  Trainer(one, str(tmp_path / "one"), devices=jax.devices()[:1]).run()
  eight = text_config(text_file)
  eight.mesh.update(data=2, fsdp=2, tensor=2)
  Trainer(eight, str(tmp_path / "eight"), devices=jax.devices()[:8]).run()
  single, meshed = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "eight")
  assert sorted(single) == list(range(1, 11))
  np.testing.assert_allclose([meshed[s] for s in single], list(single.values()), atol=1e-4)


def test_a_micro_batch_that_does_not_split_over_the_processes_names_a_multiple_that_does(
    monkeypatch):
  from jaxgpt import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  config = tiny_config(train=dict(batch_size=6))
  with pytest.raises(UserError, match="2 data-parallel devices and 4 processes: make the "
                     "micro-batch a multiple of 4"):
    trainer_lib._check_batch(config, mesh)  # pylint: disable=protected-access


def test_a_run_that_cannot_open_its_metrics_closes_its_checkpoints(text_file, tmp_path,
                                                                   monkeypatch):
  """The metrics writer was opened before the try that closes the checkpoint managers."""
  closed = []
  close = checkpoint.Checkpointer.close
  monkeypatch.setattr(checkpoint.Checkpointer, "close",
                      lambda self: closed.append(self) or close(self))

  def unwritable(*_, **__):
    raise UserError("metrics.jsonl cannot be written")

  monkeypatch.setattr(metrics, "MetricsWriter", unwritable)
  trainer = Trainer(text_config(text_file), str(tmp_path / "run"), devices=jax.devices()[:1])
  with pytest.raises(UserError, match="cannot be written"):
    trainer.run()
  assert closed == [trainer.checkpoints]


@pytest.mark.slow
def test_run_leaves_metrics_config_tokenizer_and_checkpoints(text_file, tmp_path):
  workdir = str(tmp_path / "run")
  trainer = Trainer(text_config(text_file), workdir, devices=jax.devices()[:2])
  last = trainer.run()
  assert last["step"] == 10 and np.isfinite(last["val_loss"])
  assert set(logged_losses(workdir)) == set(range(1, 11))
  assert set(logged_losses(workdir, "val_loss")) == {5, 10}
  assert any("tokens_per_sec" in json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")))
  for name in ("config.json", "tokenizer.json", "tensorboard", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name))
  assert checkpoint.Checkpointer(workdir, read_only=True).latest_step() == 10
  text = trainer.sample(prompt="ROMEO:", max_new_tokens=20)
  assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


@pytest.mark.slow  # 15 s on 2 cores: keeps the fast subset under 3 minutes
def test_running_again_resumes_from_the_checkpoint(text_file, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = text_config(text_file, max_steps=10)
  Trainer(config, workdir, devices=jax.devices()[:1]).run()
  config.train.max_steps = 12
  trainer = Trainer(config, workdir, devices=jax.devices()[:1])
  assert trainer.run()["step"] == 12
  # Each run compiles its step ahead of time, and says what it needs of each device.
  assert capsys.readouterr().out.count("train step compiled in") == 2
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [json.loads(line)["step"] for line in f if "train_loss" in line]
  assert steps == list(range(1, 13))


@pytest.mark.slow
def test_checkpoint_save_then_restore_is_identical_on_another_mesh(text_file, tmp_path):
  config = text_config(text_file)
  trainer = Trainer(config, str(tmp_path / "a"), devices=jax.devices()[:4])
  with sharding.rules_context(trainer.mesh):
    state = state_lib.init_state(trainer.model, trainer.program.optimizer, trainer.mesh, 3)
  saver = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  saver.save(7, state)
  saver.close()
  config.mesh.update(data=1, fsdp=1, tensor=2)
  other = Trainer(config, str(tmp_path / "b"), devices=jax.devices()[:2])
  with sharding.rules_context(other.mesh):
    target = state_lib.abstract_state(other.model, other.program.optimizer, other.mesh)
  restored = checkpoint.Checkpointer(str(tmp_path / "ckpt"), read_only=True).restore(7, target)
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(state))
  wte = restored.params["wte"]
  assert wte.sharding.mesh.shape["tensor"] == 2


def test_a_torn_last_metrics_line_is_dropped_before_appending(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "tra')
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(2, train_loss=1.5)
  writer.close()
  assert logged_losses(tmp_path) == {1: 2.0, 2: 1.5}


@pytest.mark.slow
def test_a_run_writes_tensorboard_events_without_importing_tensorflow(text_file, tmp_path):
  """TensorBoard reads the run's scalars; with the NumPy pipeline nothing imports TensorFlow,
  whose import alone costs seconds of start-up (tensorboard's own writer imports it)."""
  workdir = tmp_path / "run"
  script = ("import runpy, sys\n"
            "sys.argv = ['train', *sys.argv[1:]]\n"
            "try:\n  runpy.run_module('jaxgpt.train', run_name='__main__')\n"
            "except SystemExit:\n  pass\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules)\n")
  result = subprocess.run(
      [sys.executable, "-c", script, "--config=shakespeare_char_cpu", f"--workdir={workdir}",
       *tiny_args(config=None, n_layer=1, n_embd=16, block_size=8,
                  data=dict(source="text", path=text_file),
                  train=dict(max_steps=4, log_every=1, sample_tokens=0))],
      cwd=REPO, capture_output=True, text=True, check=True)
  assert "tensorflow imported: False" in result.stdout, result.stdout + result.stderr
  assert "done: step 4" in result.stdout, result.stdout + result.stderr
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  losses = {e.step: e.value for e in events.Scalars("train_loss")}
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [v for _, v in sorted(logged_losses(workdir).items())], rtol=1e-6)
  assert [e.step for e in events.Scalars("val_loss")] == [4]

"""train.profile_steps writes a jax.profiler trace of those steps; param and update norms."""

import glob
import gzip
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxgpt import config as config_lib, optim, sharding, state as state_lib, steps
from jaxgpt.errors import UserError
from jaxgpt.model import GPT
from jaxgpt.trainer import Trainer

from helpers import assert_clean_error, run, tiny_args, tiny_config


def _train(text_file, workdir, max_steps, profile_steps):
  c = tiny_config(data=dict(source="text", path=text_file),
                  train=dict(max_steps=max_steps, log_every=1, profile_steps=profile_steps))
  Trainer(c, workdir, devices=jax.devices()[:1]).run()


def _traced_steps(workdir):
  """The step numbers of the "train" step annotations in the workdir's traces."""
  profile = os.path.join(workdir, "tensorboard", "plugins", "profile")
  assert glob.glob(os.path.join(profile, "*", "*.xplane.pb"))
  traced = set()
  for path in glob.glob(os.path.join(profile, "*", "*.trace.json.gz")):
    with gzip.open(path) as f:
      traced |= {int(event["args"]["step_num"]) for event in json.load(f)["traceEvents"]
                 if event.get("name") == "train"}
  return traced


@pytest.mark.slow
def test_profile_steps_trace_those_steps_and_log_norms(text_file, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  _train(text_file, workdir, max_steps=5, profile_steps="3,4")
  assert _traced_steps(workdir) == {3, 4}
  assert "profile of steps 3-4 written to" in capsys.readouterr().out
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f if "train_loss" in line]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  for r in records:
    assert np.isfinite(r["param_norm"]) and r["param_norm"] > 0
    assert np.isfinite(r["update_norm"]) and 0 < r["update_norm"] < r["param_norm"]


@pytest.mark.slow
def test_a_run_ending_in_the_window_and_its_resume_trace_their_steps(text_file, tmp_path):
  workdir = str(tmp_path / "run")
  _train(text_file, workdir, max_steps=3, profile_steps="2,4")
  assert _traced_steps(workdir) == {2, 3}
  shutil.rmtree(os.path.join(workdir, "tensorboard", "plugins"))
  _train(text_file, workdir, max_steps=6, profile_steps="2,4")
  assert _traced_steps(workdir) == {4}


@pytest.mark.slow
def test_update_norm_is_what_the_parameters_moved_by():
  config = tiny_config()
  model = GPT(config_lib.model_config(config, 30))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  shardings = state_lib.state_shardings(model, optimizer, mesh)
  train_step = steps.jit_train_step(model, optimizer, optim.learning_rate_schedule(config.train),
                                    state_lib.dropout_key(config.seed), mesh, shardings)
  x = np.random.default_rng(0).integers(0, 30, (8, 16), dtype=np.int32)
  norms = steps.ParameterNorms(config.lora.rank)
  with sharding.rules_context(mesh):
    state = state_lib.init_state(model, optimizer, mesh, config.seed)
    before = jax.device_get(state.params)
    copied = norms.before(state.params)  # as the trainer does: the step donates state
    xs, ys = (sharding.global_batch(z[None], mesh, 1) for z in (x, np.roll(x, -1, axis=1)))
    state, _ = train_step(state, (xs, ys), sharding.global_batch(np.zeros(8, np.int32), mesh))
    metrics = norms.after(copied, state.params)
    after = jax.device_get(state.params)

  def norm(tree):
    return np.sqrt(sum(np.sum(np.square(leaf, dtype=np.float64)) for leaf in jax.tree.leaves(tree)))

  moved = norm(jax.tree.map(np.subtract, after, before))
  assert moved > 0
  np.testing.assert_allclose(float(metrics["update_norm"]), moved, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["param_norm"]), norm(after), rtol=1e-5)


@pytest.mark.parametrize("value", ["3", "4,3", "-1,2", "0,2", "a,b", "1,2,3", "1.5,2"])
def test_a_malformed_profile_steps_is_a_user_error(value):
  c = tiny_config(train=dict(profile_steps=value))
  with pytest.raises(UserError, match="train.profile_steps") as error:
    config_lib.validate(c)
  assert "\n" not in str(error.value)


def test_a_malformed_profile_steps_is_one_line_on_the_command_line(tmp_path):
  result = run("train", *tiny_args(train=dict(profile_steps="4,3")), f"--workdir={tmp_path / 'w'}",
               check=False)
  assert_clean_error(result, "train.profile_steps='4,3'", "--config.train.profile_steps=10,20")

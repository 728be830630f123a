"""What a checkpoint holds: weights apart from the optimizer's state, and older layouts."""

import asyncio
import gc
import logging
import os
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxgpt import checkpoint, generate, run_loader
from jaxgpt.errors import UserError
from jaxgpt.state import TrainState
from jaxgpt.trainer import Trainer

from helpers import assert_clean_error, logged_losses, run, text_config, tiny_args


def _train(text_file, workdir, max_steps=10, **model):
  config = text_config(text_file, max_steps=max_steps)
  config.model.update(**model)
  trainer = Trainer(config, str(workdir), devices=jax.devices()[:1])
  trainer.run()
  return trainer


def _restore_state(trainer, step):
  """Checkpoint `step` of the trainer's run, as a resume reads it."""
  with trainer.context():
    saved = checkpoint.Checkpointer(trainer.workdir, read_only=True)
    return jax.device_get(saved.restore(step, trainer.program.abstract_state))


def _sample(workdir):
  """The newest checkpoint's step and a sample from it (temperature 1: every logit counts)."""
  run = run_loader.load_run(str(workdir))
  with run.context():
    pieces = generate.generate_text(run.model, run.params, run.tokenizer, "ROMEO:", 40,
                                    generate.Sampling(temperature=1.0), seed=3)
    return run.step, "".join(p[0] for p in pieces)


@pytest.mark.slow
def test_samples_do_not_depend_on_the_optimizer(text_file, tmp_path):
  """A checkpoint whose optimizer state has another structure (as after a change of the
  optimizer) cannot resume the run, yet samples exactly as before: sampling reads weights only."""
  trainer = _train(text_file, tmp_path)
  step, text = _sample(tmp_path)
  params = _restore_state(trainer, step).params
  other = optax.chain(optax.clip(1.0), optax.sgd(0.1, momentum=0.9)).init(params)
  saver = checkpoint.Checkpointer(str(tmp_path))
  saver.save(step + 1, TrainState(step=np.int32(step + 1), params=params, opt_state=other))
  saver.close()
  with pytest.raises(UserError):
    _restore_state(trainer, step + 1)
  assert _sample(tmp_path) == (step + 1, text)


def _with_layer_norm_level(tree):
  """Parameter paths as older jaxgpt versions named them: h_0/ln_1/LayerNorm_0/scale."""
  is_norm = lambda x: isinstance(x, dict) and "scale" in x
  return jax.tree.map(lambda x: {"LayerNorm_0": x} if is_norm(x) else x, tree, is_leaf=is_norm)


def _save_in_the_old_layout(state, workdir, step):
  """A checkpoint as older jaxgpt versions wrote them: the whole TrainState in one item."""
  manager = ocp.CheckpointManager(os.path.join(workdir, checkpoint.LATEST_DIR),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_with_layer_norm_level(state))))
  manager.wait_until_finished()
  manager.close()


@pytest.mark.slow
def test_a_checkpoint_in_the_old_layout_samples_and_resumes_exactly(text_file, tmp_path):
  new, old = tmp_path / "new", tmp_path / "old"
  trainer = _train(text_file, new, bias=True)
  os.makedirs(old)
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(new / name, old / name)
  _save_in_the_old_layout(_restore_state(trainer, 10), str(old), 10)
  assert os.listdir(old / "checkpoints" / "10" / "state")
  assert _sample(old) == _sample(new)
  _train(text_file, new, max_steps=12, bias=True)
  _train(text_file, old, max_steps=12, bias=True)
  expected, got = logged_losses(new), logged_losses(old)
  assert got == {step: expected[step] for step in (11, 12)}  # exactly


def test_a_reading_errors_reason_is_tensorstores_own_not_orbaxs_wrapper():
  # What Orbax raised for a checkpoint whose data files were cut short (orbax 0.12.8).
  cause = ValueError('OUT_OF_RANGE: Error reading "h_0.attn.c_attn.kernel/1.0.0.0" in OCDBT '
                     'database at local file "/w/checkpoints/4/params/": Requested byte range '
                     '[5728, 11455) is not valid for value of size 10')
  wrapper = Exception("Encountered error while reading array index: (slice(0, 32, 1),). See "
                      "full TensorStore details: <bound method pybind11_detail_function_record_"
                      "v1.spec of TensorStore({\n  'driver': 'zarr',\n})>.")
  wrapper.__cause__ = cause
  assert checkpoint._plain_reason(wrapper) == (  # pylint: disable=protected-access
      "OUT_OF_RANGE: Requested byte range [5728, 11455) is not valid for value of size 10")


def test_a_read_orbax_abandoned_is_not_reported_when_collected(caplog):
  """1 in 24 exports of a damaged checkpoint printed asyncio's "Future exception was never
  retrieved" with TensorStore's error after jaxgpt's one line; the exception's frames are
  TensorStore's, not Orbax's."""
  checkpoint._quiet_background_failures()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  future = loop.create_future()
  future.set_exception(ValueError("OUT_OF_RANGE: Requested byte range [0, 9) is not valid"))
  del future
  gc.collect()
  loop.close()
  assert "never retrieved" not in caplog.text and "OUT_OF_RANGE" not in caplog.text


def _log_to_absl(message):
  logging.getLogger("absl").error(message)


def test_orbax_errors_logged_through_absl_are_left_to_jaxgpts_line(caplog):
  """A damaged best/ made export print "ERROR:absl:Failed to json parse Metadata file"
  before jaxgpt's line: absl's logging function, not Orbax, was the record's origin."""
  checkpoint._quiet_background_failures()  # pylint: disable=protected-access
  orbax_code = compile("log('Failed to json parse Metadata file: x')",
                       os.path.join(os.path.dirname(ocp.__file__), "path", "step.py"), "exec")
  exec(orbax_code, {"log": _log_to_absl})  # pylint: disable=exec-used
  assert "json parse" not in caplog.text
  _log_to_absl("not Orbax's")
  assert "not Orbax's" in caplog.text


def _cut_array_files(step_dir):
  """Cuts every file of the arrays' data (TensorStore's d/ folders) to 10 bytes."""
  for root, _, files in os.walk(step_dir):
    if os.path.basename(root) == "d":
      for name in files:
        os.truncate(os.path.join(root, name), 10)


@pytest.mark.slow
def test_damaged_checkpoints_are_named_with_their_reason_in_plain_words(text_file, tmp_path):
  """Orbax's messages quoted an array index and TensorStore's spec, or said "'NoneType' object
  has no attribute 'tree'", and its unfinished reads printed tracebacks after the error."""
  workdir = tmp_path / "run"
  args = [*tiny_args(), "--config.data.source=text", f"--config.data.path={text_file}",
          f"--workdir={workdir}", "--config.train.checkpoint_every=2",
          "--config.train.sample_tokens=0", "--config.train.eval_steps=1"]
  run("train", *args, "--config.train.max_steps=6")
  assert run_loader.load_run(str(workdir), 2).step == 2  # a step as a number, as docs/ show
  _cut_array_files(workdir / "checkpoints" / "6")
  os.remove(workdir / "checkpoints" / "4" / "params" / "_METADATA")
  sample = run("sample", f"--workdir={workdir}", "--max_new_tokens=3")
  six, four = [line for line in sample.stderr.splitlines() if line.startswith("warning:")]
  assert six.startswith(f"warning: checkpoint 6 in {workdir}/checkpoints cannot be read "
                        "(OUT_OF_RANGE: Requested byte range ["), sample.stderr
  assert six.endswith("is not valid for value of size 10); trying an older checkpoint (the "
                      "damaged one is left in place)"), sample.stderr
  assert four == (f"warning: checkpoint 4 in {workdir}/checkpoints cannot be read (its "
                  "params/_METADATA file is missing); trying an older checkpoint (the damaged "
                  "one is left in place)"), sample.stderr
  resume = run("train", *args, "--config.train.max_steps=8", check=False)
  assert_clean_error(resume, "checkpoint 6", "OUT_OF_RANGE", "damaged")
  assert len(resume.stderr.strip().splitlines()) == 1, resume.stderr

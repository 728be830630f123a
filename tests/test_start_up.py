"""What a run checks before it trains, and what a refused run leaves behind: nothing."""

import os
import shutil
import subprocess

import pytest

from jaxgpt import checkpoint

from helpers import LINES, assert_clean_error, run, tiny_args


def _train(text_file, workdir, *args):
  return run("train", *tiny_args(), "--config.data.source=text", f"--config.data.path={text_file}",
             f"--workdir={workdir}", "--config.train.max_steps=2", "--config.train.eval_steps=1",
             "--config.train.sample_tokens=0", *args, check=False)


def _chattr(flag: str, path) -> None:
  if not shutil.which("chattr") or subprocess.run(["chattr", flag, str(path)],
                                                  capture_output=True, check=False).returncode:
    pytest.skip("chattr cannot make files immutable here")


def _listing(folder):
  return sorted(os.listdir(folder))


@pytest.mark.slow
def test_a_refused_run_leaves_no_lock_and_no_folder(text_file, tmp_path):
  new = tmp_path / "new"
  assert_clean_error(_train(text_file, new, "--config.model.n_head=3"), "n_head")
  assert not new.exists()
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  assert_clean_error(_train(text_file, existing, "--config.model.n_head=3"), "n_head")
  assert _listing(existing) == ["notes.txt"]


@pytest.mark.slow
def test_a_train_step_larger_than_the_memory_stops_before_its_first_step(tmp_path):
  text = tmp_path / "long.txt"
  text.write_text(LINES * 300)
  workdir = tmp_path / "run"
  # A tiny model whose attention scores alone, (4096, 2, 1024, 1024) float32, are 34 GB.
  result = _train(text, workdir, "--config.train.batch_size=4096",
                  "--config.model.block_size=1024", "--config.model.n_layer=1")
  assert_clean_error(result, "the train step cannot fit", "per device", "train.batch_size",
                     "model.block_size", "train.grad_accum_steps", "model.remat", "mesh.fsdp")
  assert "RESOURCE_EXHAUSTED" not in result.stderr
  assert not workdir.exists()


def test_an_immutable_lock_file_is_named(text_file, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = workdir / "lock"
  lock.write_text("")
  _chattr("+i", lock)
  try:
    result = _train(text_file, workdir)
  finally:
    _chattr("-i", lock)
  assert_clean_error(result, f"the lock file {lock}", "chattr -i")
  assert _listing(workdir) == ["lock"]


@pytest.mark.slow
def test_an_unwritable_metrics_file_on_resume_is_one_line(text_file, tmp_path):
  workdir = tmp_path / "run"
  assert _train(text_file, workdir).returncode == 0
  metrics = workdir / "metrics.jsonl"
  before = metrics.read_bytes()
  _chattr("+i", metrics)
  try:
    result = _train(text_file, workdir, "--config.train.max_steps=4")
  finally:
    _chattr("-i", metrics)
  assert_clean_error(result, str(metrics), "cannot be written", "chattr -i")
  assert metrics.read_bytes() == before
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_a_tf_data_run_prints_no_tensorflow_start_up_lines(text_file, tmp_path):
  pytest.importorskip("tensorflow")
  result = _train(text_file, tmp_path / "run", "--config.data.pipeline=tf")
  assert result.returncode == 0, result.stderr
  for noise in ("oneDNN", "absl::InitializeLog", "cuda"):
    assert noise not in result.stderr, result.stderr


def test_a_damaged_checkpoints_reason_is_plain_words():
  # What TensorStore said of a checkpoint with a flipped byte (orbax 0.12.8).
  said = ('DATA_LOSS: Error opening "zarr" driver: Error reading "h_0.attn.c_attn.kernel/.zarray"'
          ' in OCDBT database at local file "/w/checkpoints/10/params/": Error reading Byte range'
          ' [0, 1113) of local file "/w/checkpoints/10/params/d/3521": Error decoding b-tree '
          'node: CRC-32C checksum verification failed: expected=3689413349, actual=3129694955 '
          '[tensorstore_spec=\'{"context":{"cache_pool":{}},"driver":"zarr"}\']')
  assert checkpoint._plain_reason(ValueError(said)) == (  # pylint: disable=protected-access
      "DATA_LOSS: Error decoding b-tree node: CRC-32C checksum verification failed: "
      "expected=3689413349, actual=3129694955")
  bound = ("Error reading <bound method pybind11_detail_function_record_v1.read of "
           "TensorStore({...})>")
  assert "TensorStore" not in checkpoint._plain_reason(ValueError(bound))  # pylint: disable=protected-access

"""Ctrl-C at any moment of any command: exit status 130, one `stopped:` line, no traceback,
nothing half-written (the training loop's own save-and-stop is tested in test_resilience)."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import LINES, REPO, tiny_args, with_ctrl_c


def _interrupted(command, after: float):
  """Ctrl-C `after` seconds after Python has started the command (a SIGINT while the
  interpreter itself starts, before any program runs, is Python's own fatal error)."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  with tempfile.TemporaryDirectory() as folder:
    started = env["JAXGPT_TEST_STARTED"] = os.path.join(folder, "started")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(started) and time.time() < deadline and process.poll() is None:
      time.sleep(0.01)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


def _assert_stopped(returncode, stderr):
  lines = stderr.strip().splitlines()
  assert returncode == 130, stderr
  assert len(lines) == 1 and lines[0].startswith("stopped: interrupted (Ctrl-C)"), stderr


def _train(text_file, workdir):
  """A run long enough that a Ctrl-C in its first seconds never comes after its last step."""
  return with_ctrl_c("train", *tiny_args(), "--config.data.source=text",
                     f"--config.data.path={text_file}", f"--workdir={workdir}",
                     "--config.train.max_steps=100000", "--config.train.sample_tokens=0")


@pytest.mark.parametrize("after", [0.5])
def test_ctrl_c_while_train_starts(text_file, tmp_path, after):
  """Within its first seconds JAX's garbage-collection callback used to swallow it."""
  workdir = tmp_path / "run"
  _assert_stopped(*_interrupted(_train(text_file, workdir), after))
  assert not workdir.exists()


def test_ctrl_c_in_a_command_modules_top_level_exits_130():
  """After the package's imports and before run_cli calls main, as in a command module's own
  flag definitions (CI once caught export there): no KeyboardInterrupt traceback."""
  script = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "sys.argv = ['-m']\n"
            "import jaxgpt\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  _assert_stopped(result.returncode, result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("after", [1.5, 3.0])
def test_ctrl_c_while_xla_compiles_exits_130(after):
  """Python's shutdown crashed XLA's compiling threads: a segmentation fault after the line."""
  _assert_stopped(*_interrupted(with_ctrl_c("bench", "--compile_only"), after))


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.05, 0.2, 1.0, 2.0])
def test_ctrl_c_at_any_moment_of_train_start_up(text_file, tmp_path, after):
  workdir = tmp_path / "run"
  returncode, stderr = _interrupted(_train(text_file, workdir), after)
  if "saving and stopping after the current step" in stderr:  # it was training: the loop's
    assert returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped: stopped by SIGINT after step")
  else:
    _assert_stopped(returncode, stderr)
    left = sorted((str(p.relative_to(workdir)), p.stat().st_size) for p in workdir.rglob("*"))
    assert not workdir.exists(), (stderr, left)  # (CI once left lock and metrics.jsonl)


@pytest.fixture(scope="module")
def exportable_run(text_file, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "run"
  subprocess.run(with_ctrl_c("train", *tiny_args(), "--config.data.source=text",
                             f"--config.data.path={text_file}", f"--workdir={workdir}",
                             "--config.train.max_steps=2", "--config.train.sample_tokens=0"),
                 cwd=REPO, check=True, capture_output=True)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.05, 0.3, 0.8, 1.2, 2.0])
def test_ctrl_c_at_any_moment_of_export(exportable_run, tmp_path, after):
  out = tmp_path / "hf"
  returncode, stderr = _interrupted(with_ctrl_c("export", f"--workdir={exportable_run}",
                                                f"--out={out}"), after)
  if out.exists():  # it finished first: whole. A signal while Python exits, once its own
    # handlers are gone, ends the process by the signal itself (a shell's $? is 130 then too).
    assert returncode in (0, -signal.SIGINT) and "Traceback" not in stderr, stderr
    assert os.listdir(tmp_path) == ["hf"]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]
  else:
    _assert_stopped(returncode, stderr)
    assert not os.listdir(tmp_path)  # neither --out nor export's temporary folder


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.1, 1.0])
def test_ctrl_c_in_prepare_exits_130(tmp_path, after):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(LINES * 20000)
  returncode, stderr = _interrupted(with_ctrl_c("prepare", f"--input={corpus}",
                                                f"--out={tmp_path / 'out'}", "--workers=1",
                                                "--shard_tokens=1000"), after)
  assert returncode == 130 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1].startswith("stopped:"), stderr
  out = tmp_path / "out"
  assert not out.exists() or not [n for n in os.listdir(out) if n.endswith(".tmp")]

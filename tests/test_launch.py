"""launch/: the TPU VM script (shellcheck, --help, --dry-run) and the Colab notebook, run on CPU."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_cli import REPO

TPU_SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")
# What the notebook does that cannot happen here: network installs and Google Drive.
SKIPPED_COMMANDS = ("pip install", "git clone", "grep -v '^tensorflow'")
SKIPPED_MAGICS = ("%cd", "%load_ext", "%tensorboard")


def test_shell_scripts_pass_shellcheck():
  if not shutil.which("shellcheck"):
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  scripts = glob.glob(os.path.join(REPO, "launch", "*.sh"))
  result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def _tpu_script(*args, env=None):
  return subprocess.run(["bash", TPU_SCRIPT, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **(env or {})}, cwd=REPO)


def test_tpu_script_help():
  result = _tpu_script("--help")
  assert result.returncode == 0
  for word in ("--dry-run", "--bucket", "--spot", "--queued", "--accelerator", "ZONE"):
    assert word in result.stdout


def test_tpu_script_dry_run_prints_every_gcloud_command():
  result = _tpu_script("--dry-run", "--project=p", "--bucket=gs://b", "--spot", "all", "--",
                       "--config.train.max_steps=100", env={"ACCELERATOR_TYPE": "v4-16"})
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "gcloud compute tpus tpu-vm create jaxgpt --accelerator-type=v4-16" in out
  assert "--spot" in out and "--project=p" in out
  train = next(line for line in out.splitlines() if "jaxgpt.train" in line)
  assert "--worker=all" in train and "python -m jaxgpt.train" in train
  assert "--workdir=/mnt/jaxgpt/jaxgpt/default" in train and "max_steps=100" in train
  assert "gcsfuse" in out and "jaxgpt.sample" in out
  assert "gcloud compute tpus tpu-vm delete jaxgpt" in out


def test_tpu_script_queued_resource_and_bad_flags():
  out = _tpu_script("--dry-run", "--queued", "create", "delete").stdout
  assert "queued-resources create jaxgpt --node-id=jaxgpt" in out
  assert "queued-resources delete jaxgpt --force" in out
  result = _tpu_script("--dry-run", "--bucket=b")
  assert result.returncode == 2 and "gs://" in result.stderr


def _notebook():
  nbformat = pytest.importorskip("nbformat")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  return notebook


def _as_python(source: str) -> str:
  """A code cell as Python: `!cmd` runs through `_shell` with IPython's {name} expansion."""
  lines = []
  for line in source.splitlines():
    if line.startswith("!"):
      lines.append(f"_shell(f{line[1:]!r})")
    elif line.startswith(SKIPPED_MAGICS):
      continue
    else:
      assert not line.startswith("%"), f"a magic the test does not know: {line}"
      lines.append(line)
  return "\n".join(lines)


def test_notebook_trains_and_samples_on_cpu(tmp_path, text_file):
  small = ["--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
           "--config.model.block_size=16", "--config.train.batch_size=8",
           "--config.train.max_steps=10", "--config.train.eval_every=10",
           "--config.train.eval_steps=2", "--config.train.sample_tokens=20",
           "--config.data.source=text", f"--config.data.path={text_file}",
           "--config.data.pipeline=numpy"]
  outputs = []
  # `python` is this interpreter; JAX picks its CPU devices as it would on Colab.
  env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  env.pop("JAX_NUM_CPU_DEVICES")

  def shell(command):
    if any(skipped in command for skipped in SKIPPED_COMMANDS):
      return
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    outputs.append(result.stdout)

  namespace = {"_shell": shell}
  cells = [c.source for c in _notebook().cells if c.cell_type == "code"]
  for source in cells:
    if "google.colab" in source:
      continue
    exec(_as_python(source), namespace)  # pylint: disable=exec-used
    if "EXTRA_FLAGS = " in source:  # the settings cell: a small run in a temporary folder
      namespace.update(WORKDIR=str(tmp_path / "run"), EXTRA_FLAGS=" ".join(small))
  devices, train, sample = outputs
  assert devices.startswith("cpu")
  assert "done: step 10" in train and "---- sample ----" in train
  assert re.search(r"ROMEO:.+", sample)
  assert os.path.exists(tmp_path / "run" / "checkpoints" / "10")

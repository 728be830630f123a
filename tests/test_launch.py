"""launch/: the TPU VM script (shellcheck, --help, --dry-run, and its steps on a stand-in TPU VM
of local workers: tests/fake_gcloud.py) and the Colab notebook, run on CPU."""

import contextlib
import glob
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys

import pytest

import fake_gcloud

from helpers import LINES, REPO, tiny_args

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


def _tpu_script(*args, env=None, cwd=REPO, timeout=60):
  """Runs the launcher; past the timeout it is killed with every process it started (in its
  own session), but not the trainings, which detach from it (the tpu fixture kills those)."""
  with subprocess.Popen(["bash", TPU_SCRIPT, *args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                        cwd=cwd, start_new_session=True) as p:
    try:
      out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)
      out, err = p.communicate()
      raise AssertionError(f"{TPU_SCRIPT} {args} ran past {timeout}s\n{out}\n{err}") from None
  return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_tpu_script_help():
  result = _tpu_script("--help")
  assert result.returncode == 0
  for word in ("--dry-run", "--bucket", "--spot", "--queued", "--accelerator", "ZONE", "--mount",
               "MOUNT", "--skip-install", "SKIP_INSTALL", "stop"):
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
  for bucket in ("b", "gs://", "gs://b/sub/"):  # gcsfuse mounts a bucket, not a folder of one
    result = _tpu_script("--dry-run", f"--bucket={bucket}")
    assert result.returncode == 2 and "gs://NAME, a bucket's name alone" in result.stderr
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 b " in _tpu_script(
      "--dry-run", "--bucket=gs://b/", "setup").stdout
  result = _tpu_script("--dry-run", "--zone=")
  assert result.returncode == 2 and "--zone needs a zone" in result.stderr
  result = _tpu_script("--dry-run", "--bucket=gs://b", "--mount=mnt")
  assert result.returncode == 2 and "absolute" in result.stderr


def test_tpu_script_dry_run_mount_point_and_skip_install():
  out = _tpu_script("--dry-run", "--bucket=gs://b", "--mount=/data/my runs", "--skip-install",
                    "setup").stdout
  setup = _remote_commands(out)[-1]
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 b '/data/my runs'" in setup
  assert "uv " not in setup and setup.startswith('(test -x "$HOME"/jaxgpt-venv/bin/python')
  out = _tpu_script("--dry-run", "setup", "train", "sample").stdout
  assert "networkEndpoints.len()" in out  # how many workers: one, without a bucket
  assert '--workdir="$HOME"/jaxgpt-runs/default' in _remote_commands(out)[-1]  # sample


def _remote_commands(dry_run_output):
  """The --command of each ssh line that --dry-run printed."""
  lines = [shlex.split(line) for line in dry_run_output.splitlines() if " tpu-vm ssh " in line]
  return [word.split("=", 1)[1] for words in lines for word in words
          if word.startswith("--command=")]


# A worker's venv whose python records its arguments in ~/MODULE.args and prints a line;
# FAKE_PYTHON_SLEEP makes it run that long (SIGTERM ends it), FAKE_PYTHON_EXIT its exit status.
FAKE_PYTHON = """#!/bin/bash
printf '%s\\0' "$@" > "$HOME/$2.args"
echo "fake $2 ran"
if [ -n "${FAKE_PYTHON_SLEEP:-}" ]; then
  trap 'kill $!; exit 143' TERM
  sleep "$FAKE_PYTHON_SLEEP" & wait $!
fi
exit "${FAKE_PYTHON_EXIT:-0}"
"""


@pytest.fixture
def tpu(tmp_path):
  """tpu(workers, venv=None): the launcher's environment for a TPU VM of local workers
  (tests/fake_gcloud.py). Each worker's ~/jaxgpt-venv links to `venv`, or without it is a
  venv of FAKE_PYTHON beside an empty checkout. Trainings still running at the end are killed."""
  homes = []

  def make(workers, venv=None):
    env = fake_gcloud.install(tmp_path / "tpu", workers)
    env.update(TMPDIR=str(tmp_path), FAKE_PYTHON_SLEEP="", FAKE_PYTHON_EXIT="")
    for worker in range(workers):
      homes.append(tmp_path / "tpu" / "workers" / str(worker))
      if venv:
        os.symlink(venv, homes[-1] / "jaxgpt-venv")
      else:  # and an empty checkout
        _fake_venv(homes[-1] / "jaxgpt-venv")
        (homes[-1] / "jaxgpt").mkdir()
    return env

  yield make
  for home in homes:
    pid_file = home / "jaxgpt-train.pid"
    if pid_file.exists():
      with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # setsid: its own group


def _fake_venv(venv):
  os.makedirs(venv / "bin")
  (venv / "bin" / "activate").write_text(f'PATH="{venv}/bin:$PATH"\n')
  (venv / "bin" / "python").write_text(FAKE_PYTHON)
  os.chmod(venv / "bin" / "python", 0o755)


def _args(home, module):
  return (home / f"{module}.args").read_text().split("\0")[:-1]


def _run_folder(tmp_path):
  folder = tmp_path / "here"  # where the launcher runs and writes samples-RUN.txt
  folder.mkdir(exist_ok=True)
  return folder


@pytest.mark.parametrize("mode", ["home", "bucket", "disk"])
def test_tpu_script_train_and_sample_read_the_same_workdir(tpu, tmp_path, mode):
  env = tpu(1)
  mount = tmp_path / "mount point"
  storage = {"home": [], "bucket": ["--bucket=gs://b"], "disk": ["--disk=d"]}[mode]
  flag = "--config.data.path=/data/it's a \"file\" $HOME"
  result = _tpu_script("--run=r 1", f"--mount={mount}", *storage, "train", "logs", "sample",
                       "--", flag, env=env, cwd=_run_folder(tmp_path))
  assert result.returncode == 0, result.stderr
  home = tmp_path / "tpu" / "workers" / "0"
  workdir = str(home / "jaxgpt-runs" / "r 1") if mode == "home" else f"{mount}/jaxgpt/r 1"
  train = _args(home, "jaxgpt.train")
  assert train == ["-m", "jaxgpt.train", "--config=configs/default.py", f"--workdir={workdir}", flag]
  assert f"--workdir={workdir}" in _args(home, "jaxgpt.sample")
  assert "fake jaxgpt.train ran\ntraining finished" in result.stdout
  assert (_run_folder(tmp_path) / "samples-r 1.txt").read_text() == "fake jaxgpt.sample ran\n"


def test_tpu_script_logs_fails_when_training_fails(tpu, tmp_path):
  env = tpu(1)
  result = _tpu_script("train", "logs", "sample", env={**env, "FAKE_PYTHON_EXIT": "3"},
                       cwd=_run_folder(tmp_path))
  assert result.returncode == 1
  assert "training failed on worker 0 (exit status 3)" in result.stderr
  assert "is still up" in result.stderr
  assert not (_run_folder(tmp_path) / "samples-default.txt").exists()


def test_tpu_script_logs_without_training(tpu):
  result = _tpu_script("logs", env=tpu(1))
  assert result.returncode == 1 and "no training was started" in result.stderr


def test_tpu_script_refuses_a_second_training_until_stopped(tpu):
  env = {**tpu(2), "FAKE_PYTHON_SLEEP": "60"}
  bucket = ["--bucket=gs://b"]
  assert _tpu_script(*bucket, "train", env=env).returncode == 0
  for step in ("train", "setup"):  # setup would replace the checkout it runs from
    result = _tpu_script(*bucket, "--skip-install", step, env=env)
    assert result.returncode == 1 and "a training is still running" in result.stderr
  result = _tpu_script(*bucket, "stop", "logs", env=env)
  assert result.stdout.count("stopped the training") == 2
  assert result.returncode == 1 and "stopped by a signal" in result.stderr
  result = _tpu_script(*bucket, "train", "logs", env={**env, "FAKE_PYTHON_SLEEP": ""})
  assert result.returncode == 0, result.stderr


def test_tpu_script_setup_copies_or_clones_the_checkout(tpu, tmp_path):
  env = tpu(2, venv=tmp_path / "no venv")
  bucket = ["--bucket=gs://b", f"--mount={tmp_path / 'mnt'}", "--skip-install"]
  result = _tpu_script(*bucket, f"--repo=file://{REPO}", "setup", env=env)
  assert result.returncode == 1 and "has no ~/jaxgpt-venv" in result.stderr
  for worker in range(2):
    checkout = tmp_path / "tpu" / "workers" / str(worker) / "jaxgpt"
    assert (checkout / "launch" / "tpu_vm.sh").exists()
    shutil.rmtree(checkout)
  result = _tpu_script(*bucket, "setup", env=env)
  assert result.returncode == 1 and "has no ~/jaxgpt-venv" in result.stderr
  assert (tmp_path / "tpu" / "workers" / "1" / "jaxgpt" / "launch" / "tpu_vm.sh").exists()


def test_tpu_script_refuses_a_slice_without_a_bucket(tpu):
  env = tpu(2)
  for storage in ([], ["--disk=d"]):
    result = _tpu_script(*storage, "setup", "train", env=env)
    assert result.returncode == 2 and "2 workers" in result.stderr and "--bucket" in result.stderr
  commands = fake_gcloud.recorded(env)
  assert all(c[3:5] == ["tpu-vm", "describe"] for c in commands)


RUN_ARGS = tiny_args(config=None, n_layer=1, data=dict(source="text"),
                     train=dict(max_steps=10, eval_every=10, eval_steps=2, log_every=10,
                                sample_tokens=20))


def _train_for_real(tpu, tmp_path, text_file, workers, *options):
  """setup (copying this checkout), train, logs and sample on fake workers, on CPU."""
  env = tpu(workers, venv=sys.prefix)  # the workers already have this venv: --skip-install
  data = tmp_path / "it's plays.txt"  # a path the flags must quote
  shutil.copy(text_file, data)
  result = _tpu_script("--project=p", "--skip-install", "--run=plays", *options, "setup",
                       "train", "logs", "sample", "--", *RUN_ARGS, f"--config.data.path={data}",
                       env=env, cwd=_run_folder(tmp_path), timeout=150)
  assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
  assert "done: step 10" in result.stdout and "training finished" in result.stdout
  _check_sample(_run_folder(tmp_path) / "samples-plays.txt")
  _check_gcloud_commands(fake_gcloud.recorded(env), describe=not options)
  return env, result


def _check_sample(path):
  lines = [line for line in path.read_text().splitlines() if set(line) != {"-"}]  # separators
  assert "".join(lines).strip() and set("\n".join(lines)) <= set(LINES)


def _check_gcloud_commands(commands, describe):
  gcloud = [c for c in commands if c[0] == "gcloud"]
  assert all(c[1:4] == ["compute", "tpus", "tpu-vm"] and "--zone=us-central2-b" in c
             and "--project=p" in c for c in gcloud)
  steps = [(c[4], next((w for w in c if w.startswith("--worker=")), None)) for c in gcloud]
  # setup: copy, unpack, mount; train: is a training running, start it; logs; sample
  assert steps == [*([("describe", None)] if describe else []), ("scp", "--worker=all"),
                   *[("ssh", "--worker=all")] * 4, ("ssh", "--worker=0"), ("ssh", "--worker=0")]


@pytest.mark.slow
def test_tpu_script_trains_and_samples_on_one_worker(tpu, tmp_path, text_file):
  env, _ = _train_for_real(tpu, tmp_path, text_file, 1)
  home = tmp_path / "tpu" / "workers" / "0"
  assert (home / "jaxgpt-runs" / "plays" / "checkpoints" / "10").is_dir()
  assert not (home / "jaxgpt" / "$HOME").exists()
  # setup again (a code change) replaces the checkout, and the run was in it.
  result = _tpu_script("--skip-install", "setup", env=env, cwd=_run_folder(tmp_path))
  assert result.returncode == 0, result.stderr
  assert (home / "jaxgpt-runs" / "plays" / "checkpoints" / "10").is_dir()


@pytest.mark.slow
def test_tpu_script_trains_and_samples_on_two_workers(tpu, tmp_path, text_file):
  mount = tmp_path / "bucket"  # what gcsfuse mounts on every worker of a real slice
  env, result = _train_for_real(tpu, tmp_path, text_file, 2, "--bucket=gs://my-bucket",
                                f"--mount={mount}")
  assert (mount / "jaxgpt" / "plays" / "checkpoints" / "10").is_dir()
  assert "4 x cpu, 2 process(es)" in result.stdout
  gcsfuse = [c for c in fake_gcloud.recorded(env) if c[0] == "gcsfuse"]
  assert gcsfuse == [["gcsfuse", "--implicit-dirs", "--rename-dir-limit=1000000", "my-bucket",
                      str(mount)]] * 2


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


@pytest.mark.slow
def test_notebook_trains_and_samples_on_cpu(tmp_path, text_file):
  small = [*RUN_ARGS, f"--config.data.path={text_file}"]
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

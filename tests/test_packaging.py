"""jaxgpt as a package: `--config=NAME` finds the bundled config from any directory, and
`pip install .` puts jaxgpt and its configs where the commands run outside the clone."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from jaxgpt import cli
from helpers import REPO, assert_clean_error, run, tiny_args

SHORT = tiny_args(config=None, train=dict(max_steps=2, sample_tokens=0))


@pytest.mark.slow
def test_a_config_name_is_the_bundled_config_from_another_directory(tmp_path):
  result = run("train", "--config=shakespeare_char_cpu", *SHORT, cwd=tmp_path)
  workdir = tmp_path / "runs" / "shakespeare_char_cpu"
  assert f"workdir: {workdir}" in result.stdout
  assert (workdir / "checkpoints" / "2").is_dir()


def test_an_unknown_config_name_lists_the_choices(tmp_path):
  result = run("train", "--config=nope", cwd=tmp_path, check=False)
  assert_clean_error(result, "'nope'", "does not exist", "NAME: default, ", "gpt2_owt")


def test_config_names_resolve_and_files_here_win(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.py").write_text("def get_config():\n  return None\n")
  bundled = os.path.join(REPO, "configs")
  for given, resolved in (("gpt2_owt", f"{bundled}/gpt2_owt.py"),
                          ("default.py:arg", f"{bundled}/default.py:arg"),
                          ("configs/gpt2_owt.py", f"{bundled}/gpt2_owt.py"),
                          ("mine.py", "mine.py")):
    argv = ["train", f"--config={given}"]
    cli.check_config_file(argv)
    assert argv == ["train", f"--config={resolved}"]


@pytest.mark.slow
def test_pip_install_runs_from_another_directory(tmp_path):
  """`pip install .` of the working tree into a new virtual environment (its dependencies are
  this environment's packages, so nothing is downloaded), then a config by name from another
  directory: jaxgpt and its configs come from the installed package, not the clone, and no
  top-level `configs` package is installed to clash with another project's."""
  source = tmp_path / "source"
  for name in ("jaxgpt", "configs"):
    shutil.copytree(os.path.join(REPO, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        check=True, capture_output=True, text=True).stdout.strip()
  pathlib.Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                  "--no-deps", "--no-build-isolation", str(source)], check=True, timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_NUM_CPU_DEVICES")}
  where = subprocess.run([python, "-c", "import importlib.util, jaxgpt.configs; print("
                          "jaxgpt.__file__, jaxgpt.configs.__file__, "
                          "importlib.util.find_spec('configs'))"], cwd=elsewhere, env=env,
                         check=True, capture_output=True, text=True).stdout.split()
  assert all(path.startswith(site) for path in where[:2]) and where[2] == "None", where
  assert not os.path.exists(os.path.join(site, "configs"))
  # configs/default.py imports the configs it builds on, as jaxgpt.configs.
  shown = subprocess.run([python, "-m", "jaxgpt.train", "--config=configs/default.py", "--help"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert "values of --config=default:" in shown.stdout, shown.stderr
  result = subprocess.run([python, "-m", "jaxgpt.train", "--config=shakespeare_char_cpu", *SHORT],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert f"workdir: {elsewhere / 'runs' / 'shakespeare_char_cpu'}" in result.stdout

"""`pip install -r requirements.txt` finds wheels on the machines users have: Linux x86-64 and
aarch64 (glibc 2.28 or newer), macOS 12 or newer on arm64 and Windows amd64, each with Python
3.11 and 3.12.

What it proves: for each target, pip's own resolver, given that platform's wheel tags and
evaluating environment markers as that platform would (requirements.txt's own and those of
every dependency, e.g. orbax-checkpoint's uvloop everywhere but Windows), finds a complete set
of distributions, all of them wheels for that platform (or pure-Python ones, see SOURCE_ONLY),
so the install would not stop at "No matching distribution". It installs and runs nothing.
It needs PyPI, and skips without it.

pip evaluates markers for the running interpreter whatever `--platform` says, so the resolve
runs in a child Python whose `default_environment()` (pip's vendored packaging, which every
marker evaluation in pip calls) describes the target instead. The tensorflow distribution
each target gets checks that this took effect.
"""

import json
import pathlib
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.slow

REQUIREMENTS = pathlib.Path(__file__).resolve().parent.parent / "requirements.txt"
GLIBC_TAGS = [f"manylinux_2_{minor}" for minor in range(28, 16, -1)] + ["manylinux2014"]
# name: (marker values, wheel platform tags pip may install, the tensorflow distribution)
PLATFORMS = {
    "linux-x86_64": ({"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                      "platform_machine": "x86_64"},
                     [f"{tag}_x86_64" for tag in GLIBC_TAGS], "tensorflow-cpu"),
    "linux-aarch64": ({"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                       "platform_machine": "aarch64"},
                      [f"{tag}_aarch64" for tag in GLIBC_TAGS], "tensorflow"),
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix",
                     "platform_machine": "arm64"}, ["macosx_12_0_arm64"], "tensorflow"),
    "windows-amd64": ({"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                       "platform_machine": "AMD64"}, ["win_amd64"], "tensorflow-cpu"),
}
# Pure-Python dependencies that PyPI has only as source archives. pip accepts no source
# archive with --platform, so each is built here into its py3-none-any wheel, which installs
# on every platform.
SOURCE_ONLY = ["promise"]  # of tensorflow-datasets

CHILD = """
import json, sys
from pip._vendor.packaging import markers
target = markers.default_environment()
target.update(json.loads(sys.argv[1]))
markers.default_environment = lambda: dict(target)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def source_only_wheels(tmp_path_factory):
  try:
    urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15).close()
  except OSError as e:
    pytest.skip(f"PyPI cannot be reached ({e}): the requirements cannot be resolved")
  folder = tmp_path_factory.mktemp("wheels")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                  str(folder), *SOURCE_ONLY], check=True, timeout=300)
  return folder


PYTHONS = ["3.11", "3.12"]


def _resolve(platform: str, python: str, wheels, report) -> subprocess.Popen:
  """pip's dry-run install of requirements.txt for one target, writing its report."""
  markers, tags, _ = PLATFORMS[platform]
  markers = dict(markers, python_version=python, python_full_version=f"{python}.0",
                 implementation_name="cpython", platform_python_implementation="CPython")
  args = ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
          "--python-version", python, "--implementation", "cp", "--find-links", str(wheels),
          "--report", str(report), "-r", str(REQUIREMENTS)]
  for tag in tags:
    args += ["--platform", tag]
  return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(markers), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def resolves(source_only_wheels, tmp_path_factory):
  """Every target's resolve, all started at once (each mostly waits on PyPI): target ->
  (the running pip, its report's path)."""
  folder = tmp_path_factory.mktemp("reports")
  started = {}
  for platform in PLATFORMS:
    for python in PYTHONS:
      report = folder / f"{platform}-{python}.json"
      started[platform, python] = _resolve(platform, python, source_only_wheels, report), report
  yield started
  for process, _ in started.values():
    if process.poll() is None:
      process.kill()
      process.communicate()


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_requirements_resolve_to_wheels(platform, python, resolves):
  process, report = resolves[platform, python]
  _, stderr = process.communicate(timeout=300)
  errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
  assert process.returncode == 0, f"{platform}, Python {python}:\n" + "\n".join(errors)
  names = {item["metadata"]["name"].lower().replace("_", "-")
           for item in json.loads(report.read_text())["install"]}
  tensorflow = PLATFORMS[platform][2]
  other = {"tensorflow", "tensorflow-cpu"} - {tensorflow}
  assert tensorflow in names and not other & names, sorted(names)
  assert {"jax", "jaxlib", "flax", "orbax-checkpoint", "tensorstore"} <= names

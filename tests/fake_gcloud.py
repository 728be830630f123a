"""A stand-in for `gcloud compute tpus` on one machine, for the tests of launch/tpu_vm.sh.

Each worker of the TPU VM is a local bash in its own HOME (folder/workers/0, 1, ...), given
what JAX finds on a real slice by itself: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (for 2 workers or more), with JAX_PLATFORMS=cpu. `ssh --worker=all` runs every
worker's shell at the same time; `scp` copies into each home; `describe` answers the number
of workers only. `install(folder, workers)` writes gcloud, and stand-ins for sudo, mountpoint
and gcsfuse, into folder/bin and returns the environment to run the launcher with; each
command they get is appended to folder/commands.jsonl as a JSON list (see `recorded`).
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys

DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# The bucket is already the local folder the test gave as --mount: there is nothing to mount.
SHELL_STAND_INS = {"sudo": 'exec "$@"', "mountpoint": "exit 1"}


def install(folder, workers: int, devices: int = 2) -> dict:
  """Writes folder/bin and the workers' homes; returns the environment for the launcher."""
  bin_dir, homes = os.path.join(folder, "bin"), os.path.join(folder, "workers")
  os.makedirs(bin_dir)
  for worker in range(workers):
    os.makedirs(os.path.join(homes, str(worker)))
  python = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))}"
  commands = {name: f'exec {python} {name} "$@"' for name in ("gcloud", "gcsfuse")}
  for name, body in {**commands, **SHELL_STAND_INS}.items():
    path = os.path.join(bin_dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(f"#!/bin/sh\n{body}\n")
    os.chmod(path, 0o755)
  return {"PATH": bin_dir + os.pathsep + os.environ["PATH"], "FAKE_TPU_HOMES": homes,
          "FAKE_TPU_WORKERS": str(workers), "FAKE_TPU_DEVICES": str(devices),
          "FAKE_GCLOUD_LOG": os.path.join(folder, "commands.jsonl")}


def home(worker: int) -> str:
  return os.path.join(os.environ["FAKE_TPU_HOMES"], str(worker))


def recorded(env) -> list:
  """The commands recorded so far (env: what install returned), each a list of its words."""
  with open(env["FAKE_GCLOUD_LOG"], encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _record(words) -> None:
  line = (json.dumps(words) + "\n").encode()
  fd = os.open(os.environ["FAKE_GCLOUD_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
  try:
    os.write(fd, line)  # one write: the workers' commands may come at the same time
  finally:
    os.close(fd)


def _workers(worker: str) -> list:
  count = int(os.environ["FAKE_TPU_WORKERS"])
  return list(range(count)) if worker == "all" else [int(worker)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_env(worker: int, address: str) -> dict:
  # The rest passes through, the tests' compilation cache among it.
  env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
  env.update(HOME=home(worker), PWD=home(worker), JAX_PLATFORMS="cpu",
             JAX_NUM_CPU_DEVICES=os.environ["FAKE_TPU_DEVICES"])
  count = int(os.environ["FAKE_TPU_WORKERS"])
  if count > 1:
    env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(count),
               JAX_PROCESS_ID=str(worker))
  return env


def _ssh(worker: str, command: str) -> int:
  """Runs the command on the workers at the same time, as `--worker=all` does."""
  address = f"127.0.0.1:{_free_port()}"
  shells = [subprocess.Popen(["bash", "-c", command], cwd=home(w), env=_worker_env(w, address))
            for w in _workers(worker)]
  codes = [shell.wait() for shell in shells]
  return next((code for code in codes if code), 0)


def _scp(source: str, destination: str, worker: str) -> int:
  """Copies a file to NAME:PATH, PATH relative to each worker's home."""
  for w in _workers(worker):
    shutil.copy(source, os.path.join(home(w), destination.split(":", 1)[1]))
  return 0


def gcloud(args) -> int:
  words = [a for a in args if not a.startswith("--")]
  options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
  if words[:3] == ["compute", "tpus", "tpu-vm"]:
    what = words[3:]
    if what[:1] == ["ssh"]:
      return _ssh(options["worker"], options["command"])
    if what[:1] == ["scp"]:
      return _scp(what[1], what[2], options["worker"])
    if what[:1] == ["describe"] and options.get("format") == "value(networkEndpoints.len())":
      print(os.environ["FAKE_TPU_WORKERS"])
      return 0
  print(f"fake gcloud: not supported: {args}", file=sys.stderr)
  return 2


def gcsfuse(args) -> int:
  mount = args[-1]
  if not os.path.isdir(mount):
    print(f"gcsfuse: {mount} is not a folder", file=sys.stderr)
    return 1
  return 0


def main(argv) -> int:
  name, args = argv[0], argv[1:]
  _record([name, *args])
  return {"gcloud": gcloud, "gcsfuse": gcsfuse}[name](args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

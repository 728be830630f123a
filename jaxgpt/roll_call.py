"""Before the processes of a run join JAX's coordination service, each checks in with
process 0 at JAX_COORDINATOR_ADDRESS, over a plain socket on the same port.

JAX's own join ends a process whose peers never start (one host not started, a wrong
JAX_NUM_PROCESSES) with a C++ abort and a stack trace, after five minutes. Here every
process waits as long for the others, then a missing, doubled or differently numbered
process is one line in each process that is waiting for it. Once all have checked in, process
0 closes its socket and JAX's service takes the port.
"""

import socket
import time

from jaxgpt.errors import UserError

TIMEOUT_SECS = 300.0  # as long as JAX's own join waits
_RETRY_SECS = 0.5
_OK = "ok"


def take(host: str, port: int, num_processes: int, process_id: int) -> None:
  """Returns once all `num_processes` processes have checked in; a UserError otherwise."""
  deadline = time.monotonic() + TIMEOUT_SECS
  if process_id == 0:
    _gather(port, num_processes, deadline)
  else:
    _check_in(host, port, num_processes, process_id, deadline)


def _gather(port: int, num_processes: int, deadline: float) -> None:
  """Process 0: waits for processes 1.. to check in, then tells each whether all did."""
  with _listening(port) as server:
    joined = {}  # process id: its connection
    try:
      while len(joined) < num_processes - 1:
        connection = _accept(server, deadline, num_processes, joined)
        check_in = _read_check_in(connection, deadline)
        if check_in is None:  # something other than a jaxgpt process connected
          connection.close()
          continue
        problem = _problem(*check_in, num_processes, joined)
        if problem:
          _send(connection, problem)
          connection.close()
          raise UserError(problem)
        joined[check_in[0]] = connection
      for connection in joined.values():
        _send(connection, _OK)
      for connection in joined.values():  # they close first: the port stays free for JAX
        _wait_for_close(connection)
    except UserError as error:
      for connection in joined.values():
        _send(connection, str(error))
      raise
    finally:
      for connection in joined.values():
        connection.close()


def _listening(port: int) -> socket.socket:
  """A socket listening on `port` of every address of this host, IPv4 and IPv6 where it has
  both (as JAX's service listens)."""
  try:
    return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
  except (OSError, ValueError):  # no IPv6 here
    pass
  try:
    return socket.create_server(("", port))
  except OSError as e:
    raise UserError(f"process 0 cannot open port {port} of JAX_COORDINATOR_ADDRESS ({e.strerror}):"
                    " choose a free port for every process's JAX_COORDINATOR_ADDRESS") from None


def _accept(server: socket.socket, deadline: float, num_processes: int, joined: dict):
  server.settimeout(max(deadline - time.monotonic(), 0.01))
  try:
    connection, _ = server.accept()
  except socket.timeout:
    missing = [str(i) for i in range(1, num_processes) if i not in joined]
    raise UserError(
        f"process{'es' if len(missing) > 1 else ''} {', '.join(missing)} of "
        f"JAX_NUM_PROCESSES={num_processes} did not check in within {TIMEOUT_SECS:.0f} s: start "
        "the same command on every host, each with this JAX_COORDINATOR_ADDRESS and its own "
        "JAX_PROCESS_ID") from None
  return connection


def _read_check_in(connection: socket.socket, deadline: float) -> tuple[int, int] | None:
  """(process id, number of processes) that a process sent; None for anything else
  (something other than a jaxgpt process connected)."""
  try:
    process_id, num_processes = map(int, _read_line(connection, deadline).split())
    return process_id, num_processes
  except (OSError, ValueError):
    return None


def _problem(process_id: int, their_count: int, num_processes: int, joined: dict) -> str:
  if their_count != num_processes:
    return (f"process {process_id} was started with JAX_NUM_PROCESSES={their_count} and process 0"
            f" with {num_processes}: give every process the same JAX_NUM_PROCESSES")
  if process_id in joined:
    return (f"two processes were started with JAX_PROCESS_ID={process_id}: give each process "
            f"its own, 0 to {num_processes - 1}")
  return ""


def _check_in(host: str, port: int, num_processes: int, process_id: int, deadline: float):
  """Process 1..: checks in with process 0 (retrying until it listens); returns when it says
  that every process has, a UserError when it reports a problem or never answers."""
  while True:
    try:
      with socket.create_connection((host, port), timeout=2) as connection:
        _send(connection, f"{process_id} {num_processes}")
        answer = _read_line(connection, deadline)
      if answer == _OK:
        return
      if answer:
        raise UserError(answer)
    except (OSError, socket.timeout) as e:
      last = getattr(e, "strerror", None) or str(e) or type(e).__name__
    else:
      last = "it closed the connection"
    if time.monotonic() >= deadline:
      raise UserError(f"process 0 did not answer at JAX_COORDINATOR_ADDRESS={host}:{port} within "
                      f"{TIMEOUT_SECS:.0f} s ({last}): start process 0 (JAX_PROCESS_ID=0) on "
                      "that host, or give every process its address")
    time.sleep(_RETRY_SECS)


def _send(connection: socket.socket, line: str) -> None:
  try:
    connection.sendall(line.encode() + b"\n")
  except OSError:
    pass  # the other process is gone; it has its own error


def _read_line(connection: socket.socket, deadline: float) -> str:
  """One line from the connection ("" if it closed first); socket.timeout at the deadline."""
  data = b""
  while not data.endswith(b"\n"):
    connection.settimeout(max(deadline - time.monotonic(), 0.01))
    chunk = connection.recv(4096)
    if not chunk:
      return ""
    data += chunk
  return data.decode(errors="replace").strip()


def _wait_for_close(connection: socket.socket) -> None:
  try:
    _read_line(connection, time.monotonic() + 5)
  except OSError:
    pass

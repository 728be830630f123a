"""The processes of a multi-process run check in with process 0 before JAX joins them."""

import socket
import threading
import time

import pytest

from jaxgpt import roll_call
from jaxgpt.errors import UserError


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _take_all(processes: list[tuple[int, int]], timeout_secs: float, monkeypatch):
  """Runs roll_call.take for each (process id, number of processes) in its own thread, as
  processes on one host would; returns each one's error message ("" where it returned)."""
  monkeypatch.setattr(roll_call, "TIMEOUT_SECS", timeout_secs)
  port, results = _free_port(), {}

  def take(i, process_id, num_processes):
    try:
      roll_call.take("127.0.0.1", port, num_processes, process_id)
      results[i] = ""
    except UserError as e:
      results[i] = str(e)

  threads = [threading.Thread(target=take, args=(i, *p)) for i, p in enumerate(processes)]
  for thread in threads:
    thread.start()
    time.sleep(0.05)  # process 0 first, mostly; the others retry until it listens
  for thread in threads:
    thread.join(timeout_secs + 10)
  return [results[i] for i in range(len(processes))]


def test_every_process_returns_once_all_have_checked_in(monkeypatch):
  assert _take_all([(0, 3), (2, 3), (1, 3)], 20, monkeypatch) == ["", "", ""]


def test_processes_that_start_before_process_0_wait_for_it(monkeypatch):
  assert _take_all([(1, 2), (0, 2)], 20, monkeypatch) == ["", ""]


def test_a_process_that_never_starts_is_named_in_process_0(monkeypatch):
  started = time.monotonic()
  errors = _take_all([(0, 3), (1, 3)], 1, monkeypatch)
  assert time.monotonic() - started < 10
  assert "process 2 of JAX_NUM_PROCESSES=3 did not check in within 1 s" in errors[0]
  assert errors[1] == errors[0]  # the one that did check in is told why it stops


def test_without_process_0_the_others_name_its_address(monkeypatch):
  errors = _take_all([(1, 2)], 1, monkeypatch)
  assert "process 0 did not answer at JAX_COORDINATOR_ADDRESS=127.0.0.1:" in errors[0]
  assert "start process 0 (JAX_PROCESS_ID=0)" in errors[0]


def test_a_doubled_process_id_stops_every_process(monkeypatch):
  errors = _take_all([(0, 3), (1, 3), (1, 3)], 20, monkeypatch)
  assert errors == ["two processes were started with JAX_PROCESS_ID=1: give each process its "
                    "own, 0 to 2"] * 3


def test_another_number_of_processes_stops_both(monkeypatch):
  errors = _take_all([(0, 2), (1, 3)], 20, monkeypatch)
  assert errors == ["process 1 was started with JAX_NUM_PROCESSES=3 and process 0 with 2: give "
                    "every process the same JAX_NUM_PROCESSES"] * 2


def test_a_stray_connection_is_ignored(monkeypatch):
  monkeypatch.setattr(roll_call, "TIMEOUT_SECS", 20)
  port, errors = _free_port(), []
  gather = threading.Thread(target=lambda: roll_call.take("127.0.0.1", port, 2, 0))
  gather.start()
  for _ in range(100):  # something else connects first and sends no check-in
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1) as stray:
        stray.sendall(b"GET / HTTP/1.0\n")
      break
    except ConnectionRefusedError:
      time.sleep(0.05)
  try:
    roll_call.take("127.0.0.1", port, 2, 1)
  except UserError as e:
    errors.append(str(e))
  gather.join(20)
  assert not errors and not gather.is_alive()


def test_a_port_in_use_is_one_line(monkeypatch):
  with socket.create_server(("", 0)) as busy:
    port = busy.getsockname()[1]
    with pytest.raises(UserError, match=f"process 0 cannot open port {port} of "
                                        "JAX_COORDINATOR_ADDRESS"):
      roll_call.take("127.0.0.1", port, 2, 0)

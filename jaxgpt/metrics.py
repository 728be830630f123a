"""metrics.jsonl and TensorBoard event files in the workdir."""

import json
import os
import socket
import time

from jaxgpt.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
class MetricsWriter:
  """Writes metrics.jsonl and TensorBoard events in the workdir (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._path = os.path.join(workdir, METRICS_FILE)
    try:
      _drop_torn_last_line(self._path)
      self._jsonl = open(self._path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as e:
      raise UserError(f"{self._path} cannot be written ({e.strerror}): make it writable (chmod "
                      "u+w, or chattr -i where it is immutable) or pass another --workdir; "
                      "nothing in the workdir was changed") from None
    self._tensorboard = _TensorBoard(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, **values) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    try:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
      self._tensorboard.scalars(step, values)
    except OSError as e:
      raise UserError(f"writing {e.filename or self._path} failed ({e.strerror}): free space "
                      "or make it writable there, or pass another --workdir; the checkpoints "
                      "already written are kept: run the same command to resume from the "
                      "newest") from None

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _drop_torn_last_line(path: str) -> None:
  """Cuts a last line that a full disk or a kill left without its newline, so that every line
  of the file stays one JSON record."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - 1))
    if end == 0 or f.read(1) == b"\n":
      return
    start = max(0, end - (1 << 20))  # a record is far shorter than a megabyte
    f.seek(start)
    f.truncate(start + f.read().rfind(b"\n") + 1)


class _TensorBoard:
  """An event file written with the tensorboard package's record format alone: its own
  EventFileWriter opens files through TensorFlow when TensorFlow is installed, and importing
  TensorFlow takes seconds of every run's start-up. The file is made with the first scalars,
  so that a run refused at start adds none to the workdir."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._logdir = logdir
    self._file = None

  def _open(self) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter  # pylint: disable=g-import-not-at-top
    os.makedirs(self._logdir, exist_ok=True)
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._file = open(os.path.join(self._logdir, name), "wb")  # pylint: disable=consider-using-with
    self._writer = RecordWriter(self._file)
    self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._writer.write(event.SerializeToString())
    self._file.flush()

  def scalars(self, step: int, values: dict) -> None:
    if self._file is None:
      self._open()
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()

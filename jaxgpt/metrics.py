"""metrics.jsonl, TensorBoard event files, profiler traces, tokens/s and MFU."""

import json
import os
import socket
import time

import jax

from jaxgpt.errors import UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Dense bf16 peak FLOP/s per device, by a substring of `device.device_kind` (lower case).
PEAK_FLOPS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 197e12),   # v5e / v5 lite
    ("tpu v4", 275e12),
)


def peak_flops_per_device() -> float | None:
  kind = jax.devices()[0].device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def flops_per_token(model_config, num_params: int) -> float:
  """nanoGPT's estimate: 6 per weight (position table excluded) plus attention's 12*L*D*T."""
  c = model_config
  position_table = c.block_size * c.n_embd if c.position == "learned" else 0
  matmul_params = num_params - position_table
  return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.block_size


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


class StepTrace:
  """A jax.profiler trace of the train steps first..last of `window` (what remains of them in
  a resumed run), written under `logdir` as plugins/profile/<time>/<host>.xplane.pb and
  .trace.json.gz, where TensorBoard's profile tab finds it."""

  def __init__(self, logdir: str, window: tuple[int, int] | None):
    self._logdir = logdir
    self._first, self._last = window or (1, 0)
    self._started = self._latest = None  # the first and the latest step traced

  def before(self, step: int) -> None:
    if self._first <= step <= self._last:
      if self._started is None:
        jax.profiler.start_trace(self._logdir)
        self._started = step
      self._latest = step

  def after(self, step: int, state) -> None:
    """Ends the trace at the window's last step, once that step has run."""
    if step == self._last:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    """Writes the trace, if one is running (a run may end before the window does)."""
    if self._started is None:
      return
    jax.profiler.stop_trace()
    print(f"profile of steps {self._started}-{self._latest} written to {self._logdir}/plugins/"
          f"profile: view it with `tensorboard --logdir {self._logdir}` (its Profile tab needs "
          "`pip install xprof`), or open its .trace.json.gz in ui.perfetto.dev", flush=True)
    self._started = None


class Throughput:
  """Tokens/s and MFU between two calls of `measure`."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, num_devices: int):
    self._tokens_per_step = tokens_per_step
    self._flops_per_token = flops_per_token
    peak = peak_flops_per_device()
    self._peak = None if peak is None else peak * num_devices
    self._last = None

  def measure(self, step: int) -> dict:
    now = time.perf_counter()
    last, self._last = self._last, (step, now)
    if last is None or step == last[0]:
      return {}
    seconds_per_step = (now - last[1]) / (step - last[0])
    tokens_per_sec = self._tokens_per_step / seconds_per_step
    out = {"tokens_per_sec": tokens_per_sec, "seconds_per_step": seconds_per_step}
    if self._peak:
      out["mfu"] = tokens_per_sec * self._flops_per_token / self._peak
    return out


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"

"""Console progress, metrics.jsonl, TensorBoard event files, tokens/s and MFU."""

import json
import os
import time

import jax

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


def peak_flops_per_device(device=None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def flops_per_token(model_config, num_params: int) -> float:
  """nanoGPT's estimate: 6 per weight (position table excluded) plus attention's 12*L*D*T."""
  c = model_config
  matmul_params = num_params - c.block_size * c.n_embd
  return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.block_size


class MetricsWriter:
  """Writes metrics.jsonl and TensorBoard events in the workdir (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tensorboard = _TensorBoard(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, **values) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._tensorboard.scalars(step, values)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


class _TensorBoard:
  """Event files written with the tensorboard package alone (no TensorFlow needed)."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = EventFileWriter(logdir)

  def scalars(self, step: int, values: dict) -> None:
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
    self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                                 summary=summary))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


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

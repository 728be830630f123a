"""Tokens per second, and the model FLOPs utilisation (MFU) where the device's peak is known."""

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


def peak_flops_per_device() -> float | None:
  kind = jax.devices()[0].device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def flops_per_token(model_config, num_params: int) -> float:
  """nanoGPT's estimate: 6 per weight (position table excluded) plus attention's 12*L*D*T."""
  c = model_config
  position_table = c.block_size * c.n_embd if c.position == "learned" else 0
  matmul_params = num_params - position_table
  return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.block_size


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

"""A progress line on stderr for a long job: counts, rate and, when the total is known, the
share done and the time left. On a terminal the line is rewritten in place every couple of
seconds; in a log a new line is written every ten seconds."""

import sys
import time

TERMINAL_EVERY_SECS = 2.0
LOG_EVERY_SECS = 10.0


def duration(seconds: float) -> str:
  if seconds < 10:
    return f"{seconds:.1f}s"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def count(value: float) -> str:
  """1,234 / 12.3k / 4.57M / 7.89G."""
  if value >= 1e9:
    return f"{value / 1e9:,.2f}G"
  if value >= 1e6:
    return f"{value / 1e6:.2f}M"
  if value >= 1e4:
    return f"{value / 1e3:.1f}k"
  return f"{value:,.0f}"


class ProgressLine:
  """`update(...)` as often as convenient; a line is shown only every few seconds."""

  def __init__(self, label: str, total_bytes: int | None, stream=None):
    self.label, self.total_bytes = label, total_bytes
    self.stream = stream or sys.stderr
    self.terminal = self.stream.isatty()
    self.every = TERMINAL_EVERY_SECS if self.terminal else LOG_EVERY_SECS
    self.started = self._shown = time.monotonic()
    self._open = False  # a terminal line is waiting for its newline

  def update(self, documents: int, tokens: int | None, bytes_read: int) -> None:
    now = time.monotonic()
    if now - self._shown >= self.every:
      self._shown = now
      self._show(self.describe(documents, tokens, bytes_read, now - self.started))

  def describe(self, documents: int, tokens: int | None, bytes_read: int, elapsed: float) -> str:
    parts = [f"{documents:,} documents"]
    if tokens is not None:
      parts += [f"{count(tokens)} tokens", f"{count(tokens / max(elapsed, 1e-9))} tokens/s"]
    if self.total_bytes:
      share = min(bytes_read / self.total_bytes, 1.0)
      parts.append(f"{share:.0%} of {self.total_bytes / 1e6:,.1f} MB")
      if share > 0:
        parts.append(f"ETA {duration(elapsed * (1 - share) / share)}")
    else:
      parts.append(f"{bytes_read / 1e6:,.1f} MB read")
    return f"{self.label}: {', '.join(parts)}"

  def _show(self, line: str) -> None:
    if self.terminal:
      self.stream.write("\r\033[K" + line)
      self._open = True
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    """Ends a line left open on the terminal."""
    if self._open:
      self.stream.write("\n")
      self.stream.flush()
      self._open = False

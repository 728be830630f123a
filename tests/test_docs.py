"""The documentation: docs/config.md is the generated config reference, the README stays short,
and every relative link in README.md and docs/*.md points to a file that exists."""

import os
import re

import pytest

from jaxgpt import config_reference
from jaxgpt import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = os.path.join(REPO, "docs")
# [text](target) outside code; the target up to a space, ')' or '#'.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(?:#[^)\s]*)?\)")


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _pages() -> list[str]:
  return [README] + sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS)
                           if name.endswith(".md"))


def _links(path: str) -> list[str]:
  text = re.sub(r"```.*?```", "", _read(path), flags=re.DOTALL)  # not inside code blocks
  text = re.sub(r"`[^`\n]*`", "", text)
  return [target for target in LINK.findall(text)
          if target and not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # no URLs or mailto:


def test_config_reference_is_current():
  """docs/config.md equals what `python -m jaxgpt.config_reference` generates now."""
  assert _read(os.path.join(DOCS, "config.md")) == config_reference.markdown(), (
      f"docs/config.md is out of date: run `{config_reference.CONFIG_REFERENCE_COMMAND}`")


def test_config_reference_has_every_key_default_and_meaning():
  reference = config_reference.markdown()
  meanings = config_lib.key_meanings()
  for key, value in config_lib.flat_items(config_lib.base_config()):
    row = next((line for line in reference.splitlines() if line.startswith(f"| `{key}` |")),
               None)
    assert row, f"{key} is not in docs/config.md"
    assert f"`{value!r}`" in row, row
    assert meanings.get(key), f"{key} has no meaning in config.key_meanings()"


def test_readme_is_short():
  lines = _read(README).count("\n")
  assert lines <= 200, f"README.md has {lines} lines: move detail to docs/ (at most 200)"


def test_readme_keeps_the_two_commands():
  """.ci/run runs the README's test command; CONTRACT.md's set-up commands are in it."""
  readme = _read(README)
  assert "pip install -r requirements.txt && python -m jaxgpt.train" in readme
  assert "pip install -r requirements-dev.txt && pytest " in readme


def test_readme_links_every_docs_page():
  linked = {os.path.normpath(target) for target in _links(README)}
  for page in _pages()[1:]:
    assert os.path.relpath(page, REPO) in linked, f"README.md does not link {page}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_exist(page):
  for target in _links(page):
    path = os.path.normpath(os.path.join(os.path.dirname(page), target))
    assert os.path.exists(path), f"{os.path.relpath(page, REPO)} links {target}, which is missing"

"""docs/config.md, the reference of every config key, generated from the config and model
definitions: `python -m jaxgpt.config_reference > docs/config.md`."""

from jaxgpt import config as config_lib
from jaxgpt.configs import recipe

CONFIG_REFERENCE_COMMAND = "python -m jaxgpt.config_reference > docs/config.md"


def markdown() -> str:
  """docs/config.md: every config key with its default (base_config's) and meaning, one
  Markdown table per section, and the keys configs/recipe.py sets."""
  meanings = config_lib.key_meanings()
  sections = {}
  for key, value in config_lib.flat_items(config_lib.base_config()):
    sections.setdefault(key.rpartition(".")[0], []).append((key, value))
  lines = ["# Config keys", "",
           "Generated from `jaxgpt/config.py`, `jaxgpt/model.py` and `configs/recipe.py`;",
           f"`{CONFIG_REFERENCE_COMMAND}` rewrites this page (`tests/test_docs.py` checks",
           "that it is current).", "",
           "Every key can be set on the command line, e.g. `--config.model.n_layer=8`. The",
           "defaults below are `base_config()`'s (nanoGPT's shakespeare_char settings, GPT-2's",
           "architecture); each config file changes some of them, and `configs/default.py` and",
           "the speedrun configs apply today's recipe (the last table).",
           "`python -m jaxgpt.train --config=NAME --help` lists every key with its value in that",
           "config."]
  for section, items in sections.items():
    lines += ["", f"## {section or 'Top level'}", "", "| key | default | meaning |",
              "| --- | --- | --- |"]
    for key, value in items:
      meaning = " ".join(meanings.get(key, "").split()).replace("|", "\\|")
      lines.append(f"| `{key}` | `{value!r}` | {meaning} |")
  lines += ["", "## The recipe (`configs/recipe.py`)", "",
            "| key | on GPU and TPU | on CPU (`configs/default.py`) |", "| --- | --- | --- |"]
  for section, values in recipe.ACCELERATOR.items():
    for name, value in values.items():
      lines.append(f"| `{section}.{name}` | `{value!r}` | `{recipe.CPU[section][name]!r}` |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(markdown(), end="")

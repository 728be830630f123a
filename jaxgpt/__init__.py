"""jaxgpt: a pure-JAX trainer for nanoGPT-style GPT models."""

import sys

__version__ = "0.1.0"

if sys.argv[:1] == ["-m"]:  # python -m jaxgpt.COMMAND, still importing it
  from jaxgpt import errors  # pylint: disable=g-import-not-at-top
  errors.handle_ctrl_c()

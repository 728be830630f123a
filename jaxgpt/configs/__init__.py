"""The bundled configs as the package jaxgpt.configs: in a clone, the files of the repository's
configs/ folder, which `pip install` installs in this package's place (pyproject.toml's
package-dir), leaving this file out."""

import os

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
__path__ = [os.path.join(_REPO, "configs")]

"""The bundled configs, --config=NAME: configs/NAME.py, importable as jaxgpt.configs.NAME (pip
installs this folder as that package)."""

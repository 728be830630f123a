"""jaxgpt: a pure-JAX trainer for nanoGPT-style GPT models."""

__version__ = "0.1.0"

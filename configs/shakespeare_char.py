"""nanoGPT's config/train_shakespeare_char.py: a 10.7M-parameter character GPT.

bfloat16 compute on GPU and TPU, float32 on CPU (which has no fast bfloat16).
"""

import jax

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.precision = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return config

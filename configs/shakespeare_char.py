"""nanoGPT's config/train_shakespeare_char.py: a 10.7M-parameter character GPT.

bfloat16 compute on GPU and TPU, float32 on CPU (which has no fast bfloat16).
"""

from jaxgpt.config import backend_precision, base_config


def get_config():
  config = base_config()
  config.precision = backend_precision()
  return config

"""nanoGPT's CPU settings for shakespeare_char (its README's command line), in float32."""

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.model.update(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
  config.train.update(batch_size=12, max_steps=2000, eval_every=250, eval_steps=20,
                      checkpoint_every=500)
  return config

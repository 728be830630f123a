"""The default run: a character GPT on all of Shakespeare's plays, sized by backend.

On a GPU or TPU it is nanoGPT's shakespeare_char model; on a CPU, the model and schedule
that reached the lowest validation loss within 10 minutes on 2 cores (BENCHMARKS.md).
"""

import jax

from configs import shakespeare_char


def get_config():
  config = shakespeare_char.get_config()
  if jax.default_backend() == "cpu":
    config.model.update(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
    config.train.update(batch_size=12, max_steps=8000, eval_every=500, eval_steps=20,
                        checkpoint_every=1000, warmup_steps=100)
  return config

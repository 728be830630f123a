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
    # This small model learns fastest with a higher learning rate than nanoGPT's 1e-3
    # (val loss after 1,500 steps: 1.96 at 1e-3, 1.87 at 2e-3, 1.81 at 3e-3, 1.80 at 6e-3).
    config.train.update(batch_size=12, max_steps=4000, learning_rate=4e-3, warmup_steps=100,
                        eval_every=500, eval_steps=20, checkpoint_every=1000)
  return config

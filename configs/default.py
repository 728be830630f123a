"""The default run: a character GPT on all of Shakespeare's plays with today's recipe
(configs/recipe.py: rotary positions, RMSNorm, QK-norm, ReLU², an untied head, zero-initialised
projections, Muon), sized by backend.

On a GPU or TPU it is configs/speedrun_shakespeare.py. On a CPU, the 4-layer, 128-wide model
that nanoGPT trains on a CPU, for 2,000 steps, about the time the previous default (nanoGPT's
model and schedule, 4,000 AdamW steps) took, evaluated once at the end on 200 batches:
BENCHMARKS.md compares it with nanoGPT (benchmarks/vs_nanogpt.py) and says what each option
of the recipe is worth (benchmarks/ablation.py).
"""

import jax

from configs import recipe, speedrun_shakespeare
from jaxgpt.config import base_config

CPU_STEPS = 2000


def cpu_config():
  config = recipe.apply(base_config(), recipe.CPU)
  config.data.pipeline = "numpy"  # identical batches, and no TensorFlow import at start-up
  config.model.update(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
  config.train.update(batch_size=12, max_steps=CPU_STEPS, learning_rate=4e-3,
                      warmup_steps=100, eval_every=CPU_STEPS, eval_steps=200,
                      checkpoint_every=500)
  return config


def get_config():
  return cpu_config() if jax.default_backend() == "cpu" else speedrun_shakespeare.get_config()

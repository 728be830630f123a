"""The default run: a character GPT on all of Shakespeare's plays with today's recipe
(configs/recipe.py: rotary positions, RMSNorm, QK-norm, ReLU², an untied head, zero-initialised
projections, Muon), sized by backend.

On a GPU or TPU it is configs/speedrun_shakespeare.py. On a CPU, the model and batch that
reach the lowest validation loss in about a minute of a 2-core CPU's steps: 3 layers, 4 heads,
64 wide, block 64, batch 32, for 1,500 steps, evaluated once at the end on 200 batches.
A smaller model that sees more text beats nanoGPT's 4-layer, 128-wide one at equal time
(with the same learning rates, 3 layers of 64 reached 1.496 where 4 layers of 128 reached
1.598 in the same 50 s of steps).
BENCHMARKS.md compares the run with nanoGPT (benchmarks/vs_nanogpt.py), shows how the shape
was chosen, and says what each option of the recipe is worth (benchmarks/ablation.py).
"""

import jax

from jaxgpt.config import base_config
from jaxgpt.configs import recipe, speedrun_shakespeare

CPU_STEPS = 1500


def cpu_config():
  config = recipe.apply(base_config(), recipe.CPU)
  config.model.update(n_layer=3, n_head=4, n_embd=64, block_size=64, dropout=0.0)
  config.train.update(batch_size=32, max_steps=CPU_STEPS, learning_rate=8e-3,
                      warmup_steps=20, eval_every=CPU_STEPS, eval_steps=200,
                      checkpoint_every=500)
  return config


def get_config():
  return cpu_config() if jax.default_backend() == "cpu" else speedrun_shakespeare.get_config()

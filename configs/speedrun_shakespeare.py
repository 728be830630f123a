"""The default CPU recipe at accelerator scale (the default run on a GPU or TPU): nanoGPT's
shakespeare_char model (6 layers, 6 heads, 384 wide, block 256, batch 64) on the bundled
plays with configs/recipe.py: rotary positions, RMSNorm, QK-norm, ReLU² MLPs, an untied head,
zero-initialised projections and Muon for the hidden matrices. bfloat16 on GPU and TPU.

  python -m jaxgpt.train --config=speedrun_shakespeare

2,000 steps rather than shakespeare_char's 5,000 (nanoGPT's best validation loss came at
step 1,750 of them, and Muon needs fewer), and dropout 0.1, since 10.7 M parameters overfit
the plays' 4.5 M characters. No GPU or TPU figure has been measured for it yet (BENCHMARKS.md).
"""

from jaxgpt.configs import recipe, shakespeare_char


def get_config():
  config = recipe.apply(shakespeare_char.get_config(), recipe.ACCELERATOR)
  config.model.dropout = 0.1
  config.train.update(max_steps=2000, warmup_steps=100, eval_every=250, eval_steps=200)
  return config

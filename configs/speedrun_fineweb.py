"""Today's recipe on FineWeb at GPT-2 124M scale, after modded-nanogpt's first Muon records
(3.28 validation loss on FineWeb from 10 B-token shards with about 3,200 steps of 524,288
tokens, against llm.c's GPT-2 recipe's 19,073 steps to the same loss; configs/gpt2_fineweb.py
is build-nanogpt's form of the latter): rotary positions, RMSNorm, QK-norm, ReLU² MLPs, an
untied head, zero-initialised projections, and Muon (lr 0.02, momentum 0.95) for the hidden
matrices with AdamW (gpt2_fineweb's) for embeddings, head and norms.

Prepare the shards once (see the README), then:
  python -m jaxgpt.train --config=speedrun_fineweb --config.data.path=DIR

The batch and precision are gpt2_fineweb's (512 x 1,024 tokens in 4 micro-batches; bfloat16).
No GPU or TPU figure has been measured for it yet (BENCHMARKS.md).
"""

from jaxgpt.configs import gpt2_fineweb, recipe


def get_config():
  config = recipe.apply(gpt2_fineweb.get_config(), recipe.ACCELERATOR)
  config.model.bias = False
  config.train.update(max_steps=3200, warmup_steps=100, eval_every=125)
  return config

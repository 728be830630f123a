"""build-nanogpt's GPT-2 124M recipe on FineWeb-Edu's 10 B-token sample: one epoch of
19,073 steps of 524,288 tokens, to about 3.07 validation loss (HellaSwag about 0.30).

Prepare the shards once (see the README), then point data.path at them:
  python -m jaxgpt.prepare --source=hf --name=HuggingFaceFW/fineweb-edu --path=sample-10BT \
      --tokenizer=gpt2 --out=DIR
  python -m jaxgpt.train --config=configs/gpt2_fineweb.py --config.data.path=DIR

512 sequences of 1,024 tokens a step in 4 micro-batches of 128 (16 a device on 8 devices,
32 on a TPU v4-8's 4 chips); on one GPU use --config.train.grad_accum_steps=8 (64 a step).
"""

import jax

from jaxgpt.config import base_config


def get_config():
  config = base_config()
  config.data.source = "tokens"
  config.data.tokenizer = "gpt2"
  config.precision = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  config.model.update(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0,
                      bias=True)
  config.train.update(batch_size=512, grad_accum_steps=4, max_steps=19_073,
                      learning_rate=6e-4, min_lr=6e-5, warmup_steps=715, weight_decay=0.1,
                      beta1=0.9, beta2=0.95, grad_clip=1.0, eval_every=250, eval_steps=20,
                      log_every=10, checkpoint_every=1000)
  return config

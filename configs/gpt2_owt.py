"""nanoGPT's config/train_gpt2.py: GPT-2 124M on OpenWebText token shards, to about 2.85
validation loss after 600k steps (nanoGPT's figure on 8 x A100 40GB, about 4 days).

Prepare the shards once (9 B tokens; see the README), then point data.path at them:
  python -m jaxgpt.prepare --source=hf --name=openwebtext --tokenizer=gpt2 --out=DIR
  python -m jaxgpt.train --config=configs/gpt2_owt.py --config.data.path=DIR

480 sequences of 1,024 tokens (491,520 tokens) a step in 5 micro-batches of 96, nanoGPT's
shape on 8 devices (12 sequences each). Fewer devices need more, smaller micro-batches for
the same step: e.g. --config.train.grad_accum_steps=40 on one GPU.
"""

from jaxgpt.config import backend_precision, base_config


def get_config():
  config = base_config()
  config.data.source = "tokens"
  config.data.tokenizer = "gpt2"
  config.precision = backend_precision()
  config.model.update(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0,
                      bias=False)
  config.train.update(batch_size=480, grad_accum_steps=5, max_steps=600_000,
                      learning_rate=6e-4, min_lr=6e-5, warmup_steps=2000, weight_decay=0.1,
                      beta1=0.9, beta2=0.95, grad_clip=1.0, eval_every=1000, eval_steps=200,
                      log_every=10, checkpoint_every=1000)
  return config

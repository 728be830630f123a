"""build-nanogpt's GPT-2 124M recipe on FineWeb-Edu's 10 B-token sample: one epoch of
19,073 steps of 524,288 tokens, to about 3.07 validation loss (HellaSwag about 0.30).

Prepare the shards once (see the README), then point data.path at them:
  python -m jaxgpt.prepare --source=hf --name=HuggingFaceFW/fineweb-edu --path=sample-10BT \
      --tokenizer=gpt2 --out=DIR
  python -m jaxgpt.train --config=configs/gpt2_fineweb.py --config.data.path=DIR

512 sequences of 1,024 tokens a step in 4 micro-batches of 128 (16 a device on 8 devices,
32 on a TPU v4-8's 4 chips); on one GPU use --config.train.grad_accum_steps=8 (64 a step).
"""

from jaxgpt.configs import gpt2_owt


def get_config():
  """gpt2_owt's model, optimizer and precision; build-nanogpt's batch, schedule and biases."""
  config = gpt2_owt.get_config()
  config.model.bias = True
  config.train.update(batch_size=512, grad_accum_steps=4, max_steps=19_073, warmup_steps=715,
                      eval_every=250, eval_steps=20)
  return config

"""GPT-2 XL (1.56 B parameters: 48 layers, 25 heads, 1,600 wide, block 1,024) on OpenWebText
token shards, set to train on one TPU v5e-8 or v4-8 host or on 8 x 80 GB GPUs.

gpt2_owt's data, step (491,520 tokens) and schedule, at GPT-3 XL's learning rate (2e-4,
for its 1.3 B parameters). What makes it fit: the parameters, gradients and AdamW moments
sharded over every device (mesh.fsdp=-1, 2.3 GB of state a device on 8), bfloat16 compute,
blocks that recompute their activations in the backward pass (model.remat=full), run as
one scanned block (model.scan_layers: one block to compile), and 10 micro-batches of 48
sequences (6 a device on 8, 12 on a v4-8's 4 chips). See what it needs before running:
  python -m jaxgpt.bench --compile_only --config=gpt2_xl
  python -m jaxgpt.train --config=configs/gpt2_xl.py --config.data.path=DIR
"""

from jaxgpt.configs import gpt2_owt


def get_config():
  config = gpt2_owt.get_config()
  config.precision = "bfloat16"  # on CPU too, so that --compile_only there shows the same program
  config.model.update(n_layer=48, n_head=25, n_embd=1600, remat="full", scan_layers=True)
  config.train.update(grad_accum_steps=10, learning_rate=2e-4, min_lr=2e-5)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  return config

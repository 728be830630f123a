"""nanoGPT's finetune_shakespeare, sized for one GPU or TPU chip: GPT-2 124M fine-tuned on the
bundled plays with the GPT-2 tokenizer.

A small constant learning rate and few steps, as nanoGPT; the checkpoint with the lowest
validation loss is kept in WORKDIR/best (sample it with --checkpoint=best). 32 sequences of
1,024 tokens per step (8 x 4 micro-batches). For LoRA add e.g. --config.lora.rank=8
--config.lora.targets=c_attn,c_proj --config.train.learning_rate=1e-3
--config.train.min_lr=1e-3 (min_lr too, or the rate decays from 1e-3 to 3e-5).
"""

from jaxgpt.config import backend_precision, base_config


def get_config():
  config = base_config()
  config.init_from = "gpt2"
  config.data.tokenizer = "gpt2"
  config.precision = backend_precision()
  config.model.update(block_size=1024, dropout=0.1)
  config.train.update(batch_size=32, grad_accum_steps=4, max_steps=200, learning_rate=3e-5,
                      min_lr=3e-5, warmup_steps=0, weight_decay=0.0, beta2=0.99,
                      eval_every=20, eval_steps=20, checkpoint_every=100, sample_tokens=300)
  return config

"""Fine-tune a chat model on your own conversations with LoRA, for one GPU or TPU chip (a Colab
TPU runtime too): SmolLM2-135M-Instruct by default, any Llama-family chat model with
--config.init_from (Qwen/Qwen3-0.6B, meta-llama/Llama-3.2-1B-Instruct, a local folder).

  python -m jaxgpt.train --config=finetune_chat --config.data.path=conversations.jsonl
  python -m jaxgpt.sample --workdir=runs/finetune_chat --checkpoint=best --chat --interactive
  python -m jaxgpt.export --workdir=runs/finetune_chat --checkpoint=best --out=my-chat-model

data.path is JSONL, one {"messages": [{"role": ..., "content": ...}, ...]} a line; the loss is
on the assistant turns only (docs/finetuning.md). LoRA of rank 16 on every matrix of every
block (q, k, v, o, gate, up, down); 1,024-token rows of packed conversations, 16 a step; the
checkpoint with the lowest validation loss is kept in WORKDIR/best.
"""

from jaxgpt.config import backend_precision, base_config


def get_config():
  config = base_config()
  config.init_from = "HuggingFaceTB/SmolLM2-135M-Instruct"
  config.data.source = "chat"
  config.precision = backend_precision()
  config.model.update(block_size=1024, dropout=0.0)
  config.lora.update(rank=16, alpha=32.0, targets="c_attn,c_proj,c_fc")
  config.train.update(batch_size=16, max_steps=1000, learning_rate=2e-4, min_lr=2e-5,
                      warmup_steps=50, weight_decay=0.0, beta2=0.999, eval_every=100,
                      eval_steps=10, checkpoint_every=200, sample_tokens=0)
  return config

"""nanoGPT's CPU training step in PyTorch, timed as jaxgpt.bench times its own, for comparison with
`python -m jaxgpt.bench` on the same machine on the same day.

The model is nanoGPT's model.py (karpathy/nanoGPT) written out in its essentials: pre-LN
blocks, causal scaled_dot_product_attention, tanh-free GELU MLP, tied LM head, no biases,
GPT-2 initialisation; the step is its train.py's on CPU: float32, no torch.compile, AdamW
(weight decay on matrices), gradient clipping at 1.0, one micro-batch. Needs `torch`.

  python benchmarks/nanogpt_step.py [--steps 600 --short 100] [--threads 2]

Prints (time of --steps steps - time of --short steps) / (--steps - --short), so start-up
and warm-up cancel out, as in the issue's "(time for 600 steps - time for 100 steps) / 500".
"""

import argparse
import math
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

from model_flags import add_model_flags  # the script's own folder is on sys.path


class Block(nn.Module):

  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
    self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
    self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
    return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):

  def __init__(self, vocab, block, layers, heads, d):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
    self.h = nn.ModuleList([Block(d, heads) for _ in range(layers)])
    self.ln_f = nn.LayerNorm(d, bias=False)
    self.lm_head = nn.Linear(d, vocab, bias=False)
    self.wte.weight = self.lm_head.weight
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(p, std=std)

  def forward(self, idx, targets=None):
    """The loss, or without targets the last position's logits (as nanoGPT's)."""
    x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
    for block in self.h:
      x = block(x)
    x = self.ln_f(x)
    if targets is None:
      return self.lm_head(x[:, -1, :])
    logits = self.lm_head(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def add_torch_flags(parser) -> None:
  """The model-shape flags and --threads, which both nanoGPT benchmarks take."""
  add_model_flags(parser)
  parser.add_argument("--threads", type=int, default=os.cpu_count())


def seeded_model(args) -> GPT:
  """nanoGPT's model of the flags' shape, seeded as nanoGPT seeds it, on --threads threads."""
  torch.manual_seed(1337)
  torch.set_num_threads(args.threads)
  return GPT(args.vocab, args.block_size, args.n_layer, args.n_head, args.n_embd)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_torch_flags(p)
  p.add_argument("--batch_size", type=int, default=12)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--short", type=int, default=100)
  args = p.parse_args()
  model = seeded_model(args)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  other = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": other, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.99))

  def run(num_steps):
    started = time.perf_counter()
    for _ in range(num_steps):
      x = torch.randint(args.vocab, (args.batch_size, args.block_size))
      loss = model(x, torch.roll(x, -1, 1))
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started

  short, long = run(args.short), run(args.steps)
  ms = 1000 * (long - short) / (args.steps - args.short)
  print(f"nanoGPT step (PyTorch {torch.__version__}, {args.threads} threads): {ms:.1f} ms/step "
        f"({args.short} steps {short:.1f} s, {args.steps} steps {long:.1f} s); "
        f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()

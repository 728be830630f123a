"""The model-shape flags both benchmarks take (nanoGPT's CPU shape by default)."""


def add_model_flags(parser) -> None:
  parser.add_argument("--n_layer", type=int, default=4)
  parser.add_argument("--n_head", type=int, default=4)
  parser.add_argument("--n_embd", type=int, default=128)
  parser.add_argument("--block_size", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=65)

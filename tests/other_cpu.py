"""`python -m jaxgpt.train`, except that process 1's CPU seems to have bfloat16 dot
instructions where this machine's has none, or none where it has them."""

import jax

from jaxgpt import runtime, train
from jaxgpt.errors import run_cli

_has_bfloat16_dot = runtime.cpu_has_bfloat16_dot


def _other_cpu(*args, **kwargs) -> bool:
  return _has_bfloat16_dot(*args, **kwargs) != (jax.process_index() == 1)


if __name__ == "__main__":
  runtime.cpu_has_bfloat16_dot = _other_cpu
  run_cli(train.main)

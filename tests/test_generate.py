"""Generation: cached decoding equals recomputation, sampling filters, batches, seeds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import generate
from jaxgpt.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=40, vocab_multiple=16, block_size=32, n_layer=2, n_head=2,
                   n_embd=32)
REAL_VOCAB = 40  # ids 40..47 are padding and must never come out


@pytest.fixture(scope="module")
def model_params():
  model = GPT(CONFIG)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"])
  # Larger weights make the distribution peaked enough for the filters to matter.
  return model, jax.tree.map(lambda p: p * 3, params)


def _generate(model, params, prompt, n, num_samples=1, seed=0, **sampling):
  chunks = generate.generate(model, params, prompt, n, generate.Sampling(**sampling), num_samples=num_samples, seed=seed,
                             chunk=16)
  return np.concatenate(list(chunks), axis=1)


def _greedy_by_recomputation(model, params, prompt, n):
  tokens = list(prompt)
  apply = jax.jit(model.apply)
  for _ in range(n):
    context = np.array(tokens[-CONFIG.block_size:])[None]
    logits = apply({"params": params}, context)[0, -1, :REAL_VOCAB]
    tokens.append(int(jnp.argmax(logits)))
  return tokens[len(prompt):]


def test_cached_greedy_equals_recomputed_greedy(model_params):
  model, params = model_params
  prompt = [3, 1, 4, 1, 5, 9]
  got = _generate(model, params, prompt, 26, temperature=0.0)[0]
  assert list(got) == _greedy_by_recomputation(model, params, prompt, 26)


def test_greedy_ignores_the_seed_and_top_k_1_top_p_tiny_equal_greedy(model_params):
  model, params = model_params
  greedy = _generate(model, params, [7, 2], 40, temperature=0.0, seed=1)
  assert np.array_equal(greedy, _generate(model, params, [7, 2], 40, temperature=0.0, seed=2))
  assert np.array_equal(greedy, _generate(model, params, [7, 2], 40, top_k=1, seed=5))
  assert np.array_equal(greedy, _generate(model, params, [7, 2], 40, top_p=1e-6, seed=6))


def test_same_seed_same_text_other_seed_other_text(model_params):
  model, params = model_params
  a = _generate(model, params, [1], 40, seed=11)
  assert np.array_equal(a, _generate(model, params, [1], 40, seed=11))
  assert not np.array_equal(a, _generate(model, params, [1], 40, seed=12))


def test_padded_ids_are_never_sampled(model_params):
  model, params = model_params
  tokens = _generate(model, params, [1], 64, num_samples=8, temperature=2.0)
  assert tokens.max() < REAL_VOCAB


def test_batched_samples_equal_when_greedy(model_params):
  model, params = model_params
  batch = _generate(model, params, [2, 3], 20, num_samples=3, temperature=0.0)
  single = _generate(model, params, [2, 3], 20, temperature=0.0)
  assert all(np.array_equal(row, single[0]) for row in batch)


def test_generation_runs_past_the_block_size(model_params):
  model, params = model_params
  tokens = _generate(model, params, [1, 2, 3], 5 * CONFIG.block_size + 7)
  assert tokens.shape == (1, 5 * CONFIG.block_size + 7)
  assert tokens.max() < REAL_VOCAB


def _kept(logits, **sampling):
  filtered = np.asarray(generate.filter_logits(logits, generate.Sampling(**sampling)))
  return (filtered > np.finfo(np.float32).min).tolist()


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  assert _kept(logits, top_k=2) == [[True, True, False, False]]
  assert _kept(logits, top_p=0.7) == [[True, True, False, False]]  # the token crossing p stays
  assert _kept(logits, top_p=0.5) == [[True, False, False, False]]
  assert _kept(logits, top_p=1.0) == [[True, True, True, True]]
  assert _kept(logits, top_k=3, top_p=0.9) == [[True, True, True, False]]

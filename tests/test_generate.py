"""Generation: cached decoding equals recomputation, sampling filters, batches, seeds, stop
text, and one compilation per bucket."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgpt import attention, generate, sharding
from jaxgpt import state as state_lib
from jaxgpt.data import BPETokenizer, CharTokenizer
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig

from helpers import init_params

CONFIG = GPTConfig(vocab_size=40, vocab_multiple=16, block_size=32, n_layer=2, n_head=2,
                   n_embd=32, dropout=0.0)
REAL_VOCAB = 40  # ids 40..47 are padding and must never come out
TOKENIZER = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 .,\n")


@pytest.fixture(scope="module")
def model_params():
  model = GPT(CONFIG)
  params = init_params(model)
  # Larger weights make the distribution peaked enough for the filters to matter.
  return model, jax.tree.map(lambda p: p * 3, params)


def _generate(model, params, prompt, n, num_samples=1, seed=0, **sampling):
  chunks = generate.generate(model, params, prompt, n, generate.Sampling(**sampling),
                             num_samples=num_samples, seed=seed, chunk=16)
  return np.concatenate(list(chunks), axis=1)


def _greedy_by_recomputation(model, params, prompt, n):
  """Greedy decoding from the whole context each step; a full context keeps its newest half."""
  s = model.config.block_size
  keep = generate.refill_length(s)
  context, new = list(prompt), []
  apply = jax.jit(model.apply)
  for _ in range(n):
    padded = np.zeros((1, s), np.int32)  # one shape, one compilation; the model is causal
    padded[0, :len(context)] = context
    logits = apply({"params": params}, padded)[0, len(context) - 1, :REAL_VOCAB]
    new.append(int(jnp.argmax(logits)))
    context = (context[-keep:] if len(context) == s else context) + new[-1:]
  return new


def test_cached_greedy_equals_recomputed_greedy_within_and_past_the_block(model_params):
  model, params = model_params
  prompt = [3, 1, 4, 1, 5, 9]
  n = 3 * CONFIG.block_size + 5
  got = _generate(model, params, prompt, n, temperature=0.0)[0]
  assert list(got) == _greedy_by_recomputation(model, params, prompt, n)


def test_the_models_cache_is_traced_once_for_every_prompt_bucket_and_cache_size(model_params,
                                                                               monkeypatch):
  """Its shapes, which each prefill's empty cache takes, come from one trace of the model."""
  model, params = model_params
  monkeypatch.setattr(generate, "_model_caches", {})
  traced = []
  run = generate._run  # pylint: disable=protected-access

  def counted_run(model, params, cache, *args, **kwargs):
    traced.append(cache is None)
    return run(model, params, cache, *args, **kwargs)

  monkeypatch.setattr(generate, "_run", counted_run)
  for prompt, n in (([1, 2, 3], 2), (list(range(1, 13)), 2), ([1, 2, 3], 20)):  # 3 compilations
    _generate(model, params, prompt, n, temperature=0.0)
  assert traced.count(True) == 1


@pytest.mark.parametrize("num_samples", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_each_program_is_compiled_once_for_a_generation_of_several_chunks(model_params,
                                                                          monkeypatch,
                                                                          num_samples):
  """Two samples split their rows over two devices: a state that decode hands back sharded
  otherwise than prefill's would compile decode again for the second chunk. The parameters
  carry their logical shardings, as a loaded run's do (whose logits decode then splits)."""
  model, params = model_params
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  params = jax.device_put(params, jax.tree.map(lambda x: x.sharding,
                                               state_lib.abstract_params(model, mesh)))
  programs = (generate._prefill, generate._decode)  # pylint: disable=protected-access
  fresh = [chex.assert_max_traces(f, n=1) for f in programs]
  monkeypatch.setattr(generate, "compiled", lambda *_: generate.compile_fns(*fresh))
  lowered = []

  def count(event, duration, fun_name="", **_):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    _generate(model, params, [1, 2, 3], 40, num_samples=num_samples, temperature=0.8)  # 3 chunks
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
    chex.clear_trace_counter()
  assert sorted(n for n in lowered if n in ("jit(_prefill)", "jit(_decode)")) == [
      "jit(_decode)", "jit(_prefill)"]


def test_the_refill_is_compiled_in_only_for_a_generation_longer_than_the_block(model_params,
                                                                             monkeypatch):
  """A generation that fits its cache never refills it: decode leaves that second forward
  pass (40% of its compile time) out."""
  model, params = model_params
  traced = []
  refill = generate._refill  # pylint: disable=protected-access
  monkeypatch.setattr(generate, "_refill", lambda *args: traced.append(1) or refill(*args))
  programs = (generate._prefill, generate._decode)  # pylint: disable=protected-access
  fresh = [functools.wraps(f)(lambda *args, f=f, **kwargs: f(*args, **kwargs)) for f in programs]
  monkeypatch.setattr(generate, "compiled", lambda *_: generate.compile_fns(*fresh))  # traced anew
  s = CONFIG.block_size
  for n, refills in ((s - 3, False), (s - 2, True)):  # the prompt takes 3 positions
    traced.clear()
    got = _generate(model, params, [3, 1, 4], n, temperature=0.0)[0]
    assert bool(traced) == refills
    assert list(got) == _greedy_by_recomputation(model, params, [3, 1, 4], n)


def test_the_cache_holds_the_prompt_and_new_tokens_rounded_up_to_a_power_of_two(
    model_params, monkeypatch):
  """A short generation fills a short cache, with the tokens of the block-sized one."""
  model, params = model_params
  sizes = []

  def prefill(model, params, prompt_BxP, prompt_length, seed, cache_size):
    sizes.append(cache_size)
    state = generate._prefill(model, params, prompt_BxP, prompt_length, seed, cache_size)  # pylint: disable=protected-access
    chex.assert_shape(jax.tree.leaves(state.cache["h_0"]["attn"]["k"]), (2, cache_size, 16))
    return state

  monkeypatch.setattr(generate, "compiled", lambda *_: generate.compile_fns(
      prefill, generate._decode))  # pylint: disable=protected-access
  prompt = [3, 1, 4, 1, 5, 9]
  for n, size in ((2, 8), (10, 16), (26, 32), (27, 32), (40, 32)):  # 32: the model's block
    got = _generate(model, params, prompt, n, temperature=0.0)[0]
    assert sizes[-1] == size
    assert list(got) == _greedy_by_recomputation(model, params, prompt, n)


@pytest.mark.parametrize("cache_block", [pytest.param(8, marks=pytest.mark.slow), 12])
def test_a_cache_read_block_by_block_gives_the_same_greedy_text(model_params, monkeypatch,
                                                                 cache_block):
  """A cache longer than attention.CACHE_BLOCK is read only as far as it is filled, a block at
  a time: CACHE_BLOCK positions for the prompt's rows, FEW_ROWS_BLOCK for a decoding step's,
  here half as many (8 and 4 do not divide the 38 positions, nor 12 the 42: the last block
  overlaps the one before; 6 does divide 42)."""
  _, params = model_params
  model = GPT(dataclasses.replace(CONFIG, block_size=30 + cache_block))  # a new compilation
  params = {**params, "wpe": jnp.resize(params["wpe"], (model.config.block_size, CONFIG.n_embd))}
  monkeypatch.setattr(attention, "CACHE_BLOCK", cache_block)
  monkeypatch.setattr(attention, "FEW_ROWS_BLOCK", cache_block // 2)
  prompt = [3, 1, 4, 1, 5, 9]
  n = 2 * model.config.block_size + 5
  got = _generate(model, params, prompt, n, temperature=0.0)[0]
  assert list(got) == _greedy_by_recomputation(model, params, prompt, n)


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


@pytest.mark.slow
def test_batched_output_equals_one_at_a_time(model_params):
  model, params = model_params
  greedy = _generate(model, params, [2, 3], 50, num_samples=3, temperature=0.0)
  assert all(np.array_equal(row, _generate(model, params, [2, 3], 50, temperature=0.0)[0])
             for row in greedy)
  # Sampled rows are independent draws; the first is the one a batch of one gives.
  sampled = _generate(model, params, [2, 3], 50, num_samples=3, seed=4, temperature=2.0)
  assert np.array_equal(sampled[0], _generate(model, params, [2, 3], 50, seed=4,
                                              temperature=2.0)[0])
  assert len({tuple(row) for row in sampled}) == 3
  assert sampled.max() < REAL_VOCAB  # padded ids are never sampled


@pytest.mark.slow
def test_samples_split_over_devices_equal_samples_on_one(model_params):
  model, params = model_params
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  on_two = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  assert generate.place(model, on_two, 4)[1].mesh.size == 2  # two rows on each device
  assert generate.place(model, on_two, 3)[1].mesh.size == 1
  for sampling in (dict(temperature=0.0), dict(seed=3, temperature=2.0)):
    assert np.array_equal(_generate(model, on_two, [2, 3], 50, num_samples=4, **sampling),
                          _generate(model, params, [2, 3], 50, num_samples=4, **sampling))


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


@pytest.mark.parametrize("top_k", [
    200, generate.TOP_K_GROUPS + 1,
    *(pytest.param(k, marks=pytest.mark.slow) for k in (1, generate.TOP_K_GROUPS))])
def test_top_k_over_a_large_vocabulary_keeps_the_k_largest_and_their_ties(top_k):
  """Over 50,304 ids top_k up to TOP_K_GROUPS bisects only the groups with the largest
  logits: the same kept set as ranking the whole row, ties at the k-th logit kept (rows of
  rounded logits, some ties across groups; one row constant; one with its largest logits in
  one group)."""
  rows = jax.random.normal(jax.random.key(top_k), (4, 50304)).round(1)
  rows = rows.at[1].set(0.5).at[2, 64:64 + 300].add(10.0)
  kth = -np.sort(-np.asarray(rows), axis=-1)[:, top_k - 1:top_k]
  assert _kept(rows, temperature=1.0, top_k=top_k) == (np.asarray(rows) >= kth).tolist()


def test_filters_of_rows_split_over_devices_need_no_communication():
  """Generation's rows path promises each device decodes its rows alone: the top-k and top-p
  filters of rows split over two devices compile to no collective and keep what one device
  keeps (XLA's CPU top_k, used before, gathered every row onto both devices)."""
  rows = jax.random.normal(jax.random.key(0), (4, 50304)).round(1)
  mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
  split = jax.device_put(rows, NamedSharding(mesh, PartitionSpec("batch")))
  sampling = generate.Sampling(temperature=1.0, top_k=200, top_p=0.9).as_arrays()
  filtered = jax.jit(generate.filter_logits)
  compiled = filtered.lower(split, sampling).compile().as_text()
  assert not any(op in compiled for op in ("all-gather", "all-reduce", "all-to-all",
                                           "collective-permute"))
  np.testing.assert_array_equal(filtered(split, sampling), filtered(rows, sampling))


def _texts(model, params, n, num_samples=3, stop="", timing=None):
  pieces = generate.generate_text(model, params, TOKENIZER, "ab", n,
                                  generate.Sampling(temperature=2.0), num_samples=num_samples,
                                  seed=1, stop=stop, timing=timing)
  return ["".join(parts) for parts in zip(*pieces)]


@pytest.mark.slow
def test_stop_text_ends_each_sample_before_it_and_ends_generation(model_params):
  model, params = model_params
  full = _texts(model, params, 200)
  stop = full[0][5:7]  # two characters, which chunks may split
  assert _texts(model, params, 200, stop=stop) == [text.split(stop)[0] for text in full]
  timing = generate.Timing()
  assert _texts(model, params, 200, num_samples=1, stop=stop, timing=timing) == [full[0][:5]]
  assert timing.tokens < 200  # generation stopped once every sample had
  # The timing line counts the tokens computed (a whole chunk) and those kept apart.
  assert timing.kept == 5 < timing.tokens  # characters: a token each
  assert f"{timing.tokens:,} tokens in" in timing.summary()
  assert "(5 of them before the samples' stops)" in timing.summary()


@pytest.mark.slow
def test_no_new_trace_within_a_bucket(model_params, monkeypatch):
  model, params = model_params
  fns = [chex.assert_max_traces(f, n=1)
         for f in (generate._prefill, generate._decode)]
  counted = generate.compile_fns(*fns)
  monkeypatch.setattr(generate, "compiled", lambda *_: counted)
  for prompt in ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5]):  # bucket 8
    for sampling in (dict(temperature=0), dict(temperature=0.7, top_k=3, top_p=0.9)):
      _generate(model, params, prompt, 2 * CONFIG.block_size, num_samples=2, seed=len(prompt),
                **sampling)
  chex.clear_trace_counter()


def test_a_prompt_the_tokenizer_drops_is_one_line_and_the_default_prompt_is_a_token():
  """A word-level tokenizer that splits on whitespace has no token for a newline or a
  space: such a prompt is a UserError (it was generate's ValueError, a traceback after
  train's last step), and the default prompt is its first token that encodes."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"[UNK]": 0, "king": 1, "<|endoftext|>": 2}, unk_token="[UNK]"))
  words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer = BPETokenizer(words.to_str())
  for prompt in ("\n", " "):
    with pytest.raises(UserError, match="is no token to the model's tokenizer"):
      generate.prompt_ids(tokenizer, prompt)
  prompt = generate.default_prompt(tokenizer)
  assert list(generate.prompt_ids(tokenizer, prompt)) == [0]

"""Fast generation: a key/value-cache prefill, then a compiled decode loop run in chunks.

The context is the model's `block_size` positions. The cache holds the prompt and the new
tokens, rounded up to a power of two, and at most `block_size` positions. When it is full, its
newest half is prefilled again as the new context and decoding goes on, so generation can run
past `block_size` at a small amortised cost; until then the output is exactly what recomputing
the whole context each step would give.

Each (batch size, prompt bucket, cache size) compiles once: prompts are right-padded to a power
of two, the number of positions filled and the number of steps are traced data, and so are the
sampling settings.
The compiled loop refills the cache itself, so a chunk of tokens may span several refills;
the host finds stop tokens and stop text between chunks and stops once every sample is done.
"""

import contextlib
import dataclasses
import functools
import time

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxgpt import chat_template, memory, sharding
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig, count_params
from jaxgpt.state import abstract_params

# XLA's CPU "YNN" fusions run the decode step's small reductions many times slower; its own
# dots are slow for int8 and for the few rows of a large model's step (GPT-2's output layer
# of 2 rows: 170 ms against 7), so those models keep YNNPACK's dots.
_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_LARGE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                           "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
LARGE_MODEL_WEIGHTS = 2**24
# top_k up to TOP_K_GROUPS over a vocabulary of 2 x TOP_K_GROUPS x TOP_K_GROUP_SIZE ids or
# more bisects only the TOP_K_GROUPS groups of ids with the largest logits (_top_k).
TOP_K_GROUPS, TOP_K_GROUP_SIZE = 256, 64


@flax.struct.dataclass
class Sampling:
  """Sampling settings, traced (changing them does not recompile)."""
  temperature: float = 1.0   # 0 is greedy decoding
  top_k: int = 0             # 0 keeps every token
  top_p: float = 1.0         # nucleus: the smallest set whose probability reaches top_p

  def as_arrays(self) -> "Sampling":
    """Fixed dtypes, so that `temperature=0` and `temperature=0.0` share one compilation."""
    return Sampling(np.float32(self.temperature), np.int32(self.top_k), np.float32(self.top_p))


@flax.struct.dataclass
class DecodeState:
  cache: dict
  context_BxS: jax.Array     # the tokens whose keys and values are in the cache
  length: jax.Array          # how many cache positions are filled
  logits_BxV: jax.Array      # float32 logits for the next token
  keys_B: jax.Array          # one random key per sample, so rows are independent draws
  num_generated: jax.Array


def filter_logits(logits_BxV, sampling: Sampling):
  """Temperature, then top-k, then top-p on float32 logits; each filter is skipped when it
  keeps every token (e.g. top_k above the vocabulary size).

  Top-p keeps the tokens whose higher-ranked tokens hold less than top_p of the probability
  left by top-k (so the token that crosses top_p is kept, and the top token always is).
  Each filter is a threshold found by bisection over the logits' order (32 halvings of a
  count over the row) rather than a sort: sorting 50,000 logits a row is most of a decode
  step on CPU (about 10 ms a row), a bisection about 0.4 ms.

  The model already gives padded ids no probability, so they are never sampled.
  """
  v = logits_BxV.shape[-1]
  logits_BxV = logits_BxV / jnp.maximum(sampling.temperature, 1e-6)
  top_k = jnp.where((sampling.top_k > 0) & (sampling.top_k < v), sampling.top_k, v)
  logits_BxV = jax.lax.cond(top_k < v, _top_k, lambda x, _: x, logits_BxV, top_k)
  return jax.lax.cond(sampling.top_p < 1, _top_p, lambda x, _: x, logits_BxV, sampling.top_p)


def _top_k(logits_BxV, top_k):
  key_BxV = _order_keys(logits_BxV)
  if key_BxV.shape[-1] < 2 * TOP_K_GROUPS * TOP_K_GROUP_SIZE:
    kth_Bx1 = _kth_key(key_BxV, top_k)
  else:
    kth_Bx1 = jax.lax.cond(top_k <= TOP_K_GROUPS, _kth_key_in_top_groups, _kth_key, key_BxV,
                           top_k)
  return jnp.where(key_BxV >= kth_Bx1, logits_BxV, jnp.finfo(jnp.float32).min)


def _kth_key(key_BxV, k):
  """Each row's k-th largest key."""
  return _bisect(lambda m_Bx1: jnp.sum(key_BxV >= m_Bx1, -1, keepdims=True) >= k, key_BxV)


def _kth_key_in_top_groups(key_BxV, k):
  """_kth_key for k <= TOP_K_GROUPS, from half of the row or less: every key above the
  TOP_K_GROUPS-th largest maximum of a group (of TOP_K_GROUP_SIZE keys) is in one of the
  TOP_K_GROUPS groups with the largest maxima, and those hold at least k keys from it up,
  so the k-th largest of theirs is the row's."""
  b, v = key_BxV.shape
  g = TOP_K_GROUP_SIZE
  padded_BxV = jnp.pad(key_BxV, ((0, 0), (0, -v % g)), constant_values=jnp.iinfo(jnp.int32).min)
  groups_BxNxG = padded_BxV.reshape(b, -1, g)
  top_BxK = _largest_indices(groups_BxNxG.max(axis=-1), TOP_K_GROUPS)
  candidates_BxKxG = jnp.take_along_axis(groups_BxNxG, top_BxK[:, :, None], axis=1)
  return _kth_key(candidates_BxKxG.reshape(b, -1), k)


def _largest_indices(x_BxN, k: int):
  """jax.lax.top_k's indices, by a sort: XLA's CPU backend gathers top_k's rows onto every
  device where the rows are split, and sorts them all; a sort keeps each device to its own."""
  iota_BxN = jax.lax.broadcasted_iota(jnp.int32, x_BxN.shape, 1)
  _, order_BxN = jax.lax.sort((~x_BxN, iota_BxN), dimension=1, num_keys=1)  # ~: descending
  return order_BxN[:, :k]


def _top_p(logits_BxV, top_p):
  key_BxV = _order_keys(logits_BxV)
  probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
  mass_above = lambda m_Bx1: jnp.sum(jnp.where(key_BxV > m_Bx1, probs_BxV, 0), -1, keepdims=True)
  cutoff_Bx1 = _bisect(lambda m_Bx1: mass_above(m_Bx1) >= top_p, key_BxV, largest=False)
  return jnp.where(key_BxV >= cutoff_Bx1, logits_BxV, jnp.finfo(jnp.float32).min)


def _order_keys(x):
  """int32 keys in the order of the float32 values (x < y exactly when key(x) < key(y))."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _bisect(holds, key_BxV, largest: bool = True):
  """Per row, the int32 m where `holds` turns from true (below) to false (above), by 32
  halvings of [int32 min, int32 max]: the largest m for which it holds, or with
  largest=False the smallest for which it does not."""
  b = key_BxV.shape[0]
  lo_Bx1 = jnp.full((b, 1), jnp.iinfo(jnp.int32).min, jnp.int32)
  hi_Bx1 = jnp.full((b, 1), jnp.iinfo(jnp.int32).max, jnp.int32)

  def halve(_, bounds):
    lo, hi = bounds
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # (lo + hi) / 2 without overflow
    ok = holds(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo_Bx1, hi_Bx1 = jax.lax.fori_loop(0, 32, halve, (lo_Bx1, hi_Bx1))
  return lo_Bx1 if largest else hi_Bx1


def step_bits(keys_B, first_step, num_steps: int):
  """One random word (B, num_steps) per row and step: step n of row b uses key (b, n) only,
  so a sample does not depend on how the steps are chunked or on the other rows."""
  steps_N = first_step + jnp.arange(num_steps)
  def row(key):
    return jax.vmap(lambda n: jax.random.bits(jax.random.fold_in(key, n)))(steps_N)
  return jax.vmap(row)(keys_B)


def gumbel_noise(bits_B, vocab: int):
  """Gumbel noise (B, V) spread from one random word per row by murmur3's integer finaliser.

  A few integer operations that fuse into the sampling step; drawing all (B, steps, V)
  numbers from jax.random instead runs threefry as a loop of many kernels on CPU.
  """
  spread_1xV = jnp.arange(vocab, dtype=jnp.uint32)[None, :] * jnp.uint32(0x9E3779B9)
  h_BxV = bits_B[:, None] ^ spread_1xV
  for shift, multiplier in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
    h_BxV = (h_BxV ^ (h_BxV >> shift)) * jnp.uint32(multiplier)
  h_BxV = h_BxV ^ (h_BxV >> 16)
  uniform_BxV = ((h_BxV >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
  return -jnp.log(-jnp.log(uniform_BxV))


def sample_token(logits_BxV, sampling: Sampling, bits_B):
  """Greedy at temperature 0; otherwise a draw from the filtered distribution (Gumbel-max)."""
  def sampled(logits_BxV):
    noise_BxV = gumbel_noise(bits_B, logits_BxV.shape[-1])
    return first_argmax(filter_logits(logits_BxV, sampling) + noise_BxV)
  return jax.lax.cond(sampling.temperature == 0, first_argmax, sampled, logits_BxV)


def first_argmax(x_BxV):
  """jnp.argmax over the last axis (the first of equal maxima) as two plain reductions, which
  XLA's CPU backend runs several times faster than argmax's reduction of (value, index)
  pairs (about 2 ms for 8 rows of 50,000)."""
  max_Bx1 = jnp.max(x_BxV, axis=-1, keepdims=True)
  index_1xV = jnp.arange(x_BxV.shape[-1], dtype=jnp.int32)[None, :]
  return jnp.min(jnp.where(x_BxV == max_Bx1, index_1xV, x_BxV.shape[-1]), axis=-1)


def _set_cache_length(cache, length):
  """Every layer's cache index (one per layer, or an array of them with model.scan_layers)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, length) if path[-1].key == "index" else x, cache)


def _run(model: GPT, params, cache, tokens_BxT, start, logits_at_S=None):
  """Runs tokens at positions start.. through the model, appending to the cache; returns
  their logits (B, T, V), or with `logits_at_S` (indices into the B*T tokens) those (S, V)."""
  positions_T = start + jnp.arange(tokens_BxT.shape[1])
  variables = {"params": params} if cache is None else {"params": params, "cache": cache}
  logits, mutated = model.apply(variables, tokens_BxT, decode=True, positions_T=positions_T,
                                logits_at_S=logits_at_S, mutable=["cache"])
  if logits_at_S is not None:
    logits = logits[0]
  # Whole on each device where the vocabulary is split: sampling reduces over it many times.
  return _every_row(logits), mutated["cache"]


def _empty_cache(model: GPT, params, rows: int, size: int):
  """A cache of `size` positions for `rows` sequences, every position empty. (The model's own
  would hold block_size positions: at SmolLM2's size, 1.5 GB for 8 rows.)"""
  def empty(x):  # keys and values: (..., positions, head size); the rest the fill indices
    shape = x.shape[:-2] + (size,) + x.shape[-1:] if x.ndim >= 3 else x.shape
    return jnp.zeros(shape, x.dtype)
  return jax.tree.map(empty, _model_cache_shapes(model, params, rows))


_model_caches = {}  # (model, rows): the model's own cache, as shapes


def _model_cache_shapes(model: GPT, params, rows: int):
  """The shapes of the model's own cache for `rows` sequences, traced once per model and rows
  in a process (a trace of the whole model: 1.1 s at SmolLM2's size, at each prompt bucket's
  and cache size's compilation)."""
  if (model, rows) not in _model_caches:
    _model_caches[model, rows] = jax.eval_shape(
        lambda p: _run(model, p, None, jnp.zeros((rows, 1), jnp.int32), 0)[1], params)
  return _model_caches[model, rows]


def _fill(model: GPT, params, cache, tokens_BxT, length, cache_size: int):
  """Writes tokens into an empty cache of `cache_size` positions; returns it holding
  `tokens_BxT[:, :length]`, the logits (B, V) after the last of them (of no other token: a
  long prompt's would be GBs), and the context array."""
  b, t = tokens_BxT.shape
  logits_BxV, cache = _run(model, params, cache, tokens_BxT, 0,
                           logits_at_S=jnp.arange(b) * t + length - 1)
  context_BxS = jnp.zeros((b, cache_size), jnp.int32).at[:, :t].set(tokens_BxT)
  return _set_cache_length(cache, length), logits_BxV, context_BxS


def _prefill(model: GPT, params, prompt_BxP, prompt_length, seed, cache_size: int) -> DecodeState:
  """Fills a fresh cache of `cache_size` positions with the prompt (right-padded to a bucket;
  real length given)."""
  cache = _empty_cache(model, params, prompt_BxP.shape[0], cache_size)
  cache, logits_BxV, context_BxS = _fill(model, params, cache, prompt_BxP, prompt_length,
                                         cache_size)
  key = jax.random.key(seed)
  return DecodeState(
      cache=cache, context_BxS=context_BxS, length=jnp.asarray(prompt_length, jnp.int32),
      logits_BxV=logits_BxV,
      keys_B=jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(prompt_BxP.shape[0])),
      num_generated=jnp.array(0, jnp.int32))


def refill_length(cache_size: int) -> int:
  return cache_size // 2


def _refill(model: GPT, params, state: DecodeState) -> DecodeState:
  """Makes room in a full cache: its newest `refill_length` tokens become the whole context.

  The logits stay those of the full context: the next token is still predicted from it.
  """
  size = state.context_BxS.shape[1]
  keep = refill_length(size)
  recent_BxR = state.context_BxS[:, -keep:]
  cache, _, context_BxS = _fill(model, params, _set_cache_length(state.cache, 0), recent_BxR,
                                keep, size)
  return state.replace(cache=cache, context_BxS=context_BxS, length=jnp.array(keep, jnp.int32))


def _sampled_rows(x):
  """x with its rows split over the devices that split the weights (each samples its share
  of the rows); as it is elsewhere."""
  return nn.with_logical_constraint(x, ("sampled_rows",) + (None,) * (x.ndim - 1))


def _every_row(x):
  """x whole on every device where the weights are split (each embeds every row)."""
  return nn.with_logical_constraint(x, (None,) * x.ndim)


def _decode(model: GPT, params, state: DecodeState, sampling: Sampling, num_steps,
            max_steps: int, refills: bool):
  """Samples `num_steps` (traced, at most `max_steps`) tokens per sequence, refilling the
  cache whenever it is full; returns the new state and tokens (B, max_steps), valid up to
  num_steps. Only with `refills` (a generation longer than its cache) is the refill compiled
  in: a second forward pass, which took 40% of the loop's compile time."""
  s = state.context_BxS.shape[1]
  bits_BxN = step_bits(state.keys_B, state.num_generated, max_steps)

  def step(i, carry):
    st, tokens_BxN = carry
    token_B = sample_token(_sampled_rows(st.logits_BxV), sampling, _sampled_rows(bits_BxN[:, i]))
    token_B = _every_row(token_B)
    logits_Bx1xV, cache = _run(model, params, st.cache, token_B[:, None], st.length)
    context_BxS = jax.lax.dynamic_update_slice(st.context_BxS, token_B[:, None], (0, st.length))
    st = st.replace(cache=cache, context_BxS=context_BxS, length=st.length + 1,
                    logits_BxV=logits_Bx1xV[:, 0], num_generated=st.num_generated + 1)
    return st, jax.lax.dynamic_update_slice(tokens_BxN, token_B[:, None], (0, i))

  def segment(carry):
    """Refills a full cache, then decodes until it is full again or the steps are done;
    the refill's branch is taken once per segment rather than tested every step."""
    st, tokens_BxN, done = carry
    if refills:
      st = jax.lax.cond(st.length == s, functools.partial(_refill, model, params),
                        lambda x: x, st)
    end = jnp.minimum(num_steps, done + s - st.length)
    st, tokens_BxN = jax.lax.fori_loop(done, end, step, (st, tokens_BxN))
    return st, tokens_BxN, end

  tokens_BxN = jnp.zeros((state.logits_BxV.shape[0], max_steps), jnp.int32)
  state, tokens_BxN, _ = jax.lax.while_loop(lambda carry: carry[2] < num_steps, segment,
                                            (state, tokens_BxN, jnp.array(0, jnp.int32)))
  return state, tokens_BxN


def compile_fns(prefill_fn, decode_fn, large: bool = False):
  """Jitted prefill and decode (tests wrap the plain functions to count traces), for a large
  or int8 model or another."""
  options = _LARGE_COMPILER_OPTIONS if large else _COMPILER_OPTIONS
  jit = functools.partial(jax.jit, compiler_options=options)
  return (jit(prefill_fn, static_argnames=("model", "cache_size")),
          jit(decode_fn, static_argnames=("model", "max_steps", "refills"),
              donate_argnames=("state",)))


@functools.cache
def compiled(large: bool = False):
  """The jitted (prefill, decode), made on first use, when the compile-time counter starts."""
  _start_counting_compile_time()
  return compile_fns(_prefill, _decode, large)


@functools.cache
def _start_counting_compile_time():
  jax.monitoring.register_event_duration_secs_listener(_count_compile_time)


def bucket(length: int, block_size: int) -> int:
  """Prompts and caches take a power of two positions (at most block_size), so few shapes
  compile."""
  return min(block_size, 1 << max(0, length - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where generation runs: the mesh (None: where the parameters are), the logical-axis rules
  of the model's sharding constraints, and how the rows of a batch are split."""
  mesh: jax.sharding.Mesh | None = None
  rules: tuple = ()
  rows: NamedSharding | None = None  # None: replicated on the mesh

  def put_rows(self, x):
    if self.mesh is None:
      return x
    return jax.device_put(x, self.rows or sharding.replicated(self.mesh))

  @contextlib.contextmanager
  def active(self):
    """Around each compiled call (not across the generator's yields), since the model's
    sharding constraints would otherwise resolve on the caller's mesh and rules."""
    with nn.logical_axis_rules(self.rules), (jax.set_mesh(self.mesh) if self.mesh else
                                             contextlib.nullcontext()):
      yield


def place(model: GPT, params, num_samples: int, split_weights: bool = False):
  """The parameters placed on the devices that hold them, and the Placement to run on.

  The rows are split over as many devices as split them evenly, the parameters replicated:
  each device decodes its rows with no communication. With `split_weights` (a model of
  LARGE_MODEL_WEIGHTS or more), several devices there split each weight matrix instead, by
  its heads, MLP features or vocabulary (tensor parallelism), so that each reads only its
  share of the weights per token: on CPU a decoding step's matmuls cost about the same for 1
  row as for 8, and two devices each reading every weight take twice as long as one.
  Parameters sharded over devices (a model too large for one) or processes stay where they
  are.
  """
  leaves = jax.tree.leaves(params)
  if not all(x.is_fully_addressable and x.sharding.is_fully_replicated for x in leaves):
    return params, Placement()
  devices = sorted(set().union(*(x.sharding.device_set for x in leaves)), key=lambda d: d.id)
  n = max(d for d in range(1, len(devices) + 1) if num_samples % d == 0)
  split = _weight_split_size(model.config, len(devices)) if split_weights and n > 1 else 1
  if split > 1:
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": split}, devices[:split])
    return (jax.device_put(params, _split_shardings(model, mesh)),
            Placement(mesh, sharding.WEIGHT_SPLIT_RULES))
  mesh = sharding.make_mesh({"data": n, "fsdp": 1, "tensor": 1}, devices[:n])
  return (jax.device_put(params, sharding.replicated(mesh)),
          Placement(mesh, rows=sharding.global_batch_sharding(mesh)))


@functools.cache
def _split_shardings(model: GPT, mesh: jax.sharding.Mesh):
  """The shardings of the model's parameters split over `mesh`, found once per model and mesh
  in a process: a trace of the whole model, 0.2 s at GPT-2's size (a quarter of a 32-token
  answer's time at batch 8), at each generation otherwise."""
  return jax.tree.map(lambda x: x.sharding, abstract_params(model, mesh))


def _weight_split_size(c: GPTConfig, num_devices: int) -> int:
  """The most devices, up to `num_devices`, that split the key/value heads, the MLP and the
  vocabulary evenly. (Where the heads are not split, each device would compute attention
  for every row, and the 30 layers' collectives of a SmolLM2 shape cost more than the
  weights save.)"""
  return max(d for d in range(1, num_devices + 1)
             if c.kv_heads % d == 0 and c.mlp_features % d == 0 and c.padded_vocab_size % d == 0)


def check_memory(model: GPT, params, num_samples: int) -> None:
  """A UserError if `num_samples` rows' decode state at the longest (a prompt and cache of
  block_size: one row's abstract shapes, none allocated, times the rows) exceeds the memory of
  all the devices here."""
  s = model.config.block_size
  prompt_1xS = jax.ShapeDtypeStruct((1, s), jnp.int32)
  with Placement().active():
    state = jax.eval_shape(functools.partial(_prefill, model, cache_size=s), params, prompt_1xS,
                           1, 0)
  needed = num_samples * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  per_device, what = memory.device_memory(jax.local_devices()[0])
  count = jax.local_device_count()
  if needed > per_device * count:
    raise UserError(f"--num_samples={num_samples} needs {needed / 1e9:,.1f} GB for its caches, "
                    f"more than the {per_device * count / 1e9:,.1f} GB of the "
                    f"{count} devices here ({what}): pass fewer samples")


def logits(model: GPT, params, tokens_BxT) -> np.ndarray:
  """The model's float32 logits (B, T, vocabulary) on whole sequences of token ids (B, T),
  the rows split over devices as generation splits its samples."""
  tokens_BxT = np.asarray(tokens_BxT, np.int32)
  params, placement = place(model, params, tokens_BxT.shape[0])
  tokens_BxT = placement.put_rows(tokens_BxT)
  with placement.active():
    logits_BxTxV = _forward(model, params, tokens_BxT)
  return np.asarray(logits_BxTxV, np.float32)[..., :model.config.vocab_size]


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(model: GPT, params, tokens_BxT):
  return model.apply({"params": params}, tokens_BxT)


_compile_seconds = [0.0]  # tracing, lowering and compiling, in this process so far


def _count_compile_time(event: str, duration: float, **_):
  if event.startswith("/jax/core/compile/"):
    _compile_seconds[0] += duration


@dataclasses.dataclass
class Timing:
  """Where a generation's time went: compiling (first calls only) and generating."""
  compile_s: float = 0.0
  generate_s: float = 0.0
  tokens: int = 0  # tokens generated, over all samples
  kept: int | None = None  # of them, those before the samples' stops (generate_text)

  def summary(self) -> str:
    rate = self.tokens / max(self.generate_s, 1e-9)
    kept = ("" if self.kept is None or self.kept == self.tokens else
            f" ({self.kept:,} of them before the samples' stops)")
    return (f"compiled in {self.compile_s:.2f} s; {self.tokens:,} tokens in "
            f"{self.generate_s:.2f} s = {rate:,.0f} tokens/s{kept}")


def generate(model: GPT, params, prompt_ids, max_new_tokens: int,
             sampling: Sampling = Sampling(), num_samples: int = 1, seed: int = 0,
             chunk: int = 128, timing: Timing | None = None):
  """Yields arrays (num_samples, n) of new tokens, chunk by chunk, for one prompt.

  A chunk ends after `chunk` tokens; stopping the iteration stops generating.
  """
  s = model.config.block_size
  prompt = np.asarray(prompt_ids, np.int32)[-s:]
  if not len(prompt) or s < 2:
    raise ValueError("generation needs a prompt of at least one token and block_size >= 2")
  timing = Timing() if timing is None else timing
  large_weights = count_params(params) >= LARGE_MODEL_WEIGHTS
  prefill, decode = compiled(bool(model.config.quantize) or large_weights)
  started, compiled_before = time.perf_counter(), _compile_seconds[0]
  padded = np.zeros((num_samples, bucket(len(prompt), s)), np.int32)
  padded[:, :len(prompt)] = prompt
  # A small model's step is not its weights' reads: split, it would only add collectives.
  params, placement = place(model, params, num_samples, split_weights=large_weights)
  padded = placement.put_rows(padded)
  sampling = sampling.as_arrays()
  cache_size = bucket(len(prompt) + max_new_tokens, s)
  refills = len(prompt) + max_new_tokens > cache_size  # past block_size
  # One program in flight at a time: on CPU, sharded programs dispatched back to back can
  # make XLA's all-reduce rendezvous time out and abort (see the training loop, trainer.py).
  with placement.active():
    state = jax.block_until_ready(prefill(model, params, padded, len(prompt), seed, cache_size))
  # XLA picks a program's output shardings: a state handed back otherwise sharded than
  # prefill's (the logits of rows split over devices) would compile decode a second time.
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  remaining = max_new_tokens
  while remaining > 0:
    n = min(chunk, remaining)
    with placement.active():
      state, tokens_BxC = decode(model, params, state, sampling, n, chunk, refills)
    state = jax.device_put(state, state_shardings)
    new_BxN = np.asarray(tokens_BxC)[:, :n]
    remaining -= n
    timing.tokens += new_BxN.size
    timing.compile_s = _compile_seconds[0] - compiled_before
    timing.generate_s = time.perf_counter() - started - timing.compile_s
    yield new_BxN


class _SampleText:
  """One sample's text, ended at a stop token (end of text or of a turn) or before the first
  `stop`; hands out what is safe to print.

  Its ids are decoded together each time, so a character whose bytes span two chunks
  (byte-level BPE) comes out whole; a trailing incomplete one is held back until then.
  """

  def __init__(self, tokenizer, stop: str):
    self.tokenizer, self.stop, self.stop_ids = tokenizer, stop, set(stop_ids(tokenizer))
    self.ids, self.text, self.printed, self.done = [], "", 0, False

  def add(self, new_ids) -> str:
    if self.done:
      return ""
    new_ids = [int(i) for i in new_ids]
    end = next((n for n, i in enumerate(new_ids) if i in self.stop_ids), None)
    if end is not None:
      new_ids, self.done = new_ids[:end], True
    self.ids += new_ids
    self.text = self.tokenizer.decode(self.ids)
    cut = self.text.find(self.stop, max(0, self.printed - len(self.stop))) if self.stop else -1
    if cut >= 0:
      self.text, self.done = self.text[:cut], True
    if self.done:
      return self.flush()
    # A stop text may begin in this chunk and end in the next: hold its length back.
    incomplete = len(self.text) - len(self.text.rstrip("\ufffd"))
    return self._take(len(self.text) - max(len(self.stop) - 1, incomplete))

  def flush(self) -> str:
    return self._take(len(self.text))

  def kept_tokens(self) -> int:
    """How many of its ids the sample's text needs: those before its stop."""
    covers = lambda k: len(self.tokenizer.decode(self.ids[:k]).rstrip("\ufffd")) >= len(self.text)
    low, high = 0, len(self.ids)
    while low < high:
      middle = (low + high) // 2
      low, high = (low, middle) if covers(middle) else (middle + 1, high)
    return low

  def _take(self, end: int) -> str:
    piece = self.text[self.printed:end]
    self.printed = max(self.printed, end)
    return piece


def stop_ids(tokenizer) -> tuple[int, ...]:
  """The ids that end a sample: the end-of-text token and a chat model's end-of-turn tokens
  (none for characters)."""
  end = tokenizer.end_of_text_id
  return getattr(tokenizer, "stop_ids", () if end is None else (end,))


def prompt_ids(tokenizer, prompt: str, chat: bool = False) -> np.ndarray:
  """The prompt's ids, after the begin-of-text token where the model's tokenizer adds one;
  a `chat` prompt (a chat template's text, which writes the tokens it wants) as it is, as
  transformers' apply_chat_template and chat training (data/chat.py) encode it."""
  ids = tokenizer.encode(prompt) if chat else getattr(tokenizer, "encode_prompt",
                                                      tokenizer.encode)(prompt)
  if not len(ids):
    raise UserError(f"the prompt {prompt!r} is no token to the model's tokenizer (it drops "
                    "what the prompt holds, such as whitespace): give a prompt with a word")
  return ids


def default_prompt(tokenizer) -> str:
  """A newline, or where the tokenizer has none (a text without one) or drops it (a
  word-level tokenizer), the first of its first tokens that is a prompt."""
  for text in ("\n", *(tokenizer.decode([i]) for i in range(256))):
    try:
      prompt_ids(tokenizer, text)
      return text
    except UserError:
      continue
  return "\n"  # prompt_ids says what is wrong with it


def chat_prompt(tokenizer, messages: list[dict], max_tokens: int) -> tuple[str, list[dict]]:
  """The text a chat model answers `messages` after (an optional system message, then user and
  assistant turns, the user's last): the chat template's, with the assistant's turn begun.

  While it is longer than `max_tokens`, its oldest turn (a user message and the answer) is
  dropped; the system message and the newest user message stay. Returns the text and the
  messages kept.
  """
  system = messages[:1] if messages[0]["role"] == "system" else []
  turns = messages[len(system):]
  while True:
    text = chat_template.render(tokenizer, system + turns, add_generation_prompt=True)
    if len(turns) == 1 or len(prompt_ids(tokenizer, text, chat=True)) <= max_tokens:
      return text, system + turns
    turns = turns[2:]


def generate_text(model: GPT, params, tokenizer, prompt: str, max_new_tokens: int,
                  sampling: Sampling = Sampling(), num_samples: int = 1, seed: int = 0,
                  stop: str = "", timing: Timing | None = None, chat: bool = False):
  """Yields lists of `num_samples` new pieces of text, as they are generated.

  A sample ends at one of the tokenizer's stop tokens (end of text, a chat model's end of
  turn) or before the first occurrence of `stop` (neither included); generation ends once
  every sample has ended. The prompt is encoded as `prompt_ids` encodes it (`chat`: a chat
  template's text).
  """
  samples = [_SampleText(tokenizer, stop) for _ in range(num_samples)]
  chunks = generate(model, params, prompt_ids(tokenizer, prompt, chat), max_new_tokens, sampling,
                    num_samples, seed, timing=timing)
  for new_BxN in chunks:
    yield [sample.add(row) for sample, row in zip(samples, new_BxN)]
    if all(sample.done for sample in samples):
      chunks.close()
      break
  yield [sample.flush() for sample in samples]
  if timing is not None:
    timing.kept = sum(sample.kept_tokens() for sample in samples)

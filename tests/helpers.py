"""Helpers shared by the test files: commands as a user runs them, tiny configs and runs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgpt import config as config_lib, layers, optim, sharding, state as state_lib, steps
from jaxgpt.model import GPT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny model every test trains, in-process (tiny_config) and on the command line
# (tiny_args): 2 layers, 32 wide, a block of 16, batches of 8 from the NumPy pipeline.
_TINY = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16,
        "model.dropout": 0.0, "train.batch_size": 8, "data.pipeline": "numpy"}
# An in-process run of it: 10 steps, evaluated, logged and saved every 5.
_IN_PROCESS = {"model.vocab_multiple": 8, "train.max_steps": 10, "train.warmup_steps": 2,
            "train.eval_every": 5, "train.eval_steps": 2, "train.log_every": 5,
            "train.checkpoint_every": 5, "train.sample_tokens": 0}
# A command's run keeps the CPU config's schedule, with short evaluations and a quiet log.
_COMMAND = {"train.eval_steps": 4, "train.log_every": 50}
CPU_CONFIG = "configs/shakespeare_char_cpu.py"


def run(module, *args, check=True, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  result = subprocess.run([sys.executable, "-m", f"jaxgpt.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


def with_ctrl_c(module, *args):
  """The command line of `python -m jaxgpt.MODULE ARGS` that catches Ctrl-C as when started
  from a terminal: a process started with SIGINT ignored keeps ignoring it (Python installs no
  KeyboardInterrupt), and in the whole suite the pytest process has been seen to hand SIGINT
  down ignored. Set in the child itself: a preexec function would fork the multithreaded
  parent. sys.argv[0] is "-m" while the package is imported, as under `python -m`."""
  script = ("import runpy, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "import os\n"
            "if os.environ.get('JAXGPT_TEST_STARTED'): open(os.environ['JAXGPT_TEST_STARTED'], 'w').close()\n"
            "sys.argv = ['-m', *sys.argv[1:]]\n"
            f"runpy.run_module('jaxgpt.{module}', run_name='__main__', alter_sys=True)\n")
  return [sys.executable, "-c", script, *args]


def assert_clean_error(result, *words):
  """Bad input: exit status 2 and one last line on stderr, `error: ...` with `words`."""
  assert result.returncode == 2, (result.returncode, result.stderr)
  assert "Traceback" not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr
  for word in words:
    assert word in last, last


def require_transformers():
  """transformers (with PyTorch) for the parity tests. CI installs it (.ci/run) and sets
  JAXGPT_REQUIRE_TRANSFORMERS=1, so there these tests fail rather than skip without it."""
  if os.environ.get("JAXGPT_REQUIRE_TRANSFORMERS"):
    import transformers  # pylint: disable=g-import-not-at-top
    return transformers
  return pytest.importorskip("transformers")


def init_params(model, seed=0):
  """The model's initial parameters (unboxed), compiled as init_state compiles them: on CPU at
  a lower optimisation level, seconds faster for the same values, bit for bit (test_steps)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  tokens = jax.numpy.zeros((1, model.config.block_size), jax.numpy.int32)
  options = state_lib.CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  init = jax.jit(model.init).lower(jax.random.key(seed), tokens).compile(compiler_options=options)
  return nn.meta.unbox(init(jax.random.key(seed), tokens)["params"])


def perturbed_params(config, seed=0, scale=1.0):
  """A freshly initialised GPT's parameters (host arrays, either form of the layers), each
  scaled and given normal noise of std 0.05: norm scales of one and projections of zero
  would hide mistakes in code that maps or reorders them."""
  params = init_params(GPT(config), seed)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jax.numpy.float32(scale) * np.asarray(x)
                      + rng.normal(0, 0.05, x.shape).astype(np.float32), params)


def jax_logits(model, params, tokens_BxT):
  """The model's logits over the tokenizer's vocabulary (the padded ids cut), as NumPy."""
  logits = model.apply({"params": params}, np.asarray(tokens_BxT, np.int32))
  return np.asarray(logits)[..., :model.config.vocab_size]


def assert_same_logits(actual, expected):
  """Equal to float32 rounding: within 1e-4 of the largest logit (a model with large weights
  has logits that differ by a few 1e-4 between runs of the same float32 computation)."""
  np.testing.assert_allclose(actual, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def _dotted(overrides) -> dict:
  """{"section.key": value} of tiny_config's and tiny_args' overrides: a bare name is a model
  option (n_layer=3) or a top-level key (seed=1), a section takes a dict
  (train=dict(max_steps=4)), and a dotted key is itself (**{"train.max_steps": 4})."""
  base = config_lib.base_config()
  dotted = {}
  for key, value in overrides.items():
    if "." in key:
      dotted[key] = value
    elif isinstance(value, dict):
      dotted.update({f"{key}.{k}": v for k, v in value.items()})
    else:
      dotted[key if key in base and key not in base.model else f"model.{key}"] = value
  for key in dotted:
    section, _, name = key.rpartition(".")
    if name not in (base[section] if section else base):
      raise KeyError(f"tiny_config has no key {key!r}")
  return dotted


def tiny_config(**overrides):
  """The tiny model's config (_TINY, _IN_PROCESS) with `overrides` (see _dotted), small
  enough to train in a test: tiny_config(bias=True, train=dict(max_steps=4))."""
  c = config_lib.base_config()
  for key, value in {**_TINY, **_IN_PROCESS, **_dotted(overrides)}.items():
    section, _, name = key.rpartition(".")
    (c[section] if section else c).update({name: value})
  return c


def tiny_args(config=CPU_CONFIG, **overrides):
  """The command-line flags of the tiny model (_TINY, _COMMAND) on `config` (None: no
  --config flag), with `overrides` as tiny_config takes them:
  tiny_args(train=dict(max_steps=2)) ends with --config.train.max_steps=2."""
  settings = {**_TINY, **_COMMAND, **_dotted(overrides)}
  return ([f"--config={config}"] if config else []) + [f"--config.{k}={v}"
                                                         for k, v in settings.items()]


LINES = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
         "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
         "MERCUTIO:\nA plague o' both your houses!\n\n")


def write_token_dataset(text: str, directory, val_fraction=0.1, shard_chars=2000) -> str:
  """The token folder `python -m jaxgpt.prepare` makes of `text`, split as data.source=text
  splits it, each split in shards of `shard_chars` characters."""
  from jaxgpt.data import CharTokenizer, shards  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  tokenizer = CharTokenizer.from_text(text)
  cut = int(len(text) * (1 - val_fraction))
  splits = {}
  for split, part in (("train", text[:cut]), ("val", text[cut:])):
    tokens = tokenizer.encode(part)
    pieces = [tokens[i:i + shard_chars] for i in range(0, len(tokens), shard_chars)]
    splits[split] = [shards.write_shard(os.path.join(directory, f"{split}_{i:06d}.bin"), piece,
                                        shards.token_dtype(tokenizer.vocab_size))
                     for i, piece in enumerate(pieces)]
  tokenizer.save(str(directory))
  info = {"format": shards.FORMAT, "version": shards.FORMAT_VERSION, "tokenizer": "char",
          "vocab_size": tokenizer.vocab_size, "end_of_text_id": None, "dtype": "uint16",
          "source": {}, "splits": splits, "documents": {"train": 1, "val": 1}}
  with open(os.path.join(directory, shards.DATASET_FILE), "w", encoding="utf-8") as f:
    json.dump(info, f)
  return str(directory)


def text_config(text_file, **train):
  """tiny_config() training on `text_file`, logging every step."""
  return tiny_config(data=dict(source="text", path=text_file), train=dict(log_every=1, **train))


def logged_losses(workdir, key="train_loss"):
  """{step: value} of one key of a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r[key] for r in records if key in r}


def setup_step(config, devices, training=False):
  """(model, mesh, state, jitted step); `training` takes matmul_precision as a run does."""
  model = GPT(config_lib.model_config(config, 30, training))
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, devices)
  shardings = state_lib.state_shardings(model, optimizer, mesh)
  state = state_lib.init_state(model, optimizer, mesh, config.seed)
  step = steps.jit_train_step(model, optimizer, optim.learning_rate_schedule(config.train),
                              state_lib.dropout_key(config.seed), mesh, shardings)
  return model, mesh, state, step


def random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 30, (config.train.batch_size, config.model.block_size), dtype=np.int32)
  return x, np.roll(x, -1, axis=1)


def no_stop(rows):
  return np.zeros(rows, np.int32)


def train_on_one_batch(config, num_steps, devices=None, dropout=0.0, state=None, training=False):
  """(losses, state) of `num_steps` jitted train steps on one random batch, from a fresh
  state or from `state` (host arrays; either form of the layers, converted to the config's)."""
  config.model.dropout = dropout
  _, mesh, fresh, step = setup_step(config, devices or jax.devices()[:1], training)
  state = fresh if state is None else layers.converted(state, fresh)
  a = config.train.grad_accum_steps
  x, y = random_batch(config)
  losses = []
  with sharding.rules_context(mesh):
    for _ in range(num_steps):
      xs, ys = (sharding.global_batch(z.reshape(a, -1, z.shape[-1]), mesh, 1) for z in (x, y))
      state, metrics = step(state, (xs, ys), no_stop(x.shape[0] // a))
      losses.append(float(metrics["loss"]))  # blocks: one step in flight at most
  return losses, state


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_chat_tokenizer(folder) -> str:
  """A Hugging Face tokenizer folder with a ChatML chat template: a byte-level BPE trained on
  LINES (tokenizer.json) and tokenizer_config.json with the template and eos <|im_end|>."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES] * 20, vocab_size=300, min_frequency=1,
                          special_tokens=CHAT_SPECIAL_TOKENS, show_progress=False)
  bpe.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>",
               "bos_token": "<|endoftext|>"}, f)
  return str(folder)


def write_chat_jsonl(path, num_conversations=40) -> str:
  """Conversations in the chat JSONL format: a user asks for a line of a speech, the
  assistant answers with it; some have a system message, some a second turn."""
  speeches = [s for s in LINES.split("\n\n") if s]
  with open(path, "w", encoding="utf-8") as f:
    for i in range(num_conversations):
      speaker, line = speeches[i % len(speeches)].split("\n", 1)
      messages = [{"role": "user", "content": f"{speaker.rstrip(':')}?"},
                  {"role": "assistant", "content": line}]
      if i % 3 == 0:
        messages.insert(0, {"role": "system", "content": "Answer in verse."})
      if i % 4 == 0:
        messages += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": line}]
      f.write(json.dumps({"messages": messages}) + "\n")
  return str(path)

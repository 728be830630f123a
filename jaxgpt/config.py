"""The run config: every key with its default, and the checks that end in a clear error.

Config files in `configs/` start from `base_config()` and change what they need, so every
key exists in every config and can be overridden with `--config.KEY=VALUE`.
"""

import json
import math
import os

import ml_collections

from jaxgpt import files, peers
from jaxgpt.errors import UserError, first_line

TEXT_SOURCES = ("shakespeare_plays", "text", "kaggle_csv", "tfds")
# tokens: shards that `python -m jaxgpt.prepare` wrote; chat: JSONL conversations
DATA_SOURCES = (*TEXT_SOURCES, "tokens", "chat")
TOKENIZERS = ("char", "gpt2")
PRECISIONS = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("auto", "float32", "bfloat16")
BACKENDS = ("auto", "cpu", "gpu", "tpu")
PIPELINES = ("auto", "tf", "numpy")
OPTIMIZERS = ("adamw", "muon")


def backend_precision() -> str:
  """bfloat16 compute on GPU and TPU, float32 on CPU (which has no fast bfloat16)."""
  import jax  # pylint: disable=g-import-not-at-top  # this module loads without JAX
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def matmul_dtype(config) -> str:
  """The training model's Dense products (GPTConfig.matmul_dtype): `matmul_precision`, where
  auto is bfloat16 products of float32 compute on a CPU with bfloat16 dot instructions (Intel
  AMX, AVX512-BF16: nanoGPT's CPU step in about 0.65-0.75x float32's time at the same loss,
  BENCHMARKS.md) and XLA's default ("") elsewhere."""
  if config.matmul_precision != "auto":
    return config.matmul_precision
  if config.precision != "float32":
    return ""
  import jax  # pylint: disable=g-import-not-at-top  # this module loads without JAX
  from jaxgpt import runtime  # pylint: disable=g-import-not-at-top
  return "bfloat16" if jax.default_backend() == "cpu" and runtime.cpu_has_bfloat16_dot() else ""


def model_section() -> ml_collections.ConfigDict:
  """The `model` section: GPTConfig's options with their defaults (jaxgpt/model.py). An
  option with legacy values takes any type here, so that older runs' configs load."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top  # this module loads without JAX
  return ml_collections.ConfigDict({
      f.name: ml_collections.FieldReference(f.default, field_type=object)
      if f.metadata["legacy"] else f.default for f in model.options()})


def base_config() -> ml_collections.ConfigDict:
  """nanoGPT's shakespeare_char settings; config files adjust them."""
  c = ml_collections.ConfigDict()
  c.seed = 1337
  c.backend = "auto"
  c.precision = "float32"
  c.matmul_precision = "auto"
  c.init_from = "scratch"

  c.data = ml_collections.ConfigDict()
  c.data.source = "shakespeare_plays"
  c.data.path = ""  # the file for text, kaggle_csv and chat; the prepared folder for tokens
  c.data.tfds_name = "tiny_shakespeare"
  c.data.tokenizer = "char"
  c.data.tokenizer_path = ""  # a Hugging Face tokenizer folder; "" takes init_from's or the hub's gpt2
  c.data.val_fraction = 0.1
  c.data.chat_packing = True  # data.source=chat: several conversations to a row, or one
  c.data.pipeline = "numpy"  # or "tf" (tf.data), or "auto": tf.data when TensorFlow is installed
  c.data.fingerprint = ""  # set by the run: a hash of its training and validation tokens
  c.data.hellaswag_path = ""  # HellaSwag's JSONL (or "val": the official file) for train.hellaswag_every

  c.model = model_section()

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  # "adamw", or "muon": Muon (momentum orthogonalised by Newton-Schulz) for the hidden
  # matrices (c_attn, c_proj, c_fc kernels), AdamW for embeddings, head, norms and biases.
  c.train.optimizer = "adamw"
  c.train.muon_learning_rate = 0.02  # Muon's peak; it follows the same warm-up and decay
  c.train.muon_momentum = 0.95
  c.train.muon_weight_decay = 0.0
  c.train.max_steps = 5000
  c.train.learning_rate = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1
  c.train.beta1 = 0.9
  c.train.beta2 = 0.99
  c.train.grad_clip = 1.0
  c.train.grad_accum_steps = 1
  c.train.eval_every = 250
  c.train.eval_steps = 200
  c.train.hellaswag_every = 0  # steps between HellaSwag evaluations (data.hellaswag_path); 0: off
  c.train.log_every = 10
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 3
  c.train.sample_tokens = 300
  # Several processes: how long a checkpoint save (with its cross-process barriers) may take,
  # and how long a silent process is waited for, before the run stops with an error.
  c.train.checkpoint_timeout_secs = 1200
  c.train.peer_timeout_secs = peers.TIMEOUT_SECS
  c.train.profile_steps = ""  # "START,END": a jax.profiler trace of those steps (see docs/runs.md)

  # LoRA: rank > 0 trains only low-rank adapters on the named layers; the rest stays frozen.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0
  c.lora.targets = "c_attn"  # comma-separated layer names: c_attn, c_proj, c_fc

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  return c


# What each key of base_config means: `python -m jaxgpt.train --help` lists these with each
# key's value (a test checks that every key has one).
_KEY_MEANINGS = {
    "seed": "One seed for initialisation, data order and dropout.",
    "backend": f"{', '.join(BACKENDS)}: auto takes what JAX finds; another insists on it.",
    "precision": f"Compute dtype, {' or '.join(PRECISIONS)}; parameters, logits and loss "
                 "stay float32.",
    "matmul_precision": f"{', '.join(MATMUL_PRECISIONS)}: the training step's matmul products "
                        "(summed in float32 either way). auto is bfloat16 on a CPU with bfloat16 "
                        "dot instructions (Intel AMX, AVX512-BF16: AMD Zen 4 and later) while "
                        "precision=float32 (faster at the same loss: BENCHMARKS.md), "
                        "XLA's default elsewhere (TPUs: bfloat16 passes); float32 insists on "
                        "float32 products. jaxgpt.sample and jaxgpt.eval compute in their --dtype.",
    "init_from": "scratch, or start from pretrained weights: gpt2, gpt2-medium, gpt2-large, "
                 "gpt2-xl, a hub name (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen3-0.6B, "
                 "meta-llama/Llama-3.2-1B) or a Hugging Face GPT-2, Llama, Mistral, Qwen2 or "
                 "Qwen3 folder.",
    "data.source": f"The training text: {', '.join(DATA_SOURCES)} (tokens: the folder "
                   "`python -m jaxgpt.prepare` wrote; chat: JSONL of {\"messages\": [...]}, "
                   "trained on the assistant turns).",
    "data.path": "The file of text, kaggle_csv and chat (JSONL conversations); the prepared "
                 "folder of tokens.",
    "data.tfds_name": "The TFDS text dataset of data.source=tfds.",
    "data.tokenizer": f"{' or '.join(TOKENIZERS)}: a Hugging Face tokenizer (init_from's, "
                      "data.tokenizer_path's, or GPT-2's byte-level BPE).",
    "data.tokenizer_path": "A Hugging Face tokenizer folder for data.tokenizer=gpt2 (its "
                           "tokenizer.json, special tokens and chat template); '' takes "
                           "init_from's, or the hub's gpt2.",
    "data.val_fraction": "The share of the text (or of the conversations) held out for "
                         "validation.",
    "data.chat_packing": "data.source=chat: pack several conversations into each row, each "
                         "attending only to itself (faster per trained token: BENCHMARKS.md), "
                         "or pad one to a row.",
    "data.pipeline": f"{', '.join(PIPELINES)}: auto is tf.data when TensorFlow is installed; "
                     "both give identical batches (NumPy's faster on CPU hosts: BENCHMARKS.md; "
                     "chat data is NumPy's only).",
    "data.fingerprint": "Set by the run: a hash of its training and validation tokens.",
    "data.hellaswag_path": "HellaSwag's hellaswag_val.jsonl (or val: the official file, fetched "
                           "once) for train.hellaswag_every.",
    "train.batch_size": "Global batch, in sequences per optimizer step.",
    "train.optimizer": f"{' or '.join(OPTIMIZERS)} (Muon for the hidden matrices, AdamW for "
                       "the rest).",
    "train.muon_learning_rate": "Muon's peak learning rate (same warm-up and decay).",
    "train.muon_momentum": "Muon's momentum.",
    "train.muon_weight_decay": "Muon's decoupled weight decay.",
    "train.max_steps": "Optimizer steps; the cosine decay ends here.",
    "train.learning_rate": "Peak learning rate, after the warm-up.",
    "train.min_lr": "Learning rate at max_steps.",
    "train.warmup_steps": "Steps of linear warm-up.",
    "train.weight_decay": "AdamW's weight decay (matrices only).",
    "train.beta1": "AdamW's beta1.",
    "train.beta2": "AdamW's beta2.",
    "train.grad_clip": "Global gradient norm clipping (0: off).",
    "train.grad_accum_steps": "Micro-batches the global batch is split into.",
    "train.eval_every": "Steps between evaluations (and best checkpoints).",
    "train.eval_steps": "Validation batches per evaluation.",
    "train.hellaswag_every": "Steps between HellaSwag evaluations of data.hellaswag_path, "
                             "logged as hellaswag_acc and hellaswag_acc_norm (0: off).",
    "train.log_every": "Steps between logged train losses.",
    "train.checkpoint_every": "Steps between checkpoints.",
    "train.keep_checkpoints": "Checkpoints kept (the newest).",
    "train.sample_tokens": "Length of the sample printed after training (0: none).",
    "train.checkpoint_timeout_secs": "How long a checkpoint save may take before the run "
                                     "stops with an error.",
    "train.peer_timeout_secs": "With several processes: how long a silent process is waited "
                               "for.",
    "train.profile_steps": "START,END: a jax.profiler trace of those steps ('' is off).",
    "lora.rank": "LoRA adapters' rank; 0 is off (the whole model trains).",
    "lora.alpha": "LoRA's scale numerator.",
    "lora.targets": "Comma-separated layers that get adapters: c_attn (q, k and v), c_proj "
                    "(attention's output and the MLP's down projection), c_fc (the MLP's input: "
                    "gate and up for swiglu).",
    "mesh.data": "Data-parallel devices; -1 takes the remaining devices.",
    "mesh.fsdp": "Devices the parameters are sharded over (FSDP); -1 takes the remaining.",
    "mesh.tensor": "Tensor-parallel devices; -1 takes the remaining.",
}


def key_meanings() -> dict[str, str]:
  """What each key of base_config means, keyed as KEY or SECTION.KEY; the model's come from
  GPTConfig's fields, led by their choices."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top
  meanings = {f"model.{f.name}": f.metadata["meaning"] for f in model.options()}
  for f in model.options():
    if model.choices(f):
      meanings[f"model.{f.name}"] = f"{', '.join(model.choices(f))}: {f.metadata['meaning']}"
  return {**_KEY_MEANINGS, **meanings}


def flat_items(c: ml_collections.ConfigDict, prefix: str = ""):
  """(KEY, value) of every key, a section's keys spelt SECTION.KEY."""
  for name, value in c.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_items(value, f"{prefix}{name}.")
    else:
      yield prefix + name, value


def identity_keys() -> tuple[str, ...]:
  """What makes a run the run it is: a resume takes these from the workdir's config.json
  (the model's SHAPE and DESIGN options among them)."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top
  return ("seed", "init_from", "data.source", "data.path", "data.tfds_name", "data.val_fraction",
          "data.chat_packing", "data.tokenizer", "data.tokenizer_path",
          *(f"model.{f.name}" for f in model.options() if f.metadata["kind"] != model.TRAINING),
          "train.optimizer", "lora.rank", "lora.alpha", "lora.targets")


def adopt_identity(c: ml_collections.ConfigDict, saved: ml_collections.ConfigDict,
                   explicit: set[str], workdir: str) -> list[str]:
  """Gives `c` the saved run's identity keys; a key given on the command line (`explicit`)
  with another value is a UserError. Returns the keys that changed."""
  changed = []
  for key in identity_keys():
    ours, theirs = _get(c, key), _get(saved, key)
    if ours == theirs or _same_in_effect(key, c, saved, explicit, workdir):
      continue
    _require(key not in explicit,
             f"--config.{key}={ours} contradicts the run in {workdir}, which has {key}={theirs}: "
             f"drop that flag to resume the run, or train with it in a new --workdir")
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = theirs
    changed.append(f"{key}={theirs}")
  return changed


_DERIVED_MODEL_KEYS = ("model.n_kv_head", "model.head_dim", "model.mlp_width")


def _derived(key: str, m: ml_collections.ConfigDict, value: int) -> int:
  """What `value` of a _DERIVED_MODEL_KEYS key means in the model section `m` (0 derives it
  from m's other keys)."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top  # this module loads without JAX
  return {"model.n_kv_head": lambda: model.kv_heads_of(m.n_head, value),
          "model.head_dim": lambda: model.head_size_of(m.n_embd, m.n_head, value),
          "model.mlp_width": lambda: model.mlp_features_of(m.n_embd, m.mlp, value)}[key]()


def _same_in_effect(key: str, c: ml_collections.ConfigDict, saved: ml_collections.ConfigDict,
                    explicit: set[str], workdir: str) -> bool:
  """Whether two spellings of an identity key are the same run: lora.targets in any order;
  n_kv_head, head_dim or mlp_width as the value the run's 0 stands for;
  a data.path given on the command line (the run's data moved, or its path was relative to
  another folder) whose data the saved data.fingerprint will check once it is read; an
  init_from given on the command line that names the run's pretrained folder (by another
  path, or a moved copy)."""
  if key == "lora.targets":
    return set(lora_targets(c)) == set(lora_targets(saved))
  if key in _DERIVED_MODEL_KEYS:  # 0 derives the value from the run's other keys
    return _derived(key, saved.model, _get(c, key)) == _derived(key, saved.model, _get(saved, key))
  if key == "init_from" and key in explicit:
    from jaxgpt import pretrained  # pylint: disable=g-import-not-at-top
    return pretrained.same_model(c.init_from, saved.init_from, workdir)
  return key == "data.path" and key in explicit and bool(saved.data.fingerprint)


def adopt_architecture(c: ml_collections.ConfigDict, name: str, options: dict,
                       explicit: set[str]) -> None:
  """A pretrained model (init_from) decides the model options, its architecture (`name`) and
  its shape: `options`. Those a config file set (configs/default.py's recipe) are replaced;
  an option given on the command line (`explicit`) that the model does not have is a
  UserError."""
  given = [f"model.{key}={c.model[key]!r}" for key in options
           if f"model.{key}" in explicit and _in_effect(c.model, key) != _in_effect(options, key)]
  _require(not given, f"init_from={c.init_from} loads {name}'s architecture and shape, which "
           f"{', '.join(given)} is not: drop that option to fine-tune it, or train it with "
           "init_from=scratch")
  c.model.update(options)


def _in_effect(options, key: str):
  """The option's value as the model takes it (0 for head_dim and n_kv_head stands for a
  size the other options give)."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top
  if key == "head_dim":
    return model.head_size_of(options["n_embd"], options["n_head"], options["head_dim"])
  if key == "n_kv_head":
    return model.kv_heads_of(options["n_head"], options["n_kv_head"])
  return options[key]


def gpt2_architecture() -> dict:
  """The model's DESIGN options as GPT-2 has them (their defaults); another value makes a
  model that GPT-2's weights do not load into and `export` writes as another architecture."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top
  return {f.name: f.default for f in model.options() if f.metadata["kind"] == model.DESIGN}


def _get(c, key: str):
  for part in key.split("."):
    c = c[part]
  return c


def lora_targets(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The layer names in the comma-separated `lora.targets`."""
  return tuple(t.strip() for t in c.lora.targets.split(",") if t.strip())


def profile_window(c: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The first and last step of `train.profile_steps` ("START,END"), or None when it is empty."""
  text = c.train.profile_steps.strip()
  if not text:
    return None
  parts = [part.strip() for part in text.split(",")]
  ok = len(parts) == 2 and all(part.isdecimal() for part in parts)
  start, end = (int(part) for part in parts) if ok else (0, 0)
  _require(ok and 1 <= start <= end,
           f"train.profile_steps={c.train.profile_steps!r} is not two steps START,END with "
           "1 <= START <= END: pass e.g. --config.train.profile_steps=10,20")
  return start, end


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


def _check_choice(name: str, value, choices) -> None:
  _require(value in choices,
           f"{name}={value!r} is not one of {', '.join(choices)}: pass --config.{name}=<one of those>")


def _check_positive(name: str, value) -> None:
  _require(value > 0, f"{name} must be positive, got {value}: pass --config.{name}=<a positive number>")


def validate(c: ml_collections.ConfigDict, needs_data: bool = True) -> None:
  """Raises UserError for any setting that cannot work, naming the key and the fix;
  `needs_data=False` (compiling without training) lets data.path be empty."""
  _check_choice("precision", c.precision, PRECISIONS)
  _check_choice("matmul_precision", c.matmul_precision, MATMUL_PRECISIONS)
  _require(not (c.precision == "bfloat16" and c.matmul_precision == "float32"),
           "matmul_precision=float32 needs float32 operands, and precision=bfloat16 rounds them "
           "to bfloat16: choose --config.precision=float32 or --config.matmul_precision=auto")
  _check_choice("backend", c.backend, BACKENDS)
  _check_data(c, needs_data)
  model_config(c, vocab_size=1)  # the options alone: the vocabulary comes with the data
  _check_train(c)
  _check_lora(c)
  for axis in ("data", "fsdp", "tensor"):
    _require(c.mesh[axis] == -1 or c.mesh[axis] > 0,
             f"mesh.{axis} must be a positive size or -1 (the remaining devices), got "
             f"{c.mesh[axis]}: pass --config.mesh.{axis}=-1 or a device count")
  _check_integer_sizes(c)


def _check_data(c: ml_collections.ConfigDict, needs_data: bool) -> None:
  _check_choice("data.source", c.data.source, DATA_SOURCES)
  _check_choice("data.tokenizer", c.data.tokenizer, TOKENIZERS)
  _check_choice("data.pipeline", c.data.pipeline, PIPELINES)
  if needs_data and c.data.source in ("text", "kaggle_csv", "chat"):
    _require(bool(c.data.path),
             f"data.source={c.data.source} needs a file: pass --config.data.path=FILE")
  if needs_data and c.data.source == "tokens":
    _require(bool(c.data.path), "data.source=tokens needs the folder `python -m jaxgpt.prepare` "
             "wrote: pass --config.data.path=DIR")
  _require(0 < c.data.val_fraction < 1,
           f"data.val_fraction must be between 0 and 1, got {c.data.val_fraction}: pass e.g. "
           "--config.data.val_fraction=0.1")


def _check_train(c: ml_collections.ConfigDict) -> None:
  t = c.train
  _check_choice("train.optimizer", t.optimizer, OPTIMIZERS)
  for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2",
              "muon_learning_rate", "muon_momentum", "muon_weight_decay"):
    _require(math.isfinite(t[key]), f"train.{key} must be a finite number, got {t[key]}: pass "
             f"a finite --config.train.{key}")
  for key in ("batch_size", "grad_accum_steps", "eval_every", "eval_steps", "log_every",
              "checkpoint_every", "keep_checkpoints", "learning_rate", "checkpoint_timeout_secs",
              "peer_timeout_secs", "muon_learning_rate"):
    _check_positive(f"train.{key}", t[key])
  for key in ("max_steps", "warmup_steps", "min_lr", "weight_decay", "grad_clip", "sample_tokens",
              "muon_weight_decay"):
    _require(t[key] >= 0, f"train.{key} must not be negative, got {t[key]}: pass "
             f"--config.train.{key}=<0 or more>")
  for key in ("beta1", "beta2", "muon_momentum"):
    _require(0 <= t[key] < 1,
             f"train.{key} must be in [0, 1), got {t[key]}: pass e.g. --config.train.{key}=0.9")
  _require(t.min_lr <= t.learning_rate,
           f"train.min_lr={t.min_lr} is above train.learning_rate={t.learning_rate}, the peak "
           "the schedule decays from: pass a min_lr of at most the learning_rate (e.g. a tenth)")
  _require(t.batch_size % t.grad_accum_steps == 0,
           f"train.batch_size={t.batch_size} is not divisible by train.grad_accum_steps="
           f"{t.grad_accum_steps} (the batch is split into that many micro-batches): pass a "
           "batch_size that is a multiple of grad_accum_steps")
  profile_window(c)
  _require(t.hellaswag_every >= 0, f"train.hellaswag_every must not be negative, got "
           f"{t.hellaswag_every}: pass 0 (off) or a number of steps")
  _require(not t.hellaswag_every or bool(c.data.hellaswag_path),
           "train.hellaswag_every needs HellaSwag's examples: pass "
           "--config.data.hellaswag_path=FILE (hellaswag_val.jsonl) or val")


def _check_lora(c: ml_collections.ConfigDict) -> None:
  _require(c.lora.rank >= 0, f"lora.rank must not be negative, got {c.lora.rank}: pass "
           "--config.lora.rank=0 (off) or a small positive rank such as 8")
  if c.lora.rank:
    _check_positive("lora.alpha", c.lora.alpha)
    from jaxgpt.model import HIDDEN_LAYERS  # pylint: disable=g-import-not-at-top
    targets = lora_targets(c)
    _require(bool(targets) and set(targets) <= set(HIDDEN_LAYERS),
             f"lora.targets={c.lora.targets!r} must name some of {', '.join(HIDDEN_LAYERS)}: "
             "pass e.g. --config.lora.targets=c_attn,c_proj")
    # Adapters before frozen projections that start at zero never get a gradient.
    _require(not (c.init_from == "scratch" and c.model.zero_init_proj and "c_proj" not in targets),
             f"lora.targets={c.lora.targets} on a model from scratch with model.zero_init_proj "
             "would train nothing (the frozen c_proj layers are zero, so no gradient reaches "
             "the adapters): pass --config.lora.targets with c_proj among them, or "
             "--config.model.zero_init_proj=False, or fine-tune a pretrained model (init_from)")


INT32_MAX = 2**31 - 1


def _check_integer_sizes(c: ml_collections.ConfigDict) -> None:
  """Steps, sizes and counts reach the device as int32; the seed is a 64-bit integer."""
  _require(-2**63 <= c.seed < 2**63, f"seed={c.seed} does not fit in 64 bits: pass "
           "--config.seed=<an integer from -2**63 to 2**63-1>")
  for key, value in flat_items(c):
    if isinstance(value, int) and not isinstance(value, bool) and key != "seed":
      _require(value <= INT32_MAX, f"{key}={value} is too large: pass --config.{key}=<at most "
               f"{INT32_MAX}>")


CONFIG_FILE = "config.json"


def save_config(config, workdir: str) -> None:
  files.write_atomically(os.path.join(workdir, CONFIG_FILE),
                         config.to_json_best_effort(indent=2, sort_keys=True))


def is_run_config(keys) -> bool:
  """Whether a config.json's top-level keys are a jaxgpt run's (model, train, data), not a
  Hugging Face model's (model_type) or another program's."""
  return "model_type" not in keys and bool(set(keys) & {"model", "train", "data"})


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's saved config; keys added to jaxgpt since the run was saved get their defaults."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(f"{workdir} holds no jaxgpt run ({CONFIG_FILE} is missing): pass the "
                    "--workdir that `python -m jaxgpt.train` printed")
  config = base_config()
  try:
    with open(path, encoding="utf-8") as f:
      config.update(json.load(f))
  except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
    raise UserError(f"{path} is damaged ({first_line(e)}): restore it from a copy (its keys "
                    "and types are those of configs/default.py), or train in a new "
                    "--workdir") from None
  return config


def model_config(config, vocab_size: int, training: bool = False):
  """The model's GPTConfig: the `model` section's options (older runs' values in today's
  form), the run's precision and LoRA, and the tokenizer's vocabulary size; `training` (the
  train step and its evaluation) adds matmul_precision's products."""
  from jaxgpt import model  # pylint: disable=g-import-not-at-top  # config files load without JAX
  options = {f.name: f.metadata["legacy"].get(config.model[f.name], config.model[f.name])
             for f in model.options()}
  try:
    return model.GPTConfig(**options, vocab_size=vocab_size, dtype=config.precision,
                           matmul_dtype=matmul_dtype(config) if training else "",
                           lora_rank=config.lora.rank, lora_alpha=config.lora.alpha,
                           lora_targets=lora_targets(config))
  except ValueError as e:
    raise UserError(str(e)) from None

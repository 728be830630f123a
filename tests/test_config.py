"""Config validation: every impossible setting is a UserError naming the key."""

import dataclasses
import re

import pytest

from jaxgpt import config as config_lib, sharding
from jaxgpt.errors import UserError


def _config(**changes):
  c = config_lib.base_config()
  for key, value in changes.items():
    section, _, name = key.rpartition("__")
    (c[section] if section else c)[name] = value
  return c


def test_base_config_is_valid():
  config_lib.validate(config_lib.base_config())


def test_a_resume_keeps_how_the_weights_started_and_its_seed():
  """zero_init_proj acts only at initialisation: a resume under a config file without it
  takes the run's value (config.json said False of weights started at zero), and giving
  another value on the command line contradicts the run."""
  saved = _config(model__zero_init_proj=True)
  resumed = _config(model__zero_init_proj=False)
  changed = config_lib.adopt_identity(resumed, saved, set(), "runs/x")
  assert changed == ["model.zero_init_proj=True"] and resumed.model.zero_init_proj
  with pytest.raises(UserError, match="model.zero_init_proj=False contradicts"):
    config_lib.adopt_identity(_config(model__zero_init_proj=False), saved,
                              {"model.zero_init_proj"}, "runs/x")
  seeded = config_lib.base_config()  # a batch and a dropout key are functions of the seed
  seeded.seed = 5
  with pytest.raises(UserError, match="--config.seed=5 contradicts the run in runs/x, which "
                     "has seed=1337"):
    config_lib.adopt_identity(seeded, config_lib.base_config(), {"seed"}, "runs/x")
  reordered = _config(lora__rank=4, lora__targets="c_fc, c_attn")  # the same layers
  saved_lora = _config(lora__rank=4, lora__targets="c_attn,c_fc")
  assert not config_lib.adopt_identity(reordered, saved_lora, {"lora.targets"}, "runs/x")
  # A value the run's 0 stands for is the same model (n_head 6, n_embd 384, GELU's 4 x 384).
  for key, value in (("n_kv_head", 6), ("head_dim", 64), ("mlp_width", 1536)):
    explicit = _config(**{f"model__{key}": value})
    assert not config_lib.adopt_identity(explicit, _config(), {f"model.{key}"}, "runs/x")
    with pytest.raises(UserError, match=f"model.{key}={value // 2} contradicts"):
      config_lib.adopt_identity(_config(**{f"model__{key}": value // 2}), _config(),
                                {f"model.{key}"}, "runs/x")
  dropout = _config(model__dropout=0.0)  # how it trains may change
  assert not config_lib.adopt_identity(dropout, _config(model__dropout=0.2), set(), "runs/x")


@pytest.mark.parametrize("changes, words", [
    ({"model__n_embd": 100, "model__n_head": 6}, ["n_embd", "n_head"]),
    ({"model__n_layer": 0}, ["model.n_layer"]),
    ({"model__block_size": -1}, ["model.block_size"]),
    ({"model__block_size": 1}, ["model.block_size=1", "2 or more"]),
    ({"model__dropout": 1.0}, ["model.dropout"]),
    ({"data__source": "poems"}, ["data.source", "shakespeare_plays"]),
    ({"data__source": "text"}, ["data.path"]),
    ({"data__source": "tokens"}, ["data.path", "jaxgpt.prepare"]),
    ({"data__tokenizer": "bpe"}, ["data.tokenizer"]),
    ({"data__pipeline": "grain"}, ["data.pipeline"]),
    ({"train__max_steps": -1}, ["train.max_steps"]),
    ({"train__batch_size": 0}, ["train.batch_size"]),
    ({"train__learning_rate": float("inf")}, ["train.learning_rate", "finite"]),
    ({"train__grad_clip": float("nan")}, ["train.grad_clip", "finite"]),
    ({"train__beta2": 1.0}, ["train.beta2", "[0, 1)"]),
    ({"train__min_lr": 1.0, "train__learning_rate": 1e-3}, ["train.min_lr=1.0 is above"]),
    ({"train__batch_size": 10, "train__grad_accum_steps": 3}, ["grad_accum_steps"]),
    ({"mesh__fsdp": 0}, ["mesh.fsdp"]),
    ({"lora__rank": -1}, ["lora.rank"]),
    ({"lora__rank": 4, "lora__targets": "c_attn,wte"}, ["lora.targets", "c_fc"]),
    ({"lora__rank": 4, "lora__alpha": 0.0}, ["lora.alpha"]),
    ({"lora__rank": 4, "lora__targets": "c_attn,c_fc", "model__zero_init_proj": True},
     ["would train nothing", "with c_proj among them"]),  # it did: grad_norm 0.0 at every step
    ({"model__attention": "flash"}, ["model.attention", "cudnn"]),
    ({"model__attention": "cudnn", "model__dropout": 0.2}, ["model.attention", "dropout"]),
    ({"model__remat": "some"}, ["model.remat", "dots"]),
    ({"matmul_precision": "tf32"}, ["matmul_precision", "bfloat16"]),
    ({"precision": "bfloat16", "matmul_precision": "float32"}, ["matmul_precision=float32"]),
    ({"train__max_steps": 2**32}, ["train.max_steps=4294967296", "at most 2147483647"]),
    ({"train__sample_tokens": 2**70}, ["train.sample_tokens", "at most 2147483647"]),
])
def test_impossible_settings_name_the_key(changes, words):
  with pytest.raises(UserError) as error:
    config_lib.validate(_config(**changes))
  for word in words:
    assert word in str(error.value)
  assert re.search(r": (pass|choose) ", str(error.value)), "the message names no fix"


def _load_config_file(name):
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", ["default", "shakespeare_char", "shakespeare_char_cpu",
                                  "finetune_shakespeare", "finetune_chat", "gpt2_owt",
                                  "gpt2_fineweb", "gpt2_xl", "speedrun_shakespeare",
                                  "speedrun_fineweb"])
def test_every_config_file_is_valid(name):
  c = _load_config_file(name)
  if c.data.source in ("tokens", "chat"):
    c.data.path = {"tokens": "/data/shards", "chat": "/data/chat.jsonl"}[c.data.source]
  config_lib.validate(c)


@pytest.mark.parametrize("name, tokens_per_step, micro_batch", [("gpt2_owt", 491_520, 96),
                                                               ("gpt2_fineweb", 524_288, 128)])
def test_gpt2_recipes_keep_their_step(name, tokens_per_step, micro_batch):
  c = _load_config_file(name)
  assert c.train.batch_size * c.model.block_size == tokens_per_step
  assert c.train.batch_size // c.train.grad_accum_steps == micro_batch
  assert c.data.source == "tokens" and c.model.n_embd == 768 and c.model.n_layer == 12


@pytest.mark.parametrize("name", ["speedrun_shakespeare", "speedrun_fineweb"])
def test_the_speedrun_configs_are_their_base_configs_with_the_whole_recipe(name):
  """Each speedrun config is its nanoGPT-exact config (shakespeare_char, gpt2_fineweb) with
  every recipe key set: the model options and Muon."""
  from configs import recipe  # pylint: disable=g-import-not-at-top
  speedrun = _load_config_file(name)
  base = _load_config_file({"speedrun_shakespeare": "shakespeare_char",
                            "speedrun_fineweb": "gpt2_fineweb"}[name])
  for key, value in recipe.MODEL.items():
    assert speedrun.model[key] == value != base.model[key], key
  assert speedrun.train.optimizer == "muon" and base.train.optimizer == "adamw"
  assert (speedrun.model.n_layer, speedrun.model.n_embd, speedrun.model.block_size) == (
      base.model.n_layer, base.model.n_embd, base.model.block_size)
  assert speedrun.precision == base.precision


def test_the_cpu_default_is_the_recipe_on_a_small_model():
  from configs import default, recipe  # pylint: disable=g-import-not-at-top
  c = default.cpu_config()
  assert {k: c.model[k] for k in recipe.MODEL} == recipe.MODEL
  assert {k: c.train[k] for k in recipe.CPU["train"]} == recipe.CPU["train"]
  assert c.train.muon_learning_rate != recipe.ACCELERATOR["train"]["muon_learning_rate"]
  assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (3, 4, 64, 64)
  assert c.train.eval_every == c.train.max_steps and c.train.eval_steps == 200
  config_lib.validate(c)


@pytest.mark.parametrize("remat, policy", [(True, "full"), (False, "none"), ("dots", "dots")])
def test_remat_is_a_policy_and_older_runs_true_false_still_load(remat, policy, tmp_path):
  c = config_lib.base_config()
  c.model.remat = remat  # as a config file, or an older run's config.json, sets it
  config_lib.validate(c)
  config_lib.save_config(c, str(tmp_path))
  saved = config_lib.load_config(str(tmp_path))
  assert saved.model.remat == remat
  assert config_lib.model_config(saved, vocab_size=65).remat == policy


def test_a_seed_past_64_bits_is_rejected():
  c = config_lib.base_config()
  c.seed = 2**63 - 1
  config_lib.validate(c)
  c.seed = 2**70
  with pytest.raises(UserError, match="seed=1180591620717411303424 does not fit in 64 bits"):
    config_lib.validate(c)


def test_every_key_has_a_meaning_and_every_meaning_a_key():
  keys = {key for key, _ in config_lib.flat_items(config_lib.base_config())}
  assert keys == set(config_lib.key_meanings())
  assert all(meaning.strip() for meaning in config_lib.key_meanings().values())


def test_the_model_section_is_gptconfigs_options_with_their_defaults():
  """One place per model option: every GPTConfig field but those the run fills in is a key
  of `model` with the field's default, and every key of `model` is a field."""
  from jaxgpt.model import GPTConfig  # pylint: disable=g-import-not-at-top
  run_filled = {"vocab_size", "dtype", "matmul_dtype", "lora_rank", "lora_alpha", "lora_targets",
                "quantize"}
  fields = {f.name: f.default for f in dataclasses.fields(GPTConfig)
            if f.name not in run_filled}
  section = config_lib.base_config().model
  assert set(section) == set(fields)
  assert {key: section[key] for key in section} == fields
  built = config_lib.model_config(config_lib.base_config(), vocab_size=65)
  assert {name: getattr(built, name) for name in fields} == fields


def test_a_models_choices_and_types_come_from_its_fields():
  c = config_lib.base_config()
  c.model.norm = "batchnorm"
  with pytest.raises(UserError, match="model.norm='batchnorm' is not one of layernorm, rmsnorm"):
    config_lib.validate(c)
  assert config_lib.key_meanings()["model.norm"].startswith("layernorm, rmsnorm: ")


def test_precision_must_be_known():
  c = config_lib.base_config()
  c.precision = "float16"
  with pytest.raises(UserError, match="precision"):
    config_lib.validate(c)


@pytest.mark.parametrize("precision, matmul_precision, bf16_dot, products", [
    ("float32", "auto", True, "bfloat16"),  # AMX or AVX512-BF16: bfloat16 products, float32 sums
    ("float32", "auto", False, ""),  # XLA's own
    ("bfloat16", "auto", True, ""),  # bfloat16 operands anyway
    ("float32", "float32", True, "float32"),
    ("float32", "bfloat16", False, "bfloat16"),
])
def test_matmul_precision_sets_the_training_models_products(precision, matmul_precision,
                                                             bf16_dot, products, monkeypatch):
  from jaxgpt import runtime  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(runtime, "cpu_has_bfloat16_dot", lambda: bf16_dot)
  c = _config(precision=precision, matmul_precision=matmul_precision)
  config_lib.validate(c)
  assert config_lib.model_config(c, 65, training=True).matmul_dtype == products
  assert config_lib.model_config(c, 65).matmul_dtype == ""  # sampling, eval and export


@pytest.mark.parametrize("flags, bf16_dot", [
    ("fpu sse avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids and later
    ("fpu sse avx512f avx512_bf16", True),  # AMD Zen 4 and later
    ("fpu sse avx2 fma", False),  # AMD Zen 3: bfloat16 would be converted in software
    ("fpu sse avx512f avx512_bf16x", False)])  # a whole flag, not a prefix
def test_bfloat16_dot_instructions_are_read_from_the_cpus_flags(flags, bf16_dot, tmp_path):
  from jaxgpt import runtime  # pylint: disable=g-import-not-at-top
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
  assert runtime.cpu_has_bfloat16_dot(str(cpuinfo)) == bf16_dot
  assert not runtime.cpu_has_bfloat16_dot(str(tmp_path / "absent"))


@pytest.mark.parametrize("axes, devices, expected", [
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 1, "fsdp": 1, "tensor": 1}, 1, (1, 1, 1)),
])
def test_mesh_shape(axes, devices, expected):
  assert sharding.mesh_shape(axes, devices) == expected


@pytest.mark.parametrize("axes", [
    {"data": -1, "fsdp": -1, "tensor": 1},
    {"data": 3, "fsdp": -1, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 1},
])
def test_impossible_mesh_is_a_user_error(axes):
  with pytest.raises(UserError, match=r"mesh.*: (give|choose|make) "):
    sharding.mesh_shape(axes, 8)


def test_a_val_fraction_outside_0_1_is_rejected():
  config = config_lib.base_config()
  config.data.val_fraction = 1.0
  with pytest.raises(UserError, match="val_fraction.*: pass e.g. --config.data.val_fraction="):
    config_lib.validate(config)


def test_a_pretrained_gpt2_takes_its_architecture_unless_an_option_was_given():
  """init_from=gpt2 with configs/default.py: the recipe's options become GPT-2's, as the
  shape does; the same option given on the command line is a clear error."""
  from configs import default  # pylint: disable=g-import-not-at-top
  gpt2 = config_lib.gpt2_architecture()
  c = default.cpu_config()
  c.init_from = "gpt2"
  config_lib.adopt_architecture(c, "GPT-2", gpt2, explicit={"init_from", "train.max_steps"})
  assert {k: c.model[k] for k in gpt2} == gpt2
  config_lib.validate(c)
  c = default.cpu_config()
  c.init_from = "gpt2"
  with pytest.raises(UserError, match="GPT-2's architecture and shape, which model.position="):
    config_lib.adopt_architecture(c, "GPT-2", gpt2, explicit={"init_from", "model.position"})
  shape = {**gpt2, "n_layer": 12, "n_embd": 768, "n_head": 12}
  with pytest.raises(UserError, match="which model.n_layer=3 is not"):
    config_lib.adopt_architecture(c, "GPT-2", shape, explicit={"init_from", "model.n_layer"})
  c.model.update(head_dim=64, n_kv_head=12)  # what GPT-2's 0s mean: given, they are its own
  config_lib.adopt_architecture(c, "GPT-2", shape,
                                explicit={"init_from", "model.head_dim", "model.n_kv_head"})

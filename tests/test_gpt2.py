"""GPT-2 weights in and out, checked against Hugging Face transformers itself (PyTorch, CPU).

A small randomly initialised GPT2LMHeadModel with a byte-level BPE tokenizer, saved by
transformers, stands in for OpenAI's checkpoints (nothing is downloaded). Its weights are large
(initializer_range 0.3, for varied greedy text), so its logits (up to about 5) differ by up to
2.5e-4 between runs of the same float32 computation: they are compared to 1e-4 of the largest.
"""

import json
import os
import re
import shutil
import stat

import chex
import jax
import numpy as np
import pytest

from jaxgpt import config as config_lib
from jaxgpt import export, hf_gpt2, hub, lora, pretrained, run_loader
from jaxgpt.errors import UserError
from jaxgpt.trainer import Trainer

from helpers import (assert_clean_error, assert_same_logits, jax_logits, require_transformers,
                     run, tiny_config, write_token_dataset)

transformers = require_transformers()
torch = pytest.importorskip("torch")

PROMPT = "ROMEO:"


def _hf_model(folder):
  return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def _hf_logits(folder, tokens_BxT):
  with torch.no_grad():
    return _hf_model(folder)(torch.tensor(np.asarray(tokens_BxT))).logits.numpy()


def _hf_greedy(folder, prompt, max_new_tokens):
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  ids = tokenizer(prompt, return_tensors="pt").input_ids
  with torch.no_grad():
    out = _hf_model(folder).generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
  new = out[0, ids.shape[1]:].tolist()
  if tokenizer.eos_token_id in new:  # the text ends there, as jaxgpt's does
    new = new[:new.index(tokenizer.eos_token_id)]
  return prompt + tokenizer.decode(new)


def _jax_greedy(loaded, prompt, max_new_tokens):
  from jaxgpt import generate  # pylint: disable=g-import-not-at-top
  with loaded.context():
    pieces = generate.generate_text(loaded.model, loaded.params, loaded.tokenizer, prompt,
                                    max_new_tokens, generate.Sampling(temperature=0))
    return prompt + "".join(p[0] for p in pieces)


def _tokens(vocab, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=(2, 40))


@pytest.mark.slow
def test_a_gpt2_of_another_mlp_width_loads_and_exports_with_transformers_logits(hf_folder,
                                                                                tmp_path):
  """n_inner (GPT-2's MLP width) is model.mlp_width: loaded, computed and written back."""
  model = _hf_model(hf_folder)
  config = model.config
  config.n_inner = 48
  torch.manual_seed(1)
  folder = str(tmp_path / "wide")
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  transformers.AutoTokenizer.from_pretrained(hf_folder).save_pretrained(folder)
  loaded = run_loader.load_pretrained(folder)
  assert loaded.model.config.mlp_width == 48
  tokens = _tokens(loaded.model.config.vocab_size)
  assert_same_logits(jax_logits(loaded.model, loaded.params, tokens), _hf_logits(folder, tokens))
  out = str(tmp_path / "exported")
  hf_gpt2.export(loaded.params, loaded.model.config, loaded.tokenizer, out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["n_inner"] == 48
  assert_same_logits(_hf_logits(out, tokens), _hf_logits(folder, tokens))


@pytest.mark.slow
def test_loaded_weights_give_transformers_logits(hf_folder):
  loaded = run_loader.load_pretrained(hf_folder)
  c = loaded.model.config
  assert (c.n_layer, c.n_embd, c.block_size, c.bias) == (2, 32, 64, True)
  assert c.padded_vocab_size > c.vocab_size  # padded rows are loaded as zeros and masked
  tokens = _tokens(c.vocab_size)
  assert_same_logits(jax_logits(loaded.model, loaded.params, tokens),
                      _hf_logits(hf_folder, tokens))


@pytest.mark.slow
def test_sample_init_from_prints_transformers_greedy_text(hf_folder):
  result = run("sample", f"--init_from={hf_folder}", f"--prompt={PROMPT}", "--temperature=0",
               "--max_new_tokens=24")
  text = result.stdout.split("\n---------------")[0]
  assert text == _hf_greedy(hf_folder, PROMPT, 24)


@pytest.mark.slow
def test_finetune_then_export_gives_the_same_model_in_transformers(hf_folder, text_file,
                                                                     tmp_path):
  workdir, out = tmp_path / "run", tmp_path / "hf"
  run("train", "--config.init_from=" + hf_folder, "--config.data.source=text",
      f"--config.data.path={text_file}", "--config.data.pipeline=numpy",
      "--config.train.max_steps=12", "--config.train.batch_size=8",
      "--config.train.learning_rate=1e-3", "--config.train.warmup_steps=2",
      "--config.train.eval_every=6", "--config.train.eval_steps=2",
      "--config.train.sample_tokens=0", f"--workdir={workdir}")
  run("export", f"--workdir={workdir}", f"--out={out}")
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json",
                                     "tokenizer_config.json"]
  loaded = run_loader.load_run(str(workdir))
  pretrained = run_loader.load_pretrained(hf_folder)
  assert not np.allclose(loaded.params["wte"], pretrained.params["wte"])  # it did train
  tokens = _tokens(loaded.model.config.vocab_size, seed=1)
  assert_same_logits(_hf_logits(str(out), tokens),
                      jax_logits(loaded.model, loaded.params, tokens))
  assert _hf_greedy(str(out), PROMPT, 24) == _jax_greedy(loaded, PROMPT, 24)


@pytest.mark.slow
def test_a_fine_tune_resumes_with_its_init_from_by_any_path_and_after_it_moves(hf_folder,
                                                                                text_file,
                                                                                tmp_path):
  """config.json kept init_from as typed: the same folder by another path contradicted it,
  and from another folder the recorded name was no folder at all."""
  shutil.copytree(hf_folder, tmp_path / "hf")
  workdir = tmp_path / "run"
  args = ["--config.data.source=text", f"--config.data.path={text_file}",
          "--config.data.pipeline=numpy", "--config.train.batch_size=8",
          "--config.train.eval_every=2", "--config.train.eval_steps=1",
          "--config.train.sample_tokens=0", f"--workdir={workdir}"]
  train = lambda init_from, steps, **kw: run("train", *args, f"--config.init_from={init_from}",
                                             f"--config.train.max_steps={steps}", **kw)
  train("hf", 2, cwd=tmp_path)
  saved = lambda: json.loads((workdir / "config.json").read_text())["init_from"]
  assert saved() == str(tmp_path / "hf")
  assert "done: step 4" in train("./hf", 4, cwd=tmp_path).stdout
  (tmp_path / "hf").rename(tmp_path / "moved")
  assert "done: step 6" in train(tmp_path / "moved", 6).stdout
  assert saved() == str(tmp_path / "moved")
  assert_clean_error(train(hf_folder, 8, check=False),  # not the run's folder, which is here
                     "contradicts the run", f"which has init_from={tmp_path / 'moved'}")


def test_a_resumed_fine_tune_neither_reads_nor_records_another_init_from(hf_folder, text_file,
                                                                         tmp_path, monkeypatch):
  """A config file naming another model (a hub name, offline; another folder) resumes the run
  with its own init_from, leaving the config.json that export writes back as it was; the
  pretrained model was resolved first (a download, or the other folder's config kept)."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  workdir = tmp_path / "run"
  args = ["--config.data.source=text", f"--config.data.path={text_file}",
          "--config.data.pipeline=numpy", "--config.train.batch_size=8",
          "--config.train.eval_every=2", "--config.train.eval_steps=1",
          "--config.train.sample_tokens=0", f"--workdir={workdir}"]
  run("train", *args, f"--config.init_from={hf_folder}", "--config.train.max_steps=2")
  kept = (workdir / "pretrained_config.json").read_text()
  other = tmp_path / "other"
  shutil.copytree(hf_folder, other)
  (other / "config.json").write_text(json.dumps(
      {**json.loads((other / "config.json").read_text()), "n_positions": 128}))
  config_file = tmp_path / "finetune.py"
  for steps, init_from in [(4, "gpt2"), (6, str(other))]:
    config_file.write_text("from jaxgpt.config import base_config\n\n\ndef get_config():\n"
                           f"  c = base_config()\n  c.init_from = {init_from!r}\n  return c\n")
    result = run("train", f"--config={config_file}", *args, f"--config.train.max_steps={steps}")
    assert f"done: step {steps}" in result.stdout
    assert (workdir / "pretrained_config.json").read_text() == kept
    assert json.loads((workdir / "config.json").read_text())["init_from"] == str(hf_folder)
  assert_clean_error(run("train", *args, "--config.init_from=gpt2", "--config.train.max_steps=8",
                         check=False), "contradicts the run", f"which has init_from={hf_folder}")


def _lora_config(hf_folder, text_file):
  return tiny_config(init_from=hf_folder, data=dict(source="text", path=text_file),
                     lora=dict(rank=4, alpha=8.0, targets="c_attn,c_proj,c_fc"),
                     train=dict(learning_rate=1e-2, max_steps=6, eval_every=6,
                                checkpoint_every=6))


@pytest.mark.slow
def test_lora_trains_only_adapters_and_exports_merged(hf_folder, text_file, tmp_path):
  workdir = str(tmp_path / "lora")
  trainer = Trainer(_lora_config(hf_folder, text_file), workdir, devices=jax.devices()[:2])
  trainer.run()
  pretrained = run_loader.load_pretrained(hf_folder).params
  trained, frozen = lora.partition(jax.device_get(trainer.state.params), lora_rank=4)
  for path, base in jax.tree_util.tree_flatten_with_path(pretrained)[0]:
    after = frozen
    for key in path:
      after = after[key.key]
    if path[0].key in ("wpe", "wte"):
      base = base[:after.shape[0]]  # block cut to 16 positions; vocabulary padded less
    assert np.array_equal(np.asarray(base), after), jax.tree_util.keystr(path)
  assert all(np.any(b != 0) for b in jax.tree.leaves(trained) if b.shape[0] == 4)
  # The optimizer keeps moments for the adapters only.
  num_adapters = len(jax.tree.leaves(trained))
  assert len(jax.tree.leaves(trainer.state.opt_state)) <= 2 * num_adapters + 2

  out = str(tmp_path / "merged")
  loaded = run_loader.load_run(workdir)
  export.export_run(loaded, out)
  tokens = _tokens(loaded.model.config.vocab_size, seed=2)[:, :16]
  assert_same_logits(_hf_logits(out, tokens),
                      jax_logits(loaded.model, loaded.params, tokens))


@pytest.mark.slow
def test_character_run_exports_model_and_tokenizer(text_file, tmp_path):
  config = tiny_config(data=dict(source="text", path=text_file), train=dict(max_steps=5))
  workdir, out = str(tmp_path / "char"), str(tmp_path / "hf")
  Trainer(config, workdir, devices=jax.devices()[:1]).run()
  loaded = run_loader.load_run(workdir)
  export.export_run(loaded, out)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = "JULIET:\nO Romeo, Romeo!\n"
  ids = loaded.tokenizer.encode(text)
  assert hf_tokenizer(text)["input_ids"] == ids.tolist()
  assert hf_tokenizer.decode(ids) == text
  tokens = ids[None, :16]
  assert_same_logits(_hf_logits(out, tokens),
                      jax_logits(loaded.model, loaded.params, tokens))
  modes = {name: stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode)
           for name in os.listdir(out)}
  assert len(set(modes.values())) == 1, f"exported files differ in permissions: {modes}"


def test_bad_folders_are_clear_errors(hf_folder, tmp_path):
  with pytest.raises(UserError, match="not a Hugging Face model folder"):
    pretrained.resolve(str(tmp_path / "nothing"))
  other = tmp_path / "bert"
  other.mkdir()
  (other / "config.json").write_text('{"model_type": "bert"}')
  with pytest.raises(UserError, match="'bert' model, which jaxgpt does not load"):
    pretrained.model_options(str(other))
  small = tmp_path / "small"
  shutil.copytree(hf_folder, small)
  config = json.loads((small / "config.json").read_text())
  (small / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
  with pytest.raises(UserError, match="tokens but the model only 100"):
    pretrained.load_tokenizer(str(small))
  larger = config["vocab_size"] + 8  # transformers refuses it; the rows were padded with zeros
  (small / "config.json").write_text(json.dumps({**config, "vocab_size": larger}))
  with pytest.raises(UserError, match=f"{config['vocab_size']} rows of token weights do not "
                     f"match its config.json's vocab_size={larger}"):
    run_loader.load_pretrained(str(small))


def test_a_runs_workdir_or_a_relative_path_as_init_from_is_named_as_such(tmp_path,
                                                                          monkeypatch):
  """A run's workdir was read as a GPT-2 config.json that lacked n_layer, and ./NAME or
  ../NAME was looked up on the hub as a model's name."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config_lib.save_config(tiny_config(), str(workdir))
  with pytest.raises(UserError, match=f"init_from={re.escape(str(workdir))} is a jaxgpt run's "
                     "workdir, not a Hugging Face model folder: sample or evaluate it with "
                     "--workdir=.*python -m jaxgpt.export"):
    pretrained.resolve(str(workdir))
  monkeypatch.chdir(workdir)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  for name in ("./nope", "../nope"):
    with pytest.raises(UserError, match=f"init_from='{re.escape(name)}' is not a Hugging Face "
                       "model folder"):
      pretrained.resolve(name)


@pytest.mark.slow
def test_token_shards_fine_tune_a_model_only_when_made_with_its_tokenizer(hf_folder,
                                                                           text_file, tmp_path):
  from jaxgpt import run_setup  # pylint: disable=g-import-not-at-top
  def resolved(dataset, workdir):
    config = tiny_config(init_from=hf_folder, data=dict(source="tokens", path=dataset))
    run_setup.resolve_run(config, str(tmp_path / workdir)).checkpoints.close()
  characters = write_token_dataset(open(text_file, encoding="utf-8").read(), tmp_path / "chars")
  with pytest.raises(UserError, match="not made with the tokenizer of init_from"):
    resolved(characters, "refused")
  run("prepare", f"--input={text_file}", f"--val_input={text_file}", f"--out={tmp_path / 'bpe'}",
      f"--tokenizer={hf_folder}")
  resolved(str(tmp_path / "bpe"), "fine_tunes")
  evaluated = run("eval", f"--init_from={hf_folder}", f"--data={tmp_path / 'bpe'}", "--json")
  assert json.loads(evaluated.stdout.splitlines()[-1])["bpe"]["tokens"] > 0
  config = tiny_config(data=dict(source="tokens", path=characters, tokenizer="gpt2"))
  with pytest.raises(UserError, match="data.tokenizer=gpt2 contradicts the token dataset"):
    run_setup.resolve_run(config, str(tmp_path / "contradicted"), {"data.tokenizer"})


def test_a_block_size_longer_than_the_pretrained_context_is_cut_unless_given(hf_folder):
  config = tiny_config(init_from=hf_folder, model=dict(block_size=128))
  pretrained.configure(config, hf_folder)
  assert config.model.block_size == 64
  config = tiny_config(init_from=hf_folder, model=dict(block_size=128))
  with pytest.raises(UserError, match="block_size=128 is longer than the 64 positions"):
    pretrained.configure(config, hf_folder, {"model.block_size"})


def test_a_tokenizer_given_beside_init_from_is_refused(hf_folder):
  """A fine-tune keeps the model's own tokenizer: --config.data.tokenizer=char beside
  init_from was replaced without a word."""
  for key, value in (("tokenizer", "char"), ("tokenizer_path", "/elsewhere")):
    config = tiny_config(init_from=hf_folder, data={key: value})
    with pytest.raises(UserError, match=f"--config.data.{key}={value} names another "
                       "tokenizer than init_from=.* drop it"):
      pretrained.configure(config, hf_folder, {f"data.{key}"})
    pretrained.configure(config, hf_folder)  # a config file's value gives way
    assert config.data.tokenizer == "gpt2"
  pretrained.configure(tiny_config(init_from=hf_folder, data={"tokenizer": "gpt2"}), hf_folder,
                       {"data.tokenizer"})


def test_a_gpt2_configs_layer_norm_epsilon_becomes_model_norm_eps(tmp_path):
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64,
       "vocab_size": 96, "layer_norm_epsilon": 1e-6}))
  config = config_lib.base_config()
  pretrained.configure(config, str(tmp_path))
  assert config.model.norm_eps == 1e-6
  assert config_lib.model_config(config, 96).norm_eps == 1e-6


def test_export_never_overwrites(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  result = run("export", f"--workdir={tmp_path}", f"--out={out}", check=False)
  assert_clean_error(result, "already has files")
  assert (out / "keep.txt").read_text() == "mine"
  result = run("export", f"--workdir={tmp_path}", f"--out={out / 'keep.txt'}", check=False)
  assert_clean_error(result, "keep.txt is a file")  # it was found out after the export
  assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_finetune_shakespeare_config_runs(hf_folder, text_file, tmp_path):
  from configs import finetune_shakespeare  # pylint: disable=g-import-not-at-top
  config = finetune_shakespeare.get_config()
  config.init_from = hf_folder  # GPT-2 124M itself needs a download and a GPU
  config.data.update(source="text", path=text_file, pipeline="numpy")
  config.train.update(max_steps=2, eval_every=2, eval_steps=2, sample_tokens=0)
  trainer = Trainer(config, str(tmp_path / "ft"), devices=jax.devices()[:2])
  last = trainer.run()
  assert last["step"] == 2 and np.isfinite(last["val_loss"])
  assert trainer.model.config.block_size == 64  # cut to the model's context
  assert os.listdir(tmp_path / "ft" / "best")


def test_gpt2_by_name_neither_cached_nor_downloadable(monkeypatch):
  import huggingface_hub  # pylint: disable=g-import-not-at-top

  def unavailable(*_, **__):
    raise OSError("offline")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", unavailable)
  with pytest.raises(UserError, match="not in the Hugging Face cache.*--config.init_from=FOLDER"):
    pretrained.resolve("gpt2-medium")


def _fake_hub_cache(hf_folder, home, names=None):
  """The Hugging Face cache layout, holding the test model (or the files `names` of its
  folder) as openai-community/gpt2."""
  repo = home / "hub" / "models--openai-community--gpt2"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("0" * 40)
  shutil.copytree(hf_folder, repo / "snapshots" / ("0" * 40),
                  ignore=None if names is None else lambda _, all: set(all) - set(names))


def test_a_cache_with_gpt2s_tokenizer_alone_is_topped_up_for_its_weights(
    hf_folder, tmp_path, monkeypatch):
  """prepare --tokenizer=gpt2 caches the tokenizer files alone; init_from=gpt2 took that folder
  for the model and failed on its missing config.json, even online."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
  _fake_hub_cache(hf_folder, tmp_path / "home", names=hub.TOKENIZER_FILES)
  with pytest.raises(UserError, match="gpt2's config.json is neither in the Hugging Face cache"):
    pretrained.resolve("gpt2")
  config = tiny_config(data=dict(tokenizer="gpt2"))
  assert pretrained.run_tokenizer(config, None).vocab_size > 256  # the cached tokenizer


def test_a_gpt2_tokenizer_for_training_from_scratch_downloads_no_weights(monkeypatch, hf_folder):
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  patterns = []

  def download(repo, allow_patterns, local_files_only=False):
    patterns.extend(allow_patterns)
    if local_files_only:
      raise OSError("not cached")
    return hf_folder

  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  pretrained.run_tokenizer(tiny_config(data=dict(tokenizer="gpt2")), None)
  assert patterns and not any("safetensors" in p for p in patterns)


@pytest.mark.slow
def test_gpt2_by_name_comes_from_the_hugging_face_cache(hf_folder, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  _fake_hub_cache(hf_folder, tmp_path / "home")
  result = run("sample", "--init_from=gpt2", f"--prompt={PROMPT}", "--temperature=0",
               "--max_new_tokens=8")
  assert result.stdout.split("\n---------------")[0] == _hf_greedy(hf_folder, PROMPT, 8)


def test_weights_load_sharded_over_fsdp_and_tensor(hf_folder):
  from jaxgpt import sharding, state as state_lib  # pylint: disable=g-import-not-at-top
  loaded = run_loader.load_pretrained(hf_folder)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  with sharding.rules_context(mesh):
    params = pretrained.load_params(hf_folder, loaded.model.config,
                                    state_lib.abstract_params(loaded.model, mesh))
  kernel = params["h_0"]["mlp"]["c_fc"]["kernel"]
  assert kernel.addressable_shards[0].data.shape == (16, 64)  # a quarter on each device
  chex.assert_trees_all_equal(jax.device_get(params), jax.device_get(loaded.params))

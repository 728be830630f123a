"""Runs with Llama's architecture (rotary positions, RMSNorm, SwiGLU) exported as Hugging Face
Llama folders, and with QK-norm as Qwen3 ones, checked against transformers itself (PyTorch,
CPU): the logits of the loaded model are jaxgpt's. Other option combinations are refused."""

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxgpt import config as config_lib
from jaxgpt import export, hf_export, hf_llama, layers, run_loader
from jaxgpt.data import BPETokenizer, CharTokenizer
from jaxgpt.data.tokenizer import Specials
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig

from helpers import (LINES, assert_clean_error, assert_same_logits, jax_logits, perturbed_params,
                     require_transformers, run, tiny_config)

transformers = require_transformers()
torch = pytest.importorskip("torch")

LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu")
TOKENIZER = CharTokenizer.from_text(LINES)  # 39 characters; the table is padded to 48
CONFIG = GPTConfig(vocab_size=TOKENIZER.vocab_size, vocab_multiple=16, block_size=16, n_layer=2,
                   n_head=2, n_embd=32, dropout=0.0, **LLAMA)


def _hf_logits(hf_class, folder, tokens_BxT):
  model = hf_class.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens_BxT))).logits.numpy()


def _tokens(seed=0, length=16):
  return np.random.default_rng(seed).integers(0, TOKENIZER.vocab_size, size=(2, length))


def _assert_exports_jaxgpt_logits(config, params, folder, hf_class):
  hf_llama.export(params, config, TOKENIZER, folder)
  tokens = _tokens()
  assert_same_logits(_hf_logits(hf_class, folder, tokens),
                     jax_logits(GPT(config), params, tokens))


@pytest.mark.parametrize("options", [dict(), pytest.param(dict(tie_embeddings=False),
                                                          marks=pytest.mark.slow),
                                     pytest.param(dict(bias=True), marks=pytest.mark.slow)],
                         ids=["tied", "untied", "bias"])
def test_llama_export_gives_jaxgpt_logits(options, tmp_path):
  config = dataclasses.replace(CONFIG, **options)
  assert config.padded_vocab_size > config.vocab_size  # the padded rows are cut
  _assert_exports_jaxgpt_logits(config, perturbed_params(config), str(tmp_path),
                                transformers.LlamaForCausalLM)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  assert hf_config["architectures"] == ["LlamaForCausalLM"] and hf_config["model_type"] == "llama"
  expected = {"vocab_size": 39, "hidden_size": 32, "intermediate_size": config.mlp_features,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 16, "rms_norm_eps": CONFIG.norm_eps, "hidden_act": "silu",
              "attention_bias": config.bias, "mlp_bias": config.bias, "dtype": "float32",
              "tie_word_embeddings": config.tie_embeddings, "bos_token_id": None}
  assert {key: hf_config[key] for key in expected} == expected
  assert hf_config["rope_parameters"]["rope_theta"] == CONFIG.rope_base
  names = set(load_file(str(tmp_path / "model.safetensors")))
  assert ("lm_head.weight" in names) != config.tie_embeddings
  assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.mlp.gate_proj.weight",
          "model.layers.0.input_layernorm.weight"} <= names
  assert ("model.layers.0.mlp.up_proj.bias" in names) == config.bias


def test_a_tokenizer_with_a_begin_of_text_token_exports_its_id_as_bos(tmp_path):
  """A run trained from scratch with Llama 3's tokenizer (data.tokenizer_path) exported its
  <|end_of_text|> as bos_token_id, so generate() from an empty prompt began with it."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES], vocab_size=300, special_tokens=["<|begin_of_text|>",
                                                                    "<|end_of_text|>"],
                          show_progress=False)
  specials = Specials(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", add_bos=True)
  hf_json = bpe._tokenizer.to_str()  # pylint: disable=protected-access
  tokenizer = BPETokenizer(hf_json, specials=specials)
  config = dataclasses.replace(CONFIG, vocab_size=tokenizer.vocab_size)
  hf_llama.export(perturbed_params(config), config, tokenizer, str(tmp_path))
  hf_config = json.loads((tmp_path / "config.json").read_text())
  assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (0, 1)
  loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert (loaded.bos_token_id, loaded.eos_token_id) == (0, 1)


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_qk_norm_exports_as_qwen3_with_jaxgpt_logits(tie_embeddings, tmp_path):
  config = dataclasses.replace(CONFIG, qk_norm=True, tie_embeddings=tie_embeddings)
  _assert_exports_jaxgpt_logits(config, perturbed_params(config), str(tmp_path),
                                transformers.Qwen3ForCausalLM)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  assert hf_config["model_type"] == "qwen3" and not hf_config["use_sliding_window"]
  assert "model.layers.1.self_attn.k_norm.weight" in load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("options", [dict(), dict(qkv_bias=True), dict(qk_norm=True)],
                         ids=["llama", "qwen2", "qwen3"])
def test_a_character_level_export_encodes_and_decodes_text_as_jaxgpt_does(options, tmp_path):
  """transformers 5 reads a qwen2 folder's tokenizer as Qwen2Tokenizer, whose byte-level
  pre-tokenizer dropped the spaces and newlines of a character-level export."""
  config = dataclasses.replace(CONFIG, **options)
  hf_llama.export(perturbed_params(config), config, TOKENIZER, str(tmp_path))
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = "ROMEO:\nBut soft, what light\n\nJULIET:  O Romeo, Romeo!\n"
  ids = hf_tokenizer(text)["input_ids"]
  assert ids == TOKENIZER.encode(text).tolist() and hf_tokenizer.decode(ids) == text
  assert len(hf_tokenizer) == TOKENIZER.vocab_size  # no special token past the model's rows


def test_data_with_a_character_a_character_level_model_lacks_is_named(tmp_path):
  """Fine-tuning a character-level export on text with another character said that the
  data differed from a run's that the new workdir never had."""
  from jaxgpt import run_setup  # pylint: disable=g-import-not-at-top
  hf_llama.export(perturbed_params(CONFIG), CONFIG, TOKENIZER, str(tmp_path / "hf"))
  (tmp_path / "text.txt").write_text(LINES * 20 + "\u65e5")
  config = tiny_config(init_from=str(tmp_path / "hf"),
                       data=dict(source="text", path=str(tmp_path / "text.txt")))
  with pytest.raises(UserError, match=r"the training data \(data.path=.*text.txt\) has "
                     r"'\u65e5', which init_from=.*hf's character-level tokenizer lacks"):
    run_setup.resolve_run(config, str(tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(), dict(qk_norm=True)], ids=["llama", "qwen3"])
def test_scanned_lora_run_exports_merged(options, tmp_path):
  """export_run of the scanned form with LoRA adapters (not zero) on every target. The
  unrolled model gives the expected logits (test_scan.py: the two forms agree)."""
  unrolled = dataclasses.replace(CONFIG, lora_rank=4, lora_targets=("c_attn", "c_proj", "c_fc"),
                                 **options)
  params = perturbed_params(unrolled)
  assert np.any(params["h_0"]["mlp"]["c_fc"]["lora_b"])
  scanned = GPT(dataclasses.replace(unrolled, scan_layers=True))
  loaded = run_loader.LoadedRun(config=None, tokenizer=TOKENIZER, model=scanned,
                                params=layers.stack_layers(params), mesh=None, step=0)
  assert export.export_run(loaded, str(tmp_path)) == ("Qwen3ForCausalLM" if options
                                                      else "LlamaForCausalLM")
  tokens = _tokens(seed=1)
  assert_same_logits(_hf_logits(transformers.AutoModelForCausalLM, str(tmp_path), tokens),
                     jax_logits(GPT(unrolled), params, tokens))


@pytest.mark.parametrize("options, words", [
    (dict(position="rope"), ["GPT-2 has no model.position='rope'"]),
    (dict(mlp="relu2"), ["model.mlp='relu2'"]),
    (dict(norm="rmsnorm"), ["model.norm='rmsnorm'"]),
    (dict(qk_norm=True), ["model.qk_norm=True"]),
    (dict(tie_embeddings=False), ["model.tie_embeddings=False"]),
    (dict(LLAMA, mlp="gelu"), ["(Llama has no model.mlp='gelu')"]),
    (dict(LLAMA, position="learned"), ["model.position='learned'"]),
    (dict(LLAMA, qk_norm=True, mlp="relu2"), ["(Qwen3 has no model.mlp='relu2')"]),
    (dict(LLAMA, norm="layernorm", qk_norm=True, bias=True), ["model.norm='layernorm'"]),
])
def test_other_combinations_are_refused_in_one_line(options, words):
  with pytest.raises(UserError) as error:
    hf_export.check_exportable(GPTConfig(vocab_size=40, **options))
  message = str(error.value)
  assert "\n" not in message
  for word in words + ["GPT-2 (position='learned'", "Llama (position='rope'",
                       "Qwen2 (position='rope'", "Qwen3 (position='rope'",
                       "qk_norm=True, mlp='swiglu', qkv_bias=False, bias=False)"]:
    assert word in message, message


def test_qwen3_with_biases_is_refused():
  """Qwen3's MLP has no biases, so model.bias=True exports only without QK-norm (Llama)."""
  assert hf_export.check_exportable(dataclasses.replace(CONFIG, bias=True)) == "Llama"
  with pytest.raises(UserError, match="Qwen3 has no model.bias=True"):
    hf_export.check_exportable(dataclasses.replace(CONFIG, bias=True, qk_norm=True))


def test_the_default_recipe_is_refused_naming_the_flag_that_makes_a_run_exportable():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  with pytest.raises(UserError) as error:
    hf_export.check_exportable(config_lib.model_config(config, vocab_size=40))
  assert ("a trained run keeps its options: train a new run with --config.model.mlp=swiglu to "
          "export it as Qwen3") in str(error.value)
  config.model.mlp = "swiglu"
  assert hf_export.check_exportable(config_lib.model_config(config, vocab_size=40)) == "Qwen3"


def _write_then(failure):
  def export_run(_, folder):
    (pathlib.Path(folder) / "config.json").write_text("{}")
    if failure:
      raise failure
    return "Qwen3ForCausalLM"
  return export_run


def test_an_interrupted_export_leaves_no_folder_and_removes_only_its_own(tmp_path, monkeypatch):
  """A folder beside --out with the name of export's temporary one is the user's: kept."""
  users = tmp_path / "hf.partial"
  users.mkdir()
  (users / "notes.txt").write_text("mine")
  monkeypatch.setattr(export, "export_run", _write_then(KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    export._export_whole(None, str(tmp_path / "hf"))  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == ["hf.partial"] and os.listdir(users) == ["notes.txt"]


def test_an_export_fills_an_empty_out_whole(tmp_path, monkeypatch):
  out = tmp_path / "hf"
  out.mkdir()
  monkeypatch.setattr(export, "export_run", _write_then(None))
  assert export._export_whole(None, str(out)) == "Qwen3ForCausalLM"  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == ["hf"] and os.listdir(out) == ["config.json"]


def _train(text_file, workdir, *options):
  run("train", "--config=configs/shakespeare_char_cpu.py", "--config.data.source=text",
      f"--config.data.path={text_file}", "--config.data.pipeline=numpy",
      "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
      "--config.model.block_size=16", "--config.model.vocab_multiple=16",
      "--config.train.max_steps=3", "--config.train.batch_size=4", "--config.train.eval_every=3",
      "--config.train.eval_steps=1", "--config.train.sample_tokens=0", f"--workdir={workdir}",
      *options)


@pytest.mark.slow
def test_trained_run_exports_end_to_end(text_file, tmp_path):
  """train (scanned layers, untied head), then export, then transformers' Auto classes."""
  workdir, out = tmp_path / "run", tmp_path / "hf"
  _train(text_file, workdir, *(f"--config.model.{k}={v}" for k, v in LLAMA.items()),
         "--config.model.tie_embeddings=False", "--config.model.scan_layers=True")
  result = run("export", f"--workdir={workdir}", f"--out={out}")
  assert "transformers.LlamaForCausalLM.from_pretrained" in result.stdout
  loaded = run_loader.load_run(str(workdir))
  assert "h" in loaded.params and loaded.model.config.scan_layers
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  text = "JULIET:\nO Romeo, Romeo!\n"
  ids = loaded.tokenizer.encode(text)
  assert hf_tokenizer(text)["input_ids"] == ids.tolist()
  tokens = np.stack([ids[:16], ids[-16:]])
  assert_same_logits(_hf_logits(transformers.AutoModelForCausalLM, str(out), tokens),
                     jax_logits(loaded.model, jax.device_get(loaded.params), tokens))


@pytest.mark.slow
def test_a_refused_run_stops_before_out_is_made(text_file, tmp_path):
  """Rotary positions with LayerNorm: neither GPT-2 nor Llama."""
  workdir, out = tmp_path / "run", tmp_path / "hf"
  _train(text_file, workdir, "--config.model.position=rope")
  result = run("export", f"--workdir={workdir}", f"--out={out}", check=False)
  assert_clean_error(result, "no Hugging Face transformers equivalent",
                     "GPT-2 has no model.position='rope'")
  assert not out.exists()


@pytest.mark.slow
def test_the_default_recipe_names_the_flag_that_makes_a_run_exportable(text_file, tmp_path):
  def train_default(workdir, *options):
    run("train", "--config=default", "--config.data.source=text", f"--config.data.path={text_file}",
        "--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.block_size=16",
        "--config.train.max_steps=2", "--config.train.eval_steps=1",
        "--config.train.sample_tokens=0", f"--workdir={workdir}", *options)
  train_default(tmp_path / "default")
  refused = run("export", f"--workdir={tmp_path / 'default'}", f"--out={tmp_path / 'no'}",
                check=False)
  assert_clean_error(refused, "train a new run with --config.model.mlp=swiglu to export it as "
                     "Qwen3")
  train_default(tmp_path / "swiglu", "--config.model.mlp=swiglu")
  exported = run("export", f"--workdir={tmp_path / 'swiglu'}", f"--out={tmp_path / 'hf'}")
  assert "Qwen3ForCausalLM" in exported.stdout

"""Llama-family models imported from folders that transformers saves (init_from): Llama with
grouped-query attention, rope_theta 1e5 and Llama 3's rope scaling (tied); Qwen2 (q, k, v
biases, untied); Qwen3 (QK-norm, a head size larger than n_embd / n_head, grouped-query
attention); a SmolLM2-shaped Llama. Each gives transformers' logits and greedy text, and
exports back to a folder with the same logits; the same on a (fsdp 2, tensor 2) mesh."""

import json
import os

import jax
import numpy as np
import pytest

from jaxgpt import export, generate, pretrained, run_loader, sharding
from jaxgpt.errors import UserError

from helpers import LINES, assert_same_logits, require_transformers

transformers = require_transformers()
torch = pytest.importorskip("torch")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BLOCK_SIZE = 48

# The architectures of the issue, small: each differs from the default Llama where its real
# checkpoints do.
ARCHITECTURES = {
    "llama_gqa_rope_scaling": (transformers.LlamaConfig, dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e5, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2_biases_untied": (transformers.Qwen2Config, dict(
        hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, rope_theta=1e6, tie_word_embeddings=False)),
    "qwen3_qk_norm_head_dim": (transformers.Qwen3Config, dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=1e6, tie_word_embeddings=False)),
    "smollm2_shape": (transformers.LlamaConfig, dict(
        hidden_size=48, intermediate_size=128, num_hidden_layers=3, num_attention_heads=3,
        num_key_value_heads=1, rope_theta=1e5, tie_word_embeddings=True, rms_norm_eps=1e-5)),
}
PROMPTS = ["ROMEO:", "JULIET:\nO", "What light"]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
  """A ChatML tokenizer (BPE trained on LINES) that transformers saves, chat template included."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES] * 20, vocab_size=300, min_frequency=1,
                          special_tokens=SPECIAL_TOKENS, show_progress=False)
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", bos_token="<|endoftext|>",  # pylint: disable=protected-access
      pad_token="<|endoftext|>")
  tokenizer.chat_template = CHATML
  return tokenizer


def _hf_folder(tmp_path_factory, tokenizer, name):
  config_class, options = ARCHITECTURES[name]
  config = config_class(vocab_size=len(tokenizer), max_position_embeddings=BLOCK_SIZE,
                        initializer_range=0.2, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id, **options)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config)
  with torch.no_grad():  # norm scales of one and zero biases would hide mapping mistakes
    for param_name, param in model.named_parameters():
      if param_name.endswith(("norm.weight", "bias")):
        param.add_(0.2 * torch.randn_like(param))
  folder = str(tmp_path_factory.mktemp(name))
  model.save_pretrained(folder, max_shard_size="40KB")  # several shards and an index
  tokenizer.save_pretrained(folder)
  return folder


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def llama_folder(request, tmp_path_factory, chat_tokenizer):
  return _hf_folder(tmp_path_factory, chat_tokenizer, request.param)


# Greedy generation runs in the full suite only: the fast subset's logits and export tests
# cover each mapping, and test_generate the cached attention.
GREEDY = [pytest.param(name, marks=pytest.mark.slow) for name in ARCHITECTURES]


def _hf_model(folder):
  return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_logits(folder, tokens_BxT):
  with torch.no_grad():
    return _hf_model(folder)(torch.tensor(np.asarray(tokens_BxT))).logits.numpy()


def _tokens(vocab_size, seed=0):
  return np.random.default_rng(seed).integers(0, vocab_size, size=(2, BLOCK_SIZE))


def test_imported_model_gives_transformers_logits(llama_folder):
  assert len([f for f in os.listdir(llama_folder) if f.endswith(".safetensors")]) > 1
  run = run_loader.load_pretrained(llama_folder)
  tokens = _tokens(run.model.config.vocab_size)
  assert_same_logits(run.logits(tokens)[..., :run.model.config.vocab_size],
                     _hf_logits(llama_folder, tokens))


@pytest.mark.parametrize("name", GREEDY)
def test_greedy_continuations_equal_transformers(name, tmp_path_factory, chat_tokenizer):
  """Greedy text up to block_size from jaxgpt's KV-cache generation and transformers'
  generate, for three prompts."""
  llama_folder = _hf_folder(tmp_path_factory, chat_tokenizer, name)
  run = run_loader.load_pretrained(llama_folder)
  model = _hf_model(llama_folder)
  for prompt in PROMPTS:
    ids = run.tokenizer.encode_prompt(prompt)
    new = BLOCK_SIZE - len(ids)
    with run.context():
      ours = np.concatenate([np.asarray(chunk)[0] for chunk in generate.generate(
          run.model, run.params, ids, new, generate.Sampling(temperature=0.0))])
    with torch.no_grad():
      theirs = model.generate(torch.tensor(ids[None]), max_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(ids):].numpy()
    np.testing.assert_array_equal(ours[:new], theirs, err_msg=prompt)


def test_export_gives_back_the_models_logits(llama_folder, tmp_path):
  run = run_loader.load_pretrained(llama_folder)
  out = str(tmp_path / "exported")
  os.makedirs(out)
  export.export_run(run, out)
  tokens = _tokens(run.model.config.vocab_size, seed=1)
  assert_same_logits(_hf_logits(out, tokens), _hf_logits(llama_folder, tokens))
  original = json.load(open(os.path.join(llama_folder, "config.json"), encoding="utf-8"))
  written = json.load(open(os.path.join(out, "config.json"), encoding="utf-8"))
  original.setdefault("head_dim", original["hidden_size"] // original["num_attention_heads"])
  for key in ("model_type", "num_key_value_heads", "head_dim", "tie_word_embeddings",
              "hidden_size", "intermediate_size", "rope_parameters"):
    assert written.get(key) == original.get(key), key
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer.chat_template == CHATML and tokenizer.eos_token == "<|im_end|>"


def test_the_import_on_an_fsdp_and_tensor_mesh_gives_the_same_logits(tmp_path_factory,
                                                                       chat_tokenizer):
  folder = _hf_folder(tmp_path_factory, chat_tokenizer, "qwen3_qk_norm_head_dim")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  run = run_loader.load_pretrained(folder, mesh=mesh)
  kernel = run.params["h_0"]["attn"]["c_attn"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
  tokens = _tokens(run.model.config.vocab_size)
  assert_same_logits(run.logits(tokens)[..., :run.model.config.vocab_size],
                     _hf_logits(folder, tokens))


def test_the_tokenizer_comes_with_its_special_tokens_and_chat_template(tmp_path_factory,
                                                                       chat_tokenizer):
  folder = _hf_folder(tmp_path_factory, chat_tokenizer, "qwen2_biases_untied")
  tokenizer = pretrained.load_tokenizer(folder)
  assert tokenizer.chat_template == CHATML
  assert tokenizer.stop_ids == tuple(sorted({tokenizer.token_id("<|im_end|>"),
                                             tokenizer.token_id("<|endoftext|>")}))
  text = "<|im_start|>user\nhi<|im_end|>\n"
  assert list(tokenizer.encode(text)) == chat_tokenizer(text)["input_ids"]


@pytest.mark.parametrize("change, named", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn'"),
    (dict(model_type="qwen3_moe"), "qwen3_moe"),
    (dict(attention_bias=True, mlp_bias=False), "attention_bias"),
])
def test_what_jaxgpt_would_only_approximate_is_refused(change, named, tmp_path_factory,
                                                       chat_tokenizer):
  folder = _hf_folder(tmp_path_factory, chat_tokenizer, "smollm2_shape")
  path = os.path.join(folder, "config.json")
  hf = json.load(open(path, encoding="utf-8"))
  hf.pop("rope_parameters", None)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({**hf, **change}, f)
  with pytest.raises(UserError, match=named):
    run_loader.load_pretrained(folder)


@pytest.mark.slow
def test_a_hub_name_comes_from_the_hugging_face_cache(tmp_path_factory, chat_tokenizer,
                                                      tmp_path, monkeypatch):
  """init_from=ORG/NAME finds the model in the Hugging Face cache (offline here)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from helpers import run  # pylint: disable=g-import-not-at-top
  folder = _hf_folder(tmp_path_factory, chat_tokenizer, "smollm2_shape")
  repo = tmp_path / "home" / "hub" / "models--HuggingFaceTB--SmolLM2-135M"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("0" * 40)
  shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  result = run("sample", "--init_from=HuggingFaceTB/SmolLM2-135M", "--prompt=ROMEO:",
               "--temperature=0", "--max_new_tokens=12")
  tokenizer = pretrained.load_tokenizer(folder)
  ids = tokenizer.encode_prompt("ROMEO:")
  with torch.no_grad():
    new = _hf_model(folder).generate(torch.tensor(ids[None]), max_new_tokens=12, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
  stops = [i for i, token in enumerate(new) if token in tokenizer.stop_ids]
  expected = tokenizer.decode(new[:stops[0]] if stops else new)
  assert result.stdout.split("\n---------------")[0] == "ROMEO:" + expected


def test_a_sliding_window_model_attends_in_full_within_its_window():
  from jaxgpt import hf_llama  # pylint: disable=g-import-not-at-top
  hf = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=48,
                                use_sliding_window=True, sliding_window=16,
                                max_window_layers=1).to_dict()
  options, context = hf_llama.model_options(hf, "config.json")
  assert context == 16 and options["qkv_bias"] and not options["bias"]
  hf.update(use_sliding_window=False, layer_types=["full_attention"] * 2)
  assert hf_llama.model_options(hf, "config.json")[1] == 48


@pytest.mark.slow
def test_a_lora_chat_fine_tune_exports_and_answers_in_the_template(tmp_path_factory,
                                                                    chat_tokenizer, tmp_path):
  """LoRA on q/k/v/o and the MLP of an imported Qwen3, on chat JSONL: the loss falls, the
  export loads in transformers with the run's logits, and sample --chat answers with one of
  the answers it learned, in the template's format, ending at <|im_end|>."""
  from helpers import run, write_chat_jsonl  # pylint: disable=g-import-not-at-top
  folder = _hf_folder(tmp_path_factory, chat_tokenizer, "qwen3_qk_norm_head_dim")
  jsonl = write_chat_jsonl(tmp_path / "chat.jsonl")
  workdir, out = tmp_path / "run", tmp_path / "exported"
  run("train", f"--workdir={workdir}", f"--config.init_from={folder}",
      "--config.data.source=chat", f"--config.data.path={jsonl}", "--config.lora.rank=16",
      "--config.lora.alpha=32", "--config.lora.targets=c_attn,c_proj,c_fc",
      "--config.train.optimizer=adamw", "--config.train.learning_rate=1e-2",
      "--config.train.warmup_steps=5", "--config.train.max_steps=400",
      "--config.train.batch_size=8", "--config.train.eval_every=400",
      "--config.train.eval_steps=2", "--config.train.log_every=10",
      "--config.train.sample_tokens=0", "--config.model.block_size=48")
  losses = [json.loads(line)["train_loss"]
            for line in open(workdir / "metrics.jsonl", encoding="utf-8") if "train_loss" in line]
  assert losses[-1] < losses[0] - 0.3, losses
  run("export", f"--workdir={workdir}", f"--out={out}")
  tuned = run_loader.load_run(str(workdir))
  tokens = _tokens(tuned.model.config.vocab_size)
  assert_same_logits(_hf_logits(str(out), tokens),
                     tuned.logits(tokens)[..., :tuned.model.config.vocab_size])
  answer = run("sample", f"--workdir={workdir}", "--chat", "--prompt=ROMEO?", "--temperature=0",
               "--max_new_tokens=40").stdout.split("\n---------------")[0]
  answers = {m["content"] for line in open(jsonl, encoding="utf-8")
             for m in json.loads(line)["messages"] if m["role"] == "assistant"}
  assert answer in answers, answer


@pytest.mark.slow
def test_the_finetune_chat_config_runs(tmp_path_factory, chat_tokenizer, tmp_path):
  """configs/finetune_chat.py on a local Llama folder (SmolLM2 itself needs a download)."""
  from configs import finetune_chat  # pylint: disable=g-import-not-at-top
  from helpers import write_chat_jsonl  # pylint: disable=g-import-not-at-top
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  config = finetune_chat.get_config()
  config.init_from = _hf_folder(tmp_path_factory, chat_tokenizer, "smollm2_shape")
  config.data.path = write_chat_jsonl(tmp_path / "chat.jsonl")
  config.train.update(batch_size=4, max_steps=2, eval_every=2, eval_steps=1)
  trainer = Trainer(config, str(tmp_path / "run"), devices=jax.devices()[:2])
  last = trainer.run()
  assert last["step"] == 2 and np.isfinite(last["val_loss"])
  assert trainer.model.config.block_size == BLOCK_SIZE  # cut to the model's context
  assert trainer.model.config.lora_targets == ("c_attn", "c_proj", "c_fc")

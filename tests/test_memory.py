"""What a compiled train step needs of each device's memory, known before anything is allocated."""

import json
import re

import jax
import pytest

from jaxgpt import memory, state as state_lib
from jaxgpt.errors import UserError
from jaxgpt.trainer import Program, Trainer

from helpers import assert_clean_error, run, text_config, tiny_args, tiny_config


def test_the_compiled_step_reports_its_memory_with_the_state_donated():
  config = tiny_config(mesh=dict(data=1, fsdp=-1))
  program = Program(config, vocab_size=30, devices=jax.devices()[:2])
  _, figures = program.compile_train_step()
  state_bytes = memory.bytes_per_device(program.abstract_state)
  assert figures["alias_bytes"] == state_bytes  # the new state overwrites the donated one
  assert figures["argument_bytes"] > state_bytes and figures["temp_bytes"] > 0
  assert figures["total_bytes"] == (figures["argument_bytes"] + figures["output_bytes"]
                                    - state_bytes + figures["temp_bytes"]
                                    + figures["generated_code_bytes"])
  line = memory.describe(figures)
  assert "train step compiled in" in line and "temporaries" in line and "in all, of" in line


@pytest.mark.parametrize("mesh, model, words", [
    (dict(data=1, tensor=2), dict(n_head=1), "heads (model.n_head; n_kv_head for keys and"),
    (dict(data=1, tensor=2), dict(n_head=4, n_kv_head=1), "heads (model.n_head"),
    (dict(data=1, tensor=2), dict(mlp_width=33), "MLP width (model.mlp_width), 33, cannot be"),
    (dict(data=1, fsdp=2), dict(n_embd=33, n_head=1), "width (model.n_embd), 33, cannot be split"
                                                        " over mesh.fsdp=2 devices"),
])
def test_a_mesh_that_cannot_split_the_model_is_one_line(mesh, model, words):
  """It was JAX's IndivisibleError, a traceback."""
  config = tiny_config(mesh=mesh, **model)
  with pytest.raises(UserError, match=re.escape(words)):
    Program(config, vocab_size=30, devices=jax.devices()[:2])


def test_bench_refuses_a_pretrained_models_options_as_train_does(hf_folder):
  """It compiled a 5-layer model for a 2-layer GPT-2 folder, and 128 positions for its 64."""
  for flag, words in (("--config.model.n_layer=5", "model.n_layer=5 is not"),
                      ("--config.model.block_size=128", "longer than the 64 positions")):
    assert_clean_error(run("bench", "--compile_only", f"--config.init_from={hf_folder}", flag,
                           check=False), words)


@pytest.mark.slow
def test_bench_compile_only_allocates_no_parameters():
  """A state of 87 GB a device (2 layers, 16,384 wide, AdamW, float32): allocating it would
  fail on a machine such as CI's (24 GB), compiling it takes seconds. remat=True: the older
  spelling, still accepted on the command line."""
  result = run("bench", "--compile_only", "--json", "--config=gpt2_owt",
               "--config.model.n_layer=2", "--config.model.n_embd=16384",
               "--config.model.n_head=16", "--config.model.block_size=64",
               "--config.model.remat=True", "--config.train.batch_size=2",
               "--config.train.grad_accum_steps=1")
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures["argument_bytes"] > 80e9, figures  # every device holds the whole state
  assert figures["compile_seconds"] > 0 and figures["temp_bytes"] > 0


def _compiled_state_bytes(*args):
  result = run("bench", "--compile_only", "--json", "--config=gpt2_owt",
               "--config.model.n_layer=1", "--config.model.n_embd=256",
               "--config.model.n_head=4", "--config.model.block_size=64",
               "--config.train.batch_size=8", "--config.train.grad_accum_steps=1", *args)
  return json.loads(result.stdout.strip().splitlines()[-1])["argument_bytes"]


@pytest.mark.slow
def test_bench_compile_only_takes_the_vocabulary_of_the_runs_tokenizer(hf_folder, token_dir):
  """It took GPT-2's 50,257 ids for any data.tokenizer_path and for prepared shards."""
  gpt2_embedding = 50_257 * 256 * 4 * 3  # with AdamW's two moments: 154 MB
  assert _compiled_state_bytes("--config.data.source=text",
                               f"--config.data.tokenizer_path={hf_folder}") < gpt2_embedding / 5
  assert _compiled_state_bytes(f"--config.data.path={token_dir}") < gpt2_embedding / 5


@pytest.mark.slow
def test_a_train_step_that_cannot_fit_stops_before_the_state_is_made(text_file, tmp_path,
                                                                      monkeypatch):
  trainer = Trainer(text_config(text_file), str(tmp_path), devices=jax.devices()[:1])
  state_bytes = (memory.bytes_per_device(trainer.program.abstract_state)
                 + memory.bytes_per_device(trainer.program.abstract_state.params))
  # Room for the state, its gradients and the optimizer state, not for the step's activations.
  monkeypatch.setattr(memory, "device_memory", lambda device: (state_bytes, "a small device"))

  def made(*args, **kwargs):
    raise AssertionError("the state was made before the train step's memory was checked")
  monkeypatch.setattr(state_lib, "init_state", made)
  with pytest.raises(UserError, match="the train step cannot fit: .* of a small device: lower "
                     "train.batch_size or model.block_size, split the batch with "
                     "train.grad_accum_steps, recompute activations with model.remat=full, or "
                     "shard over more devices with mesh.fsdp"):
    trainer.run()


def _contents(folder):
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in folder.rglob("*")}


@pytest.mark.slow  # a train command; the compiled step's memory is checked in the fast subset
def test_a_train_step_larger_than_the_machine_stops_with_one_line_and_changes_nothing(
    text_file, tmp_path):
  """A tiny model's state with a batch of 4M rows: its logits alone are hundreds of GB."""
  workdir = tmp_path / "run"
  for name, text in (("lock", '{"host": "an earlier run"}'), ("notes.txt", "mine"),
                     ("tensorboard/events.out.tfevents.1.host", "earlier events"),
                     ("xla_cache/earlier", "a compiled program")):
    (workdir / name).parent.mkdir(parents=True, exist_ok=True)
    (workdir / name).write_text(text)
  before = _contents(workdir)
  result = run("train", *tiny_args(block_size=32, data=dict(source="text", path=text_file)),
               f"--workdir={workdir}", f"--config.train.batch_size={2**22}", check=False)
  assert_clean_error(result, "the train step cannot fit", "GB per device", "train.batch_size",
                     "model.block_size", "train.grad_accum_steps", "model.remat", "mesh.fsdp")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert _contents(workdir) == before

"""model.scan_layers: the scanned form computes what the unrolled one does, trains, generates,
loads and exports GPT-2, and reads the other form's checkpoints."""

import dataclasses
import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from jaxgpt import (checkpoint, generate, hf_export, hf_gpt2, layers, lora, optim, pretrained, run_loader, sharding,
                    state as state_lib, steps)
from jaxgpt.config import model_config
from jaxgpt.errors import UserError
from jaxgpt.model import GPT
from jaxgpt.trainer import Trainer

from helpers import (init_params, logged_losses, random_batch, text_config, tiny_config,
                     train_on_one_batch)


def _scanned(model):
  return GPT(dataclasses.replace(model.config, scan_layers=True))


@pytest.mark.slow
def test_both_forms_give_equal_losses_and_gradients_from_the_same_weights():
  config = tiny_config(bias=True)
  unrolled = GPT(model_config(config, 30))
  params = init_params(unrolled)
  x, y = random_batch(config)
  loss_and_grads = jax.jit(jax.value_and_grad(steps.loss_fn, argnums=1), static_argnums=0)
  loss, grads = loss_and_grads(unrolled, params, x, y)
  scanned_loss, scanned_grads = loss_and_grads(_scanned(unrolled), layers.stack_layers(params),
                                               x, y)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
  assert set(scanned_grads) == {"h", "wte", "wpe", "ln_f"}
  chex.assert_trees_all_close(layers.unstack_layers(scanned_grads), grads, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_train_steps_are_equal_in_both_forms():
  """From the same weights, AdamW's steps (decay on matrices only: not on the scanned form's
  (layers, width) biases and norms) give the same losses and weights."""
  start = jax.device_get(train_on_one_batch(tiny_config(bias=True), 0)[1])
  losses, unrolled = train_on_one_batch(tiny_config(bias=True), 3, state=start)
  scanned_losses, scanned = train_on_one_batch(tiny_config(bias=True, scan_layers=True), 3,
                                               state=start)
  np.testing.assert_allclose(scanned_losses, losses, rtol=1e-5)
  chex.assert_trees_all_close(layers.unstack_layers(jax.device_get(scanned.params)),
                              jax.device_get(unrolled.params), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # the forms' equal forward passes stay in the fast subset (losses and gradients)
def test_greedy_samples_are_equal_in_both_forms():
  unrolled = GPT(model_config(tiny_config(), 30))
  # Larger weights make the distribution peaked, so that round-off cannot change a token.
  params = jax.tree.map(lambda p: 3 * p, init_params(unrolled))

  def greedy(model, params):  # past the block, so the cache is refilled twice
    chunks = generate.generate(model, params, [3, 1, 4], 40, generate.Sampling(temperature=0),
                               chunk=16)
    return np.concatenate(list(chunks), axis=1)

  np.testing.assert_array_equal(greedy(_scanned(unrolled), layers.stack_layers(params)),
                                greedy(unrolled, params))


@pytest.mark.slow
def test_an_optimizer_state_of_frozen_blocks_converts_between_the_forms():
  """LoRA under Muon: the Adam part's blocks hold no arrays (every weight there is frozen),
  and unrolling its "h" took the layer count from its first array (an IndexError on resume
  with scan_layers switched)."""
  optimizer = optim.make_optimizer(tiny_config(train=dict(optimizer="muon")).train)
  states = {}
  for scan_layers in (False, True):
    config = tiny_config(scan_layers=scan_layers, lora=dict(rank=4, targets="c_attn"))
    model = GPT(model_config(config, 30))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    states[scan_layers] = state_lib.abstract_state(model, optimizer, mesh)
  for scan_layers in (False, True):
    converted = layers.in_form(states[not scan_layers], scan_layers)
    assert jax.tree.structure(converted) == jax.tree.structure(states[scan_layers])
    chex.assert_trees_all_equal_shapes(converted, states[scan_layers])


def test_lora_merges_layer_by_layer_in_the_scanned_form():
  """That LoRA trains only the adapters in both forms: test_lora.py."""
  config = tiny_config(scan_layers=True)
  config.lora.update(rank=4, alpha=8.0, targets="c_attn,c_proj,c_fc")
  params = jax.device_get(train_on_one_batch(config, 2)[1].params)
  chex.assert_trees_all_close(layers.unstack_layers(lora.merge(params, 4, 8.0)),
                              lora.merge(layers.unstack_layers(params), 4, 8.0), rtol=1e-6)


def test_gpt2_weights_load_into_and_export_from_the_scanned_form(hf_folder, tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  loaded = run_loader.load_pretrained(hf_folder)
  model = _scanned(loaded.model)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  with sharding.rules_context(mesh):
    params = pretrained.load_params(hf_folder, model.config, state_lib.abstract_params(model, mesh))
  kernel = params["h"]["mlp"]["c_fc"]["kernel"]
  assert kernel.shape == (2, 32, 128) and kernel.addressable_shards[0].data.shape == (2, 16, 64)
  chex.assert_trees_all_equal(layers.unstack_layers(jax.device_get(params)),
                              jax.device_get(loaded.params))
  lora_model = GPT(dataclasses.replace(model.config, lora_rank=4, lora_targets=("c_attn",)))
  with sharding.rules_context(mesh):  # GPT-2's weights, without the adapters it lacks
    without_adapters = pretrained.load_params(hf_folder, lora_model.config,
                                              state_lib.abstract_params(lora_model, mesh))
  chex.assert_trees_all_equal(jax.device_get(without_adapters), jax.device_get(params))
  hf_gpt2.export(params, model.config, loaded.tokenizer, str(tmp_path))
  original = {k.removeprefix("transformer."): v
              for k, v in load_file(os.path.join(hf_folder, hf_export.WEIGHTS_FILE)).items()}
  exported = load_file(str(tmp_path / hf_export.WEIGHTS_FILE))
  assert exported
  for name, value in exported.items():
    np.testing.assert_array_equal(value, original[name.removeprefix("transformer.")], name)


def test_a_checkpoint_of_another_depth_is_refused_in_either_form(tmp_path):
  config = tiny_config(scan_layers=True)
  optimizer = optim.make_optimizer(config.train)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  saver = checkpoint.Checkpointer(str(tmp_path))
  saver.save(1, state_lib.init_state(GPT(model_config(config, 30)), optimizer, mesh, 0))
  saver.close()
  for scan_layers in (True, False):
    deeper = GPT(model_config(tiny_config(n_layer=3, scan_layers=scan_layers), 30))
    with pytest.raises(UserError, match="does not fit this model"):
      checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(
          1, state_lib.abstract_state(deeper, optimizer, mesh))


def _train(text_file, workdir, max_steps, devices=1, scan_layers=True, **mesh):
  config = text_config(text_file, max_steps=max_steps)
  config.model.scan_layers = scan_layers
  config.mesh.update(**mesh)
  Trainer(config, str(workdir), devices=jax.devices()[:devices]).run()


@pytest.mark.slow
def test_a_scanned_run_resumes_on_another_mesh_with_the_uninterrupted_losses(text_file, tmp_path):
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  _train(text_file, whole, 10)
  _train(text_file, resumed, 10, devices=8, data=2, fsdp=2, tensor=2)
  expected = logged_losses(whole)
  np.testing.assert_allclose([logged_losses(resumed)[s] for s in expected],
                             list(expected.values()), atol=1e-4)
  shutil.rmtree(resumed / "checkpoints" / "10")  # as if stopped after step 5's checkpoint
  os.remove(resumed / "metrics.jsonl")
  _train(text_file, resumed, 10, devices=2, data=1, fsdp=2)
  got = logged_losses(resumed)
  assert sorted(got) == list(range(6, 11))
  np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], atol=1e-4)


def _load(workdir, scan_layers):
  """The run's newest parameters and a greedy sample, loaded with its config.json's
  `model.scan_layers` set as given."""
  path = os.path.join(workdir, "config.json")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  saved["model"]["scan_layers"] = scan_layers
  with open(path, "w", encoding="utf-8") as f:
    json.dump(saved, f)
  run = run_loader.load_run(str(workdir))
  with run.context():
    pieces = generate.generate_text(run.model, run.params, run.tokenizer, "ROMEO:", 40,
                                    generate.Sampling(temperature=0))
    return jax.device_get(run.params), "".join(p[0] for p in pieces)


@pytest.mark.slow
def test_a_checkpoint_of_either_form_samples_and_resumes_in_the_other(text_file, tmp_path):
  unrolled, switched = tmp_path / "unrolled", tmp_path / "switched"
  _train(text_file, unrolled, 10, scan_layers=False)
  shutil.copytree(unrolled, switched)
  params, text = _load(unrolled, scan_layers=False)
  scanned_params, scanned_text = _load(switched, scan_layers=True)
  chex.assert_trees_all_equal(scanned_params, layers.stack_layers(params))  # converted exactly
  assert scanned_text == text
  # An unrolled checkpoint resumes in the scanned form, then a scanned one in the unrolled form.
  for max_steps, scan_layers in ((12, True), (14, False)):
    _train(text_file, unrolled, max_steps, scan_layers=False)
    _train(text_file, switched, max_steps, scan_layers=scan_layers)
    expected, got = logged_losses(unrolled), logged_losses(switched)
    np.testing.assert_allclose([got[s] for s in expected], list(expected.values()), rtol=1e-5)
    if scan_layers:  # the newest checkpoint is scanned: it samples in the unrolled form
      assert _load(switched, scan_layers=False)[1] == _load(unrolled, scan_layers=False)[1]

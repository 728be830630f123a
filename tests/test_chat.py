"""data.source=chat: conversations rendered with the tokenizer's chat template, the loss on
the assistant turns only, packed (conversations that do not see each other) or padded rows,
and a LoRA fine-tune on them."""

import dataclasses
import functools
import json

import chex
import jax
import numpy as np
import pytest

from jaxgpt import config as config_lib, sharding, steps
from jaxgpt.data import BPETokenizer, chat, get_batch, BatchSpec
from jaxgpt.errors import UserError
from jaxgpt.model import GPT

from helpers import (assert_clean_error, init_params, logged_losses, no_stop, run, setup_step,
                     tiny_args, tiny_config, write_chat_jsonl)

CONVERSATION = [{"role": "system", "content": "Answer in verse."},
                {"role": "user", "content": "ROMEO?"},
                {"role": "assistant", "content": "But soft, what light"},
                {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "through yonder window breaks?"}]


def _runs(marks):
  """(start, end) of each run of True in a boolean array."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], marks.astype(np.int8), [0]])))
  return list(zip(edges[::2], edges[1::2]))


def test_the_assistant_turns_and_their_end_of_turn_are_the_trained_tokens(tokenizer):
  [(ids, trained)] = chat.encode(tokenizer, CONVERSATION)
  assert tokenizer.decode(ids).startswith("<|im_start|>system\nAnswer in verse.<|im_end|>")
  answers = [tokenizer.decode(ids[start:end]) for start, end in _runs(trained)]
  assert answers == ["But soft, what light<|im_end|>\n",
                     "through yonder window breaks?<|im_end|>\n"]


def test_a_template_that_renders_turns_differently_in_context_is_one_line(chat_tokenizer_folder):
  """A template that numbers the messages at the start renders the first turns differently
  on their own: no prefix marks an assistant turn."""
  tokenizer = BPETokenizer.from_folder(chat_tokenizer_folder)
  tokenizer.specials = dataclasses.replace(
      tokenizer.specials, chat_template="{{ messages|length }}" + tokenizer.chat_template)
  with pytest.raises(UserError, match="renders an assistant turn that does not begin with"):
    chat.encode(tokenizer, CONVERSATION)


# Qwen3's template in short: the last assistant turn holds an empty <think></think> block,
# earlier ones (in the conversation's history) do not.
LAST_TURN_THINKS = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['role'] == 'assistant' and loop.last %}{{'<think>\\n\\n</think>\\n\\n'}}"
    "{% endif %}{{message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_template_that_renders_the_last_turn_apart_trains_each_turn_as_it_is_answered(
    tokenizer):
  """Qwen3's: multi-turn conversations were refused. Each assistant turn is an example of its
  own, the conversation before it as the model sees it when it answers that turn."""
  thinking = _with_template(tokenizer, LAST_TURN_THINKS)
  examples = chat.encode(thinking, CONVERSATION)
  assert len(examples) == 2
  texts = [thinking.decode(ids) for ids, _ in examples]
  answers = [[thinking.decode(ids[a:b]) for a, b in _runs(trained)] for ids, trained in examples]
  assert answers == [["<think>\n\n</think>\n\nBut soft, what light<|im_end|>\n"],
                     ["<think>\n\n</think>\n\nthrough yonder window breaks?<|im_end|>\n"]]
  assert texts[1].startswith(texts[0].replace("<think>\n\n</think>\n\n", ""))
  assert len(chat.encode(tokenizer, CONVERSATION)) == 1  # ChatML renders turns alike


def _with_template(tokenizer, template):
  return BPETokenizer(tokenizer.hf_json(), tokenizer.vocab_size,
                      dataclasses.replace(tokenizer.specials, chat_template=template))


def test_a_template_that_is_not_jinja_names_the_file_to_fix(tokenizer):
  """transformers 5 saves a template as chat_template.jinja; the advice named only
  tokenizer_config.json."""
  with pytest.raises(UserError, match="not valid Jinja .* chat_template.jinja"):
    chat.encode(_with_template(tokenizer, "{% for %}"), CONVERSATION)


def test_a_conversation_the_template_cannot_render_is_named_by_its_line(tokenizer, tmp_path):
  refusing = _with_template(tokenizer, "{% if messages[0]['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            + tokenizer.chat_template)
  path = tmp_path / "chat.jsonl"
  path.write_text(json.dumps({"messages": CONVERSATION[1:3]}) + "\n\n"
                  + json.dumps({"messages": CONVERSATION}) + "\n")
  data_config = config_lib.base_config().data
  data_config.path = str(path)
  with pytest.raises(UserError, match="chat.jsonl:3: the tokenizer's chat template cannot "
                     "render this conversation .*System role not supported"):
    chat.load_splits(data_config, refusing, 64)


def test_rows_pack_whole_conversations_or_pad_one_to_a_row(tokenizer):
  conversations = [chat.encode(tokenizer, CONVERSATION[1:3])[0] for _ in range(5)]
  length = len(conversations[0][0])
  packed = chat.layout(conversations, 2 * length + 3, pack=True)
  assert packed.num_rows == 3 and list(packed.segments[0, [0, length, 2 * length]]) == [1, 2, 0]
  padded = chat.layout(conversations, 2 * length + 3, pack=False)
  assert padded.num_rows == 5 and (padded.segments[:, length:] == 0).all()
  assert len(packed) == len(padded) == 5 * length
  cut = chat.layout(conversations, length - 2, pack=True)  # longer than a row: cut to it
  assert cut.num_rows == 5 and (cut.segments == 1).all()


def test_a_batch_takes_no_loss_outside_the_assistant_turns(tokenizer):
  rows = chat.layout(chat.encode(tokenizer, CONVERSATION) * 3, 64, pack=True)
  x, y, segments = rows.batch(np.arange(rows.num_rows))
  trained_targets = rows.trained[:, 1:] & (rows.segments[:, 1:] == rows.segments[:, :-1])
  assert ((y >= 0) == trained_targets).all()
  np.testing.assert_array_equal(y[y >= 0], rows.tokens[:, 1:][y >= 0])
  assert x.shape == y.shape == segments.shape == (rows.num_rows, 63)
  again = get_batch(rows, BatchSpec(seed=1, process_index=0, batch_size=4, block_size=63), 7)
  for a, b in zip(again, get_batch(rows, BatchSpec(1, 0, 4, 63), 7)):  # a function of the step
    np.testing.assert_array_equal(a, b)


def _model_and_params(vocab_size, **options):
  config = tiny_config(**{"block_size": 64, **options})
  model = GPT(config_lib.model_config(config, vocab_size))
  return model, init_params(model)


def test_packed_conversations_do_not_see_each_other(tokenizer):
  """A conversation's logits are the same after another conversation in its row, after a
  changed one, and alone at the start of a row (learned positions: rotary ones would not
  show positions that fail to restart)."""
  model, params = _model_and_params(tokenizer.vocab_size, position="learned", block_size=128)
  [(first, _)] = chat.encode(tokenizer, CONVERSATION[1:3])
  [(second, _)] = chat.encode(tokenizer, CONVERSATION[3:])
  changed = (first + 1) % tokenizer.vocab_size
  n, m = len(first), len(second)
  rows = np.zeros((3, n + m), np.int32)
  segments = np.zeros((3, n + m), np.int32)
  rows[0], segments[0] = np.concatenate([first, second]), [1] * n + [2] * m
  rows[1], segments[1] = np.concatenate([changed, second]), [1] * n + [2] * m
  rows[2, :m], segments[2, :m] = second, 1  # then padding, segment 0
  apply = jax.jit(lambda p, x, s: model.apply({"params": p}, x, **steps.packed_inputs(s)))
  logits = np.asarray(apply(params, rows, segments))
  assert np.isfinite(logits).all()
  np.testing.assert_allclose(logits[1, n:], logits[0, n:], atol=1e-5)
  np.testing.assert_allclose(logits[2, :m], logits[0, n:], atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(model, params, batch):
  return jax.value_and_grad(lambda p: steps.batch_loss(model, p, batch))(params)


def test_tokens_outside_the_assistant_turns_contribute_nothing(tokenizer):
  """In a row packed with two conversations and padding, changing what the user says after
  the last answer and the padding changes neither the loss nor the gradients (so neither the
  update); taking those tokens as targets would."""
  model, params = _model_and_params(tokenizer.vocab_size, block_size=128, position="rope",
                                    norm="rmsnorm", mlp="swiglu")
  batches = []
  for last_words in ("Thank you.", "What light?"):
    ended_by_user = CONVERSATION[1:] + [{"role": "user", "content": last_words}]
    conversations = [CONVERSATION[1:3], ended_by_user]
    rows = chat.layout([chat.encode(tokenizer, c)[0] for c in conversations], 129, pack=True)
    assert rows.num_rows == 1 and rows.segments[0, -1] == 0  # both, then padding
    batches.append(rows.batch([0]))
  batches[1][0][0, -3:] = 7  # and the padding
  assert not np.array_equal(batches[0][0], batches[1][0])
  loss, grads = _loss_and_grads(model, params, batches[0])
  other_loss, other_grads = _loss_and_grads(model, params, batches[1])
  assert float(loss) == float(other_loss)
  jax.tree.map(np.testing.assert_array_equal, grads, other_grads)
  x, _, segments = batches[1]
  unmasked = (x, np.concatenate([x[:, 1:], x[:, -1:]], axis=1), segments)
  assert float(_loss_and_grads(model, params, unmasked)[0]) != float(loss)


@pytest.mark.slow
def test_accumulated_micro_batches_weigh_each_trained_target_alike(tokenizer):
  """Micro-batches with different numbers of assistant tokens (one answer a row, then two)
  take the step that one batch of them all takes: the loss is over the batch's trained
  targets, not a mean of the micro-batches' means."""
  conversations = [chat.encode(tokenizer, c)[0]
                   for c in [CONVERSATION[1:3]] * 4 + [CONVERSATION[1:]] * 4]
  x, y, segments = chat.layout(conversations, 65, pack=False).batch(np.arange(8))
  batch = (x % 30, np.where(y >= 0, y % 30, -1), segments)  # setup_step's 30 ids
  results = []
  for accumulate in (1, 2):
    config = tiny_config(block_size=64, train=dict(grad_accum_steps=accumulate))
    _, mesh, state, step = setup_step(config, jax.devices()[:1])
    with sharding.rules_context(mesh):
      arrays = tuple(sharding.global_batch(z.reshape(accumulate, -1, 64), mesh, 1) for z in batch)
      state, metrics = step(state, arrays, no_stop(8 // accumulate))
      results.append((float(metrics["loss"]), jax.device_get(state.params)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  chex.assert_trees_all_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("line, words", [
    ("not json", "chat.jsonl:2 is not JSON"),
    ('{"text": "hello"}', "chat.jsonl:2 has no list of messages"),
    ('{"messages": [{"role": "user"}]}', "without a string role and content"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ("\udcff\udcfe", "chat.jsonl:2 is not UTF-8 text"),  # the bytes ff fe
])
def test_a_malformed_conversation_is_one_line_naming_it(line, words, tmp_path):
  path = tmp_path / "chat.jsonl"
  path.write_bytes((json.dumps({"messages": CONVERSATION}) + "\n" + line + "\n").encode(
      "utf-8", "surrogateescape"))
  with pytest.raises(UserError, match=words):
    chat.read_conversations(str(path))


def test_a_byte_order_mark_is_not_part_of_the_first_conversation(tmp_path):
  path = tmp_path / "chat.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"messages": CONVERSATION}).encode() + b"\n")
  assert chat.read_conversations(str(path)) == [(1, CONVERSATION)]


def test_a_split_whose_answers_all_lie_past_the_context_is_refused(tokenizer, tmp_path):
  """Rows cut to block_size + 1 tokens can lose every answer: the run then trained on
  nothing at a loss of 0.0000, and a validation split without answers kept best/ at the first
  evaluation."""
  [(_, trained)] = chat.encode(tokenizer, CONVERSATION)
  first = int(np.argmax(trained))  # the first answer's first token
  data_config = config_lib.base_config().data
  data_config.path = str(tmp_path / "chat.jsonl")
  (tmp_path / "chat.jsonl").write_text(2 * (json.dumps({"messages": CONVERSATION}) + "\n"))
  with pytest.raises(UserError, match=f"no assistant token of the train split's conversations "
                     f"fits in model.block_size={first - 1} .* to {first} or more"):
    chat.load_splits(data_config, tokenizer, first - 1)
  train, val = chat.load_splits(data_config, tokenizer, first)
  assert train.num_targets() == val.num_targets() == 1  # the answer's first token alone


def test_chat_data_without_a_chat_template_is_one_line(tmp_path):
  result = run("train", f"--workdir={tmp_path / 'run'}", *tiny_args(
      **{"data.source": "chat", "data.path": write_chat_jsonl(tmp_path / "chat.jsonl")}),
      check=False)
  assert_clean_error(result, "data.source=chat needs a tokenizer with a chat template")


def test_a_malformed_line_stops_the_run_with_one_line(chat_tokenizer_folder, tmp_path):
  path = tmp_path / "chat.jsonl"
  path.write_text(json.dumps({"messages": CONVERSATION}) + "\n{not json\n")
  result = run("train", f"--workdir={tmp_path / 'run'}", *tiny_args(
      **{"data.source": "chat", "data.path": path, "data.tokenizer": "gpt2",
         "data.tokenizer_path": chat_tokenizer_folder}), check=False)
  assert_clean_error(result, "chat.jsonl:2 is not JSON")


@pytest.mark.parametrize("text, is_chat", [
    ('\n\n{"messages": [{"role": "user", "content": "Hi"}]}\n', True),
    ('\ufeff{"messages": []}\n', True),  # a byte order mark
    ("ROMEO: But soft, what light\n", False),
    ('"the messages"\n', False),  # JSON, not a conversation
    ('[{"messages": []}]\n', False),
    ('{"text": "messages"}\n', False),
    ("", False),
])
def test_eval_tells_a_file_of_conversations_from_text(text, is_chat, tmp_path):
  (tmp_path / "data").write_text(text, encoding="utf-8")
  assert chat.is_conversations_file(str(tmp_path / "data")) == is_chat


@pytest.mark.slow
def test_a_lora_fine_tune_on_chat_data_learns_the_answers(chat_tokenizer_folder, tmp_path):
  """LoRA on every hidden layer from a scratch model (no pretrained one here): the training
  loss falls; eval --data=val scores the held-out answers."""
  workdir = tmp_path / "run"
  run("train", f"--workdir={workdir}", *tiny_args(
      None, position="rope", norm="rmsnorm", mlp="swiglu", block_size=64,
      **{"data.source": "chat", "data.path": write_chat_jsonl(tmp_path / "chat.jsonl"),
         "data.tokenizer": "gpt2", "data.tokenizer_path": chat_tokenizer_folder,
         "lora.rank": 4, "lora.targets": "c_attn,c_proj,c_fc", "train.max_steps": 60,
         "train.learning_rate": 0.01, "train.log_every": 10, "train.eval_every": 60}))
  losses = list(logged_losses(workdir).values())
  assert losses[-1] < 0.97 * losses[0], losses  # adapters on random weights learn slowly
  result = run("eval", f"--workdir={workdir}", "--data=val", "--json")
  scored = json.loads(result.stdout.strip().splitlines()[-1])["val"]
  assert scored["tokens"] > 0 and np.isfinite(scored["loss"])
  # The held-out conversations as a file of their own are scored as chat, to the same figures.
  lines = [line for line in (tmp_path / "chat.jsonl").read_text().splitlines() if line.strip()]
  held = min(max(1, round(len(lines) * config_lib.base_config().data.val_fraction)),
             len(lines) - 1)
  (tmp_path / "held.jsonl").write_text("\n".join(lines[-held:]) + "\n")
  result = run("eval", f"--workdir={workdir}", f"--data={tmp_path / 'held.jsonl'}", "--json")
  assert json.loads(result.stdout.strip().splitlines()[-1])["held.jsonl"] == scored

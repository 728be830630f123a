"""Sampling from a chat model: a sample ends at an end-of-turn token, `sample --chat` prints
the answer alone, and `--interactive --chat` keeps the conversation, dropping its oldest turns
when it outgrows the context."""

import ast
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxgpt import chat_template, generate
from jaxgpt.data import BPETokenizer, chat

from helpers import REPO, run, tiny_args

QUESTION, ANSWER = "ROMEO?", "But soft, what light"
SEPARATOR = "---------------\n"
SYSTEM = {"role": "system", "content": "Answer in verse."}


def _user(text):
  return {"role": "user", "content": text}


def _assistant(text):
  return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def chat_run(chat_tokenizer_folder, tokenizer, tmp_path_factory):
  """A tiny model trained (in seconds) on one ChatML conversation repeated, until its greedy
  answer to QUESTION is ANSWER and then <|im_end|>."""
  folder = tmp_path_factory.mktemp("chat_run")
  conversation = chat_template.render(tokenizer, [_user(QUESTION), _assistant(ANSWER)])
  (folder / "text.txt").write_text(conversation * 200, encoding="utf-8")
  run("train", *tiny_args(**{
      "model.block_size": 128, "train.max_steps": 200, "train.eval_every": 200,
      "train.warmup_steps": 5, "train.learning_rate": 1e-2, "train.min_lr": 1e-3,
      "train.sample_tokens": 0, "data.source": "text", "data.path": folder / "text.txt",
      "data.tokenizer": "gpt2", "data.tokenizer_path": chat_tokenizer_folder}),
      f"--workdir={folder / 'run'}")
  return str(folder / "run")


def test_a_sample_ends_at_an_end_of_turn_token_which_is_not_printed(tokenizer):
  end_of_turn = tokenizer.token_id("<|im_end|>")
  assert end_of_turn in generate.stop_ids(tokenizer)
  sample = generate._SampleText(tokenizer, stop="")
  first = sample.add(tokenizer.encode("But soft,"))
  rest = sample.add([*tokenizer.encode(" what"), end_of_turn, *tokenizer.encode(" light")])
  assert first + rest == "But soft, what" and sample.done
  assert sample.add(tokenizer.encode("ROMEO")) == "" and sample.flush() == ""


def test_generate_text_encodes_the_prompt_with_bos_and_stops_generating_at_the_end_of_turn(
    tokenizer, monkeypatch):
  """The model's tokens come from a stand-in for the compiled loop, one chunk at a time."""
  with_bos = BPETokenizer(tokenizer.hf_json(), specials=dataclasses.replace(
      tokenizer.specials, add_bos=True))
  bos = with_bos.token_id(with_bos.specials.bos_token)
  end_of_turn = with_bos.token_id("<|im_end|>")
  chunks = [with_bos.encode("But soft,"), [*with_bos.encode(" what"), end_of_turn, 5],
            with_bos.encode(" light")]
  prompts, drawn = [], []

  def fake_generate(model, params, prompt_ids, *args, **kwargs):
    prompts.append(list(prompt_ids))
    for chunk in chunks:
      drawn.append(chunk)
      yield np.array([chunk])

  monkeypatch.setattr(generate, "generate", fake_generate)
  pieces = generate.generate_text(None, None, with_bos, QUESTION, 100)
  assert "".join(piece for piece, in pieces) == "But soft, what"
  assert prompts == [[bos, *with_bos.encode(QUESTION)]]
  assert len(drawn) == 2  # generation stopped at the chunk that ended the turn


def test_a_chat_prompt_is_encoded_as_chat_training_encodes_it_without_an_added_bos(
    tokenizer, monkeypatch):
  """A tokenizer that adds a begin-of-text token to text, with a chat template that does not
  write one (ChatML): the chat prompt's ids are the template's text alone, as in training and
  transformers' apply_chat_template, not after a begin-of-text token."""
  with_bos = BPETokenizer(tokenizer.hf_json(), specials=dataclasses.replace(
      tokenizer.specials, add_bos=True))
  bos = with_bos.token_id(with_bos.specials.bos_token)
  prompts = []

  def fake_generate(model, params, prompt_ids, *args, **kwargs):
    prompts.append(list(prompt_ids))
    yield np.array([with_bos.encode(ANSWER)])

  monkeypatch.setattr(generate, "generate", fake_generate)
  conversation = [_user(QUESTION), _assistant(ANSWER)]
  text, _ = generate.chat_prompt(with_bos, conversation[:1], max_tokens=10_000)
  list(generate.generate_text(None, None, with_bos, text, 100, chat=True))
  (trained_ids, _), = chat.encode(with_bos, conversation)
  assert prompts == [list(with_bos.encode(text))] and prompts[0][0] != bos
  assert list(trained_ids[:len(prompts[0])]) == prompts[0]


def test_the_conversation_drops_its_oldest_turns_to_fit_but_keeps_the_system_message(
    tokenizer):
  conversation = [SYSTEM, _user("ROMEO?"), _assistant("But soft"), _user("JULIET?"),
                  _assistant("O Romeo"), _user("MERCUTIO?")]
  text, kept = generate.chat_prompt(tokenizer, conversation, max_tokens=10_000)
  assert kept == conversation
  assert text == chat_template.render(tokenizer, conversation, add_generation_prompt=True)
  assert text.endswith("<|im_start|>user\nMERCUTIO?<|im_end|>\n<|im_start|>assistant\n")
  newest_turns = [SYSTEM, *conversation[3:]]
  fits = len(tokenizer.encode(chat_template.render(tokenizer, newest_turns, True)))
  assert generate.chat_prompt(tokenizer, conversation, fits)[1] == newest_turns
  assert generate.chat_prompt(tokenizer, conversation, fits - 1)[1] == [SYSTEM, conversation[-1]]
  # The newest message stays even where it alone is too long (generation keeps its end).
  assert generate.chat_prompt(tokenizer, conversation, 1)[1] == [SYSTEM, conversation[-1]]


@pytest.mark.slow
def test_chat_prints_the_answer_alone_and_stops_at_the_end_of_turn(chat_run, tokenizer):
  chat = run("sample", f"--workdir={chat_run}", "--chat", f"--prompt={QUESTION}",
             "--temperature=0", "--max_new_tokens=40")
  assert chat.stdout == ANSWER + "\n" + SEPARATOR
  # Without --chat, the template's text is a prompt like any other, printed before the answer.
  templated = chat_template.render(tokenizer, [_user(QUESTION)], add_generation_prompt=True)
  plain = run("sample", f"--workdir={chat_run}", f"--prompt={templated}", "--temperature=0",
              "--max_new_tokens=40")
  assert plain.stdout == templated + ANSWER + "\n" + SEPARATOR


# `python -m jaxgpt.sample` with each chat prompt it renders written to stderr.
_LOGGING_SAMPLE = """
import runpy, sys
from jaxgpt import generate
chat_prompt = generate.chat_prompt
def logged(*args):
  text, kept = chat_prompt(*args)
  print("PROMPT " + repr(text), file=sys.stderr)
  return text, kept
generate.chat_prompt = logged
sys.argv = ["-m", *sys.argv[1:]]
runpy.run_module("jaxgpt.sample", run_name="__main__", alter_sys=True)
"""


def _logged_sample(stdin, *args):
  """The answers and the chat prompts of `python -m jaxgpt.sample ARGS` with `stdin`."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  result = subprocess.run([sys.executable, "-c", _LOGGING_SAMPLE, *args], cwd=REPO, env=env,
                          input=stdin, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  prompts = [ast.literal_eval(line[len("PROMPT "):]) for line in result.stderr.splitlines()
             if line.startswith("PROMPT ")]
  answers = [text[:-1] for text in result.stdout.split(SEPARATOR)[:-1]]  # less the "\n"
  return answers, prompts, result.stderr


def _rendered(tokenizer, *messages):
  return chat_template.render(tokenizer, list(messages), add_generation_prompt=True)


@pytest.mark.slow
def test_interactive_chat_keeps_the_conversation_and_drops_its_oldest_turns(chat_run,
                                                                           tokenizer):
  """A block of 128 with room for 40 new tokens holds two turns' prompt, not three."""
  answers, prompts, stderr = _logged_sample(f"{QUESTION}\n{QUESTION}\n{QUESTION}\n",
                                            f"--workdir={chat_run}", "--interactive",
                                            "--chat", "--temperature=0", "--max_new_tokens=40")
  assert answers == [ANSWER] * 3
  user, assistant = _user(QUESTION), _assistant(ANSWER)
  assert prompts == [_rendered(tokenizer, user), _rendered(tokenizer, user, assistant, user),
                     _rendered(tokenizer, user, assistant, user)]
  assert stderr.count("dropped the oldest 1 turn(s)") == 1, stderr


@pytest.mark.slow
def test_the_system_message_comes_first(chat_run, tokenizer):
  _, prompts, _ = _logged_sample("", f"--workdir={chat_run}", "--chat", f"--prompt={QUESTION}",
                                 f"--system={SYSTEM['content']}", "--max_new_tokens=3")
  assert prompts == [_rendered(tokenizer, SYSTEM, _user(QUESTION))]

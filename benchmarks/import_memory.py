"""Peak host memory while importing a pretrained model folder (init_from), against the size of
its largest safetensors shard.

  python benchmarks/import_memory.py [--folder=DIR] [--gigabytes=3] [--shard_gigabytes=0.8]

Without --folder it first writes a random Llama-shaped folder of about --gigabytes of float32
weights in shards of at most --shard_gigabytes (a tokenizer of its own; config.json as
transformers writes it), under /tmp. A fresh process then loads it with
jaxgpt.run_loader.load_pretrained, as sample/eval/train do, and reports from /proc/self/status:
the resident memory before (the process's baseline: Python, JAX, jaxgpt), its peak during the
import (VmHWM, reset just before), and after. On a CPU the parameters themselves live in host
memory, so the import's own overhead is the peak less the baseline less the parameters'
bytes; on a TPU or GPU host the parameters are on the device and the host's peak is the
baseline plus that overhead.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

GIB = 2**30


def _llama_config(gigabytes: float) -> dict:
  """A Llama 3-like shape (GQA, untied head) with about `gigabytes` of float32 weights."""
  width, mlp, heads, kv_heads, vocab = 2048, 5632, 16, 4, 32000
  kv = kv_heads * width // heads
  per_layer = 4 * (2 * width * width + 2 * width * kv + 3 * width * mlp + 2 * width)
  layers = max(1, round((gigabytes * GIB - 2 * 4 * vocab * width) / per_layer))
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": layers,
          "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
          "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 0,
          "eos_token_id": 0, "torch_dtype": "float32"}


def _tensor_shapes(c: dict) -> dict:
  d, f, k = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
  kv = c["num_key_value_heads"] * k
  shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,),
            "lm_head.weight": (c["vocab_size"], d)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}"
    shapes.update({f"{p}.input_layernorm.weight": (d,), f"{p}.post_attention_layernorm.weight": (d,),
                   f"{p}.self_attn.q_proj.weight": (d, d), f"{p}.self_attn.k_proj.weight": (kv, d),
                   f"{p}.self_attn.v_proj.weight": (kv, d), f"{p}.self_attn.o_proj.weight": (d, d),
                   f"{p}.mlp.gate_proj.weight": (f, d), f"{p}.mlp.up_proj.weight": (f, d),
                   f"{p}.mlp.down_proj.weight": (d, f)})
  return shapes


def write_folder(folder: str, gigabytes: float, shard_gigabytes: float) -> None:
  """A random Llama folder in shards, with an index, a config.json and a small tokenizer."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  config = _llama_config(gigabytes)
  rng = np.random.default_rng(0)
  shards, current, size = [], {}, 0
  for name, shape in _tensor_shapes(config).items():
    nbytes = 4 * int(np.prod(shape))
    if current and size + nbytes > shard_gigabytes * GIB:
      shards.append(current)
      current, size = {}, 0
    current[name], size = shape, size + nbytes
  shards.append(current)
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({name: (0.02 * rng.standard_normal(shape, np.float32)) for name, shape in shard.items()},
              os.path.join(folder, file), metadata={"format": "pt"})
    weight_map.update({name: file for name in shard})
  with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["To be, or not to be, that is the question."] * 10, vocab_size=300,
                          special_tokens=["<|endoftext|>"], show_progress=False)
  bpe.save(os.path.join(folder, "tokenizer.json"))


def _status_bytes(field: str) -> int:
  with open("/proc/self/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}")


def measure(folder: str) -> dict:
  """Run in a fresh process: the resident memory before, at peak during, and after the import."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgpt import run_loader  # pylint: disable=g-import-not-at-top
  jax.devices()
  baseline = _status_bytes("VmRSS")
  with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
    f.write("5")  # resets VmHWM, the peak resident memory, to the present
  started = time.perf_counter()
  run = run_loader.load_pretrained(folder)
  jax.block_until_ready(run.params)
  seconds = time.perf_counter() - started
  params = sum(x.nbytes for x in jax.tree.leaves(run.params))
  return {"baseline": baseline, "peak": _status_bytes("VmHWM"), "after": _status_bytes("VmRSS"),
          "params": params, "seconds": seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--folder", default="")
  parser.add_argument("--gigabytes", type=float, default=3.0)
  parser.add_argument("--shard_gigabytes", type=float, default=0.8)
  parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # the child process
  args = parser.parse_args()
  if args.measure:
    print(json.dumps(measure(args.measure)))
    return
  folder = args.folder or os.path.join(tempfile.gettempdir(), f"jaxgpt-import-{args.gigabytes}g")
  if not os.path.isfile(os.path.join(folder, "config.json")):
    print(f"writing a random Llama folder of about {args.gigabytes} GiB to {folder}", flush=True)
    write_folder(folder, args.gigabytes, args.shard_gigabytes)
  shard_sizes = [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                 if f.endswith(".safetensors")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = json.loads(subprocess.run(
      [sys.executable, __file__, f"--measure={folder}"], env=env, check=True,
      capture_output=True, text=True).stdout.strip().splitlines()[-1])
  overhead = result["peak"] - result["baseline"] - result["params"]
  largest = max(shard_sizes)
  print(f"folder: {sum(shard_sizes) / GIB:.2f} GiB in {len(shard_sizes)} shards, the largest "
        f"{largest / GIB:.2f} GiB")
  print(f"resident: baseline {result['baseline'] / GIB:.2f} GiB, peak {result['peak'] / GIB:.2f} "
        f"GiB, after {result['after'] / GIB:.2f} GiB; parameters {result['params'] / GIB:.2f} GiB "
        f"(host memory on CPU); loaded in {result['seconds']:.1f} s")
  print(f"import overhead (peak - baseline - parameters): {overhead / GIB:.3f} GiB = "
        f"{overhead / largest:.2f}x the largest shard; peak - baseline = "
        f"{(result['peak'] - result['baseline']) / largest:.2f}x the largest shard")


if __name__ == "__main__":
  main()

"""Sampling speed of jaxgpt (float32, bfloat16 and int8 weights) against transformers'
`generate`, side by side in one process, on the same Hugging Face folder.

Both sample with the sample command's defaults (temperature 0.8, top_k 200) from a one-token
prompt; each figure is batch x (long - short) / (time of long new tokens - time of short), so
prefill, start-up and compilation cancel out (jaxgpt's first call, which compiles, is
reported apart); the median of --repeats. Beside it, the median wall time of a whole
generation of --short tokens (prefill and all), as a short answer takes. transformers runs in
float32 with as many torch threads as there are cores; jaxgpt on the CPU devices the sample
command uses.

Without --folder, a random model of the --shape is written to a scratch folder first:
gpt2 (GPT-2 124M: transformers' GPT2Config defaults) or smollm2 (SmolLM2-135M's Llama
shape: 30 layers of 576, 9 heads with 3 key/value heads, 49,152 ids, tied), with a small
byte-level BPE (the speed does not depend on the tokenizer). Needs torch and transformers.

  PYTHONPATH=. python benchmarks/generate_vs_transformers.py --shape=gpt2 [--batch 1 8]
"""

import argparse
import os
import statistics
import tempfile
import time


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--folder", help="a Hugging Face GPT-2 or Llama-family folder")
  p.add_argument("--shape", choices=["gpt2", "smollm2"], default="gpt2")
  p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  p.add_argument("--variants", nargs="+", default=["float32", "bfloat16", "int8"],
                 choices=["float32", "bfloat16", "int8"])
  p.add_argument("--long", type=int, default=160)
  p.add_argument("--short", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  return p.parse_args()


def write_random_folder(shape: str) -> str:
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  folder = os.path.join(tempfile.gettempdir(), f"jaxgpt-bench-{shape}")
  if os.path.exists(os.path.join(folder, "config.json")):
    return folder
  if shape == "gpt2":
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0))
  model.save_pretrained(folder)
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(["To be, or not to be, that is the question."] * 10, vocab_size=300,
                          special_tokens=["<|endoftext|>"], show_progress=False)
  bpe.save(os.path.join(folder, "tokenizer.json"))
  return folder


def rate(seconds, batch: int, long: int, short: int, repeats: int) -> tuple[float, list, float]:
  """The median tokens/s of `repeats` (long - short) differences, all of them, and the median
  seconds of the short generations."""
  rates, shorts = [], []
  for _ in range(repeats):
    shorts.append(seconds(short))
    rates.append(batch * (long - short) / (seconds(long) - shorts[-1]))
  return statistics.median(rates), sorted(rates), statistics.median(shorts)


def transformers_rates(folder: str, args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

  def seconds(n, batch):
    ids = torch.zeros((batch, 1), dtype=torch.long)
    started = time.perf_counter()
    with torch.no_grad():
      model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=200,
                     temperature=0.8, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return time.perf_counter() - started

  results = {}
  for batch in args.batch:
    seconds(8, batch)  # warm-up
    results[batch] = rate(lambda n, b=batch: seconds(n, b), batch, args.long, args.short,
                          args.repeats)
  return results


def jaxgpt_rates(folder: str, variant: str, args) -> dict:
  from jaxgpt import generate, run_loader  # pylint: disable=g-import-not-at-top
  dtype, quantize = ("float32", "int8") if variant == "int8" else (variant, "none")
  run = run_loader.load_pretrained(folder).for_sampling(dtype, quantize)
  sampling = generate.Sampling(temperature=0.8, top_k=200)

  def seconds(n, batch):
    started = time.perf_counter()
    for _ in generate.generate(run.model, run.params, [0], n, sampling, batch):
      pass
    return time.perf_counter() - started

  results = {}
  for batch in args.batch:
    compile_s = 0.0
    for n in (args.short, args.long):  # each compiles its own cache size (a power of two)
      timing = generate.Timing()
      list(generate.generate(run.model, run.params, [0], n, sampling, batch, timing=timing))
      compile_s += timing.compile_s
    median, rates, short_s = rate(lambda n, b=batch: seconds(n, b), batch, args.long,
                                  args.short, args.repeats)
    results[batch] = (median, rates, short_s, compile_s)
  return results


def main():
  args = parse_args()
  from jaxgpt import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_cpu_devices()
  import jax  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  folder = args.folder or write_random_folder(args.shape)
  print(f"{folder}: jax {jax.__version__} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, transformers {transformers.__version__}, "
        f"{args.long} - {args.short} new tokens, load {os.getloadavg()[0]:.2f}", flush=True)
  reference = transformers_rates(folder, args)
  for batch, (median, rates, short_s) in reference.items():
    print(f"transformers float32, batch {batch}: {median:7.1f} tokens/s "
          f"(runs {', '.join(f'{r:.1f}' for r in rates)}); {args.short} tokens in "
          f"{short_s:.2f} s", flush=True)
  for variant in args.variants:
    for batch, (median, rates, short_s, compile_s) in jaxgpt_rates(folder, variant, args).items():
      print(f"jaxgpt {variant:8s}, batch {batch}: {median:7.1f} tokens/s = "
            f"{median / reference[batch][0]:.2f}x transformers (runs "
            f"{', '.join(f'{r:.1f}' for r in rates)}); {args.short} tokens in {short_s:.2f} s "
            f"({short_s / reference[batch][2]:.2f}x transformers' time); compiled in "
            f"{compile_s:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
  main()

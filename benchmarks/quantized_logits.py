"""How far bfloat16 and int8 weights move a trained model's logits from float32's, and the
greedy text each gives.

On --windows windows of --text (a UTF-8 file) of the run's block size, each sampling form
(`LoadedRun.for_sampling`) against float32: the largest logit difference as a fraction of
the largest float32 logit magnitude, the mean KL divergence of float32's next-token
distribution to its, how often their most likely tokens agree, and the mean loss on the
text; then --new_tokens greedy tokens from --prompt in each form.

  PYTHONPATH=. python benchmarks/quantized_logits.py --workdir=runs/default --text=FILE
"""

import argparse

import numpy as np


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained run")
  p.add_argument("--text", required=True, help="held-out text to score, UTF-8")
  p.add_argument("--windows", type=int, default=16)
  p.add_argument("--prompt", default="ROMEO:")
  p.add_argument("--new_tokens", type=int, default=200)
  return p.parse_args()


def log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def main():
  args = parse_args()
  from jaxgpt import generate, run_loader, runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_cpu_devices()
  run = run_loader.load_run(args.workdir)
  with open(args.text, encoding="utf-8") as f:
    ids = np.asarray(run.tokenizer.encode(f.read()), np.int32)
  t = run.model.config.block_size
  starts = np.linspace(0, len(ids) - t - 1, args.windows).astype(int)
  x = np.stack([ids[s:s + t] for s in starts])
  y = np.stack([ids[s + 1:s + t + 1] for s in starts])
  forms = {"float32": run, "bfloat16": run.for_sampling("bfloat16"),
           "int8": run.for_sampling("float32", "int8")}
  logp = {name: log_softmax(form.logits(x).astype(np.float64)) for name, form in forms.items()}
  reference = forms["float32"].logits(x)
  print(f"{args.workdir} (step {run.step}), {args.windows} windows of {t} tokens of "
        f"{args.text}")
  for name, form in forms.items():
    logits = form.logits(x)
    gap = np.abs(logits - reference).max() / np.abs(reference).max()
    kl = (np.exp(logp["float32"]) * (logp["float32"] - logp[name])).sum(-1).mean()
    agree = (logits.argmax(-1) == reference.argmax(-1)).mean()
    loss = -np.take_along_axis(logp[name], y[..., None], -1).mean()
    print(f"{name:8s}: largest logit difference {gap:.4f} of the largest logit, KL "
          f"{kl:.2e} nats, top-1 agreement {agree:.4f}, loss {loss:.4f}")
  greedy = generate.Sampling(temperature=0.0)
  for name, form in forms.items():
    pieces = generate.generate_text(form.model, form.params, form.tokenizer, args.prompt,
                                    args.new_tokens, greedy)
    text = args.prompt + "".join(p[0] for p in pieces)
    print(f"--- {name} greedy:\n{text}")


if __name__ == "__main__":
  main()

"""Today's recipe (modded-nanogpt's lineage, issue 17) as keys that configs apply to their own
model and schedule: rotary positions, RMSNorm, QK-norm, ReLU² MLPs, an untied head,
zero-initialised projections into the residual stream, and Muon for the hidden matrices.
Not a config itself (no get_config): configs/default.py, speedrun_shakespeare.py and
speedrun_fineweb.py use it. BENCHMARKS.md's ablation shows what each key is worth on CPU.
"""

MODEL = {"position": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2",
         "tie_embeddings": False, "zero_init_proj": True}
# Muon's learning rate for the 4-layer, 128-wide CPU model (val loss after 1,500 steps on the
# plays: 1.519 at 0.01, 1.524 at 0.02, 1.534 at 0.04); AdamW (embeddings, head, norms) keeps
# the configs' learning rate (4e-3 there: 1.529 at 8e-3).
TRAIN = {"optimizer": "muon", "muon_learning_rate": 0.01, "muon_momentum": 0.95,
         "muon_weight_decay": 0.0}
ACCELERATOR = {"model": MODEL, "train": {**TRAIN, "muon_learning_rate": 0.02}}
CPU = {"model": MODEL, "train": TRAIN}


def apply(config, recipe):
  """`config` with the recipe's model and train keys (CPU or ACCELERATOR)."""
  config.model.update(recipe["model"])
  config.train.update(recipe["train"])
  return config

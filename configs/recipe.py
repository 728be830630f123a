"""Today's recipe (modded-nanogpt's lineage) as keys that configs apply to their own
model and schedule: rotary positions, RMSNorm, QK-norm, ReLU² MLPs, an untied head,
zero-initialised projections into the residual stream, and Muon for the hidden matrices.
Not a config itself (no get_config): configs/default.py, speedrun_shakespeare.py and
speedrun_fineweb.py use it. BENCHMARKS.md's ablation shows what each key is worth on CPU.
"""

MODEL = {"position": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2",
         "tie_embeddings": False, "zero_init_proj": True}
TRAIN = {"optimizer": "muon", "muon_learning_rate": 0.02, "muon_momentum": 0.95,
         "muon_weight_decay": 0.0}
ACCELERATOR = {"model": MODEL, "train": TRAIN}
# Muon's learning rate for the CPU default's small models (val loss of 3 layers, 64 wide,
# block 128, batch 16 after 1,580 steps: 1.485 at 0.007, 1.495 at 0.01, 1.501 at 0.015; 4
# layers of 128 preferred 0.01 to 0.02 and 0.04); AdamW keeps the config's learning rate.
CPU = {"model": MODEL, "train": {**TRAIN, "muon_learning_rate": 0.007}}


def apply(config, recipe):
  """`config` with the recipe's model and train keys (CPU or ACCELERATOR)."""
  config.model.update(recipe["model"])
  config.train.update(recipe["train"])
  return config

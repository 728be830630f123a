"""Hugging Face Llama-family folders: Llama (and SmolLM2, which is one), Mistral, Qwen2 and
Qwen3. The model options their config.json means, how jaxgpt/pretrained.py makes each
parameter from their tensors, and a run written back as one that transformers loads
(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, or AutoModelForCausalLM) with
jaxgpt's logits.

torch's Linear weights are (out, in), the transpose of a Dense kernel with its input and output
axes each flattened. jaxgpt's rotary embeddings turn the feature pairs (i, i + K/2) of each
head, as transformers' `rotate_half` does, so q and k need no permutation. c_attn's kernel is
(D, G + 2, J, K) (jaxgpt/attention.py): query head h = j G + g is [:, g, j], key/value head j
is [:, G, j] and [:, G + 1, j]. Shape suffixes as in jaxgpt/model.py.
"""

import json

import numpy as np

from jaxgpt import hf_export, pretrained
from jaxgpt.errors import UserError
from jaxgpt.model import LLAMA3_ROPE_KEYS, GPTConfig, unrolled_name

# config.json's model_type: the architecture's name in messages.
MODEL_TYPES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
NAME = "Llama"
_DEFAULT_ROPE_BASE = 10000.0


def model_options(hf: dict, path: str) -> tuple[dict, int]:
  """The model options of a Llama-family config.json and its context length. Whatever
  jaxgpt would only approximate (another activation, rope scaling or bias layout, partial
  rotary embeddings) is refused with a line naming it."""
  model_type = hf.get("model_type")
  _refuse_unsupported(hf, path)
  n_head, width = _positive(hf, "num_attention_heads", path), _positive(hf, "hidden_size", path)
  kv_heads = int(hf.get("num_key_value_heads") or n_head)
  head_dim = int(hf.get("head_dim") or width // n_head)
  bias, qkv_bias = _biases(hf, path)
  options = {
      "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": model_type == "qwen3",
      "bias": bias, "qkv_bias": qkv_bias,
      "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
      "n_layer": _positive(hf, "num_hidden_layers", path), "n_head": n_head,
      "n_kv_head": 0 if kv_heads == n_head else kv_heads, "n_embd": width,
      "head_dim": 0 if head_dim * n_head == width else head_dim,
      "mlp_width": _positive(hf, "intermediate_size", path),
      "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
      "rope_base": float(_rope(hf).get("rope_theta", hf.get("rope_theta", _DEFAULT_ROPE_BASE))),
      "rope_scaling": _rope_scaling(hf, path),
  }
  context = _positive(hf, "max_position_embeddings", path)
  sliding = (hf.get("use_sliding_window", model_type == "mistral")
             or "sliding_attention" in (hf.get("layer_types") or []))
  window = hf.get("sliding_window") if sliding else None
  # Within its window a sliding-window model attends as a full one: the context stops there.
  return options, min(context, int(window)) if window else context


def _positive(hf: dict, key: str, path: str) -> int:
  value = hf.get(key)
  if not isinstance(value, int) or value <= 0:
    raise UserError(f"{path} has no positive integer {key} (it has {value!r}): pass a "
                    "complete Hugging Face config.json")
  return value


def _refuse_unsupported(hf: dict, path: str) -> None:
  checks = {
      "hidden_act": hf.get("hidden_act", "silu") != "silu",
      "partial_rotary_factor": hf.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0),
      "num_experts": bool(hf.get("num_experts") or hf.get("num_local_experts")),
  }
  for key, unsupported in checks.items():
    if unsupported:
      raise UserError(f"{path} sets {key}={hf.get(key)!r}, which jaxgpt does not implement: "
                      f"jaxgpt loads {', '.join(MODEL_TYPES.values())} models without it")


def _biases(hf: dict, path: str) -> tuple[bool, bool]:
  """(model.bias, model.qkv_bias): biases everywhere (Llama's attention_bias with mlp_bias),
  or on q, k and v only (Qwen2's)."""
  model_type = hf.get("model_type")
  if model_type == "qwen2":
    return False, True
  attention, mlp = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
  if attention != mlp or (model_type == "qwen3" and attention):
    raise UserError(f"{path} sets attention_bias={attention} and mlp_bias={mlp}: jaxgpt has "
                    "biases on every linear layer (model.bias) or on q, k and v only "
                    "(model.qkv_bias), not this combination")
  return attention, False


def _rope(hf: dict) -> dict:
  """transformers 5's rope_parameters (theta and scaling together), or {}."""
  rope = hf.get("rope_parameters")
  return rope if isinstance(rope, dict) else {}


def _rope_scaling(hf: dict, path: str) -> str:
  """model.rope_scaling: "" for none, Llama 3's as JSON; any other kind is refused."""
  scaling = hf.get("rope_scaling") or _rope(hf)
  kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
  if kind == "default":
    return ""
  if kind != "llama3" or not all(k in scaling for k in LLAMA3_ROPE_KEYS):
    raise UserError(f"{path} sets rope scaling of type {kind!r}, which jaxgpt does not "
                    "implement (only Llama 3's, with "
                    f"{', '.join(LLAMA3_ROPE_KEYS)}): use a model without it")
  return json.dumps({"rope_type": "llama3", **{k: scaling[k] for k in LLAMA3_ROPE_KEYS}})


def _linear(kernel, num_in: int = 1):
  """A Dense kernel (its `num_in` input axes, then its output axes) as a torch Linear weight,
  (out, in)."""
  return kernel.reshape(int(np.prod(kernel.shape[:num_in])), -1).T


def _grouped_q(q_DxHxK, c: GPTConfig):
  """Query heads h = j G + g, (..., H, K) -> (..., G, J, K), c_attn's order."""
  lead = q_DxHxK.shape[:-2]
  q = q_DxHxK.reshape(*lead, c.kv_heads, c.group_size, c.head_size)
  return np.moveaxis(q, -2, -3)


def _qkv(q, k, v, c: GPTConfig):
  """c_attn's (..., G + 2, J, K) from q (..., H*K), k and v (..., J*K)."""
  lead = q.shape[:-1]
  k, v = (x.reshape(*lead, 1, c.kv_heads, c.head_size) for x in (k, v))
  q = _grouped_q(q.reshape(*lead, c.n_head, c.head_size), c)
  return np.concatenate([q, k, v], axis=-3)


def _split_qkv(qkv, c: GPTConfig):
  """(q (..., H*K), k, v (..., J*K)) from c_attn's (..., G + 2, J, K)."""
  g, lead = c.group_size, qkv.shape[:-3]
  q = np.moveaxis(qkv[..., :g, :, :], -3, -2)  # (..., J, G, K): head j G + g
  return (q.reshape(*lead, -1), qkv[..., g, :, :].reshape(*lead, -1),
          qkv[..., g + 1, :, :].reshape(*lead, -1))


def import_rules(c: GPTConfig) -> list:
  """How each jaxgpt parameter is made from a Llama-family folder's tensors."""
  rule = pretrained.Rule
  pad_rows = pretrained.padded_vocab(c)
  rules = [rule(("wte",), ("model.embed_tokens.weight",), pad_rows),
           rule(("ln_f", "scale"), ("model.norm.weight",), lambda w: w)]
  if not c.tie_embeddings:
    rules.append(rule(("lm_head",), ("lm_head.weight",), lambda w: pad_rows(w).T))
  for i in range(c.n_layer):
    hf, ours = f"model.layers.{i}", (unrolled_name(i),)
    attn, mlp = f"{hf}.self_attn", f"{hf}.mlp"
    rules += [
        rule(ours + ("ln_1", "scale"), (f"{hf}.input_layernorm.weight",), lambda w: w),
        rule(ours + ("ln_2", "scale"), (f"{hf}.post_attention_layernorm.weight",), lambda w: w),
        rule(ours + ("attn", "c_attn", "kernel"),
             tuple(f"{attn}.{n}_proj.weight" for n in "qkv"),
             lambda q, k, v: _qkv(q.T, k.T, v.T, c)),
        rule(ours + ("attn", "c_attn", "bias"), tuple(f"{attn}.{n}_proj.bias" for n in "qkv"),
             lambda q, k, v: _qkv(q, k, v, c)),
        rule(ours + ("attn", "c_proj", "kernel"), (f"{attn}.o_proj.weight",), lambda w: w.T),
        rule(ours + ("attn", "c_proj", "bias"), (f"{attn}.o_proj.bias",), lambda b: b),
        rule(ours + ("attn", "q_norm", "scale"), (f"{attn}.q_norm.weight",), lambda w: w),
        rule(ours + ("attn", "k_norm", "scale"), (f"{attn}.k_norm.weight",), lambda w: w),
        rule(ours + ("mlp", "c_fc", "kernel"), (f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"),
             lambda gate, up: np.stack([gate.T, up.T], axis=1)),
        rule(ours + ("mlp", "c_fc", "bias"), (f"{mlp}.gate_proj.bias", f"{mlp}.up_proj.bias"),
             lambda gate, up: np.stack([gate, up])),
        rule(ours + ("mlp", "c_proj", "kernel"), (f"{mlp}.down_proj.weight",), lambda w: w.T),
        rule(ours + ("mlp", "c_proj", "bias"), (f"{mlp}.down_proj.bias",), lambda b: b),
    ]
  return rules


def _block_tensors(block: dict, prefix: str, c: GPTConfig) -> dict:
  """One block's tensors under their Hugging Face names; its biases if it has them."""
  attn, mlp = block["attn"], block["mlp"]
  kernel_Dx2xF = mlp["c_fc"]["kernel"]
  tensors = {
      "input_layernorm.weight": block["ln_1"]["scale"],
      "post_attention_layernorm.weight": block["ln_2"]["scale"],
      "self_attn.o_proj.weight": _linear(attn["c_proj"]["kernel"], num_in=2),
      "mlp.down_proj.weight": _linear(mlp["c_proj"]["kernel"]),
  }
  q, k, v = _split_qkv(attn["c_attn"]["kernel"], c)
  tensors.update({f"self_attn.{n}_proj.weight": w.T for n, w in zip("qkv", (q, k, v))})
  for i, name in enumerate(("gate", "up")):  # silu(gate) * up
    tensors[f"mlp.{name}_proj.weight"] = _linear(kernel_Dx2xF[:, i])
  if "bias" in attn["c_attn"]:  # model.bias or model.qkv_bias
    q, k, v = _split_qkv(attn["c_attn"]["bias"], c)
    tensors.update({f"self_attn.{n}_proj.bias": b for n, b in zip("qkv", (q, k, v))})
  if "bias" in attn["c_proj"]:  # model.bias: Llama's attention_bias and mlp_bias
    bias_2xF = mlp["c_fc"]["bias"]
    tensors.update({"mlp.gate_proj.bias": bias_2xF[0], "mlp.up_proj.bias": bias_2xF[1],
                    "self_attn.o_proj.bias": attn["c_proj"]["bias"],
                    "mlp.down_proj.bias": mlp["c_proj"]["bias"]})
  if "q_norm" in attn:  # model.qk_norm: Qwen3's RMSNorm of q and k per head, before RoPE
    tensors.update({"self_attn.q_norm.weight": attn["q_norm"]["scale"],
                    "self_attn.k_norm.weight": attn["k_norm"]["scale"]})
  return {f"{prefix}.{name}": value for name, value in tensors.items()}


def _tensors(params: dict, c: GPTConfig) -> dict:
  tensors = {"model.embed_tokens.weight": params["wte"],
             "model.norm.weight": params["ln_f"]["scale"]}
  if not c.tie_embeddings:
    tensors["lm_head.weight"] = params["lm_head"].T
  for i in range(c.n_layer):
    tensors.update(_block_tensors(params[unrolled_name(i)], f"model.layers.{i}", c))
  return tensors


def _hf_config(c: GPTConfig, architecture: str, base: dict | None) -> dict:
  """config.json: the pretrained model's own (`base`, which a fine-tuning run keeps) with
  the fields the model options decide; a model trained from scratch gets them alone."""
  rope = {"rope_type": "default", "rope_theta": c.rope_base}
  if c.llama3_rope_scaling:
    rope = {**c.llama3_rope_scaling, "rope_theta": c.rope_base}
  hf_config = dict(base or {})
  hf_config.update({
      "hidden_size": c.n_embd, "intermediate_size": c.mlp_features,
      "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
      "num_key_value_heads": c.kv_heads, "head_dim": c.head_size,
      "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
      # transformers 5 reads rope_parameters, earlier versions rope_theta and rope_scaling
      "rope_parameters": rope, "rope_theta": c.rope_base, "rope_scaling": c.llama3_rope_scaling,
  })
  hf_config.setdefault("max_position_embeddings", c.block_size)
  if architecture == "Llama":
    hf_config.update(attention_bias=c.bias, mlp_bias=c.bias)
  elif architecture == "Qwen3":
    hf_config["attention_bias"] = False
  if architecture in ("Qwen2", "Qwen3"):  # every layer attends to the whole context
    hf_config.update(use_sliding_window=False, sliding_window=None,
                     layer_types=["full_attention"] * c.n_layer)
  return hf_config


def export(params, model_config: GPTConfig, tokenizer, folder: str,
           base_config: dict | None = None) -> None:
  """Writes a Hugging Face Llama, Qwen2 (with model.qkv_bias) or Qwen3 (with model.qk_norm)
  folder that `transformers` loads, in float32; `base_config` is the config.json of the
  pretrained model the run started from. LoRA adapters must already be merged
  (jaxgpt.lora.merge)."""
  architecture, params = hf_export.exported_params(params, model_config,
                                                   ("Llama", "Qwen2", "Qwen3"))
  tensors = _tensors(params, model_config)
  hf_export.write_folder(folder, architecture, tensors,
                         _hf_config(model_config, architecture, base_config), tokenizer,
                         model_config)

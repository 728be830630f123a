"""A run with Llama's architecture (rotary positions, RMSNorm, a SwiGLU MLP) written as a
Hugging Face Llama folder, or with QK-norm as a Qwen3 one, that `transformers` loads
(LlamaForCausalLM, Qwen3ForCausalLM, or AutoModelForCausalLM) and that gives jaxgpt's logits.

torch's Linear weights are (out, in), the transpose of a Dense kernel with its input and output
axes each flattened. jaxgpt's rotary embeddings turn the feature pairs (i, i + K/2) of each
head, as transformers' `rotate_half` does, so q and k need no permutation. Shape suffixes as in
jaxgpt/model.py.
"""

import numpy as np

from jaxgpt import hf_export
from jaxgpt.model import GPTConfig, unrolled_name


def _linear(kernel, num_in: int = 1):
  """A Dense kernel (its `num_in` input axes, then its output axes) as a torch Linear weight,
  (out, in)."""
  return kernel.reshape(int(np.prod(kernel.shape[:num_in])), -1).T


def _block_tensors(block: dict, prefix: str) -> dict:
  """One block's tensors under its Hugging Face names; its biases if it has them."""
  attn, mlp = block["attn"], block["mlp"]
  kernel_Dx3xHxK, kernel_Dx2xF = attn["c_attn"]["kernel"], mlp["c_fc"]["kernel"]
  tensors = {
      "input_layernorm.weight": block["ln_1"]["scale"],
      "post_attention_layernorm.weight": block["ln_2"]["scale"],
      "self_attn.o_proj.weight": _linear(attn["c_proj"]["kernel"], num_in=2),
      "mlp.down_proj.weight": _linear(mlp["c_proj"]["kernel"]),
  }
  for i, name in enumerate(("q", "k", "v")):
    tensors[f"self_attn.{name}_proj.weight"] = _linear(kernel_Dx3xHxK[:, i])
  for i, name in enumerate(("gate", "up")):  # silu(gate) * up
    tensors[f"mlp.{name}_proj.weight"] = _linear(kernel_Dx2xF[:, i])
  if "bias" in attn["c_attn"]:  # model.bias: Llama's attention_bias and mlp_bias
    bias_3xHxK, bias_2xF = attn["c_attn"]["bias"], mlp["c_fc"]["bias"]
    tensors.update({f"self_attn.{name}_proj.bias": bias_3xHxK[i].reshape(-1)
                    for i, name in enumerate(("q", "k", "v"))})
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
    tensors.update(_block_tensors(params[unrolled_name(i)], f"model.layers.{i}"))
  return tensors


def _hf_config(c: GPTConfig, architecture: str) -> dict:
  hf_config = {
      "hidden_size": c.n_embd, "intermediate_size": c.mlp_features,
      "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
      "num_key_value_heads": c.n_head, "head_dim": c.head_size,
      "max_position_embeddings": c.block_size, "hidden_act": "silu",
      "rms_norm_eps": c.norm_eps, "attention_bias": c.bias,
      # transformers 5 reads rope_parameters, earlier versions rope_theta
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_base},
      "rope_theta": c.rope_base,
  }
  if architecture == "Llama":
    hf_config["mlp_bias"] = c.bias
  else:  # Qwen3: every layer attends to the whole context
    hf_config.update(use_sliding_window=False, sliding_window=None,
                     layer_types=["full_attention"] * c.n_layer)
  return hf_config


def export(params, model_config: GPTConfig, tokenizer, folder: str) -> None:
  """Writes a Hugging Face Llama (or, with model.qk_norm, Qwen3) folder that `transformers`
  loads, in float32. LoRA adapters must already be merged (jaxgpt.lora.merge)."""
  architecture, params = hf_export.exported_params(params, model_config, ("Llama", "Qwen3"))
  tensors = _tensors(params, model_config)
  hf_export.write_folder(folder, architecture, tensors, _hf_config(model_config, architecture),
                         tokenizer, model_config)

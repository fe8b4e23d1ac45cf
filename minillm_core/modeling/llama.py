"""Adapter for the LLaMA family (Llama 2/3, Mistral, Qwen2, SmolLM): RMSNorm, SwiGLU MLP, GQA attention.

Heads own q rows and o columns; KV heads own k/v rows; channels own gate/up rows and a down column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minillm_core.modeling.base import ADAPTERS, ArchAdapter, LayerPlanIndices, LayerShape, Slice


@ADAPTERS.register("llama", "mistral", "qwen2")
class LlamaAdapter(ArchAdapter):
    gguf_arch = "llama"

    def layers(self) -> Sequence[nn.Module]:
        return self.model.model.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    def original_shape(self) -> LayerShape:
        c = self.config
        return LayerShape(c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads, c.intermediate_size)

    def attention_slices(self, layer: nn.Module) -> list[Slice]:
        attn, hd = layer.self_attn, self.head_dim
        return [
            Slice(attn, "q_proj", 0, "q", hd),
            Slice(attn, "k_proj", 0, "kv", hd),
            Slice(attn, "v_proj", 0, "kv", hd),
            Slice(attn, "o_proj", 1, "q", hd),
        ]

    def mlp_slices(self, layer: nn.Module) -> list[Slice]:
        mlp = layer.mlp
        return [
            Slice(mlp, "gate_proj", 0, "channel", 1),
            Slice(mlp, "up_proj", 0, "channel", 1),
            Slice(mlp, "down_proj", 1, "channel", 1),
        ]

    def sync_layer(self, layer: nn.Module, kept: LayerPlanIndices, shape: LayerShape) -> None:
        attn = layer.self_attn
        # repeat_kv() and the SDPA/eager kernels read the GQA ratio from the module, not the config.
        attn.num_key_value_groups = shape.n_rep
        attn.head_dim = self.head_dim
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = shape.intermediate

    def config_fields(self, shape: LayerShape) -> dict[str, int]:
        return {
            "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads,
            # head_dim must be explicit once heads are removed, or hidden_size // num_heads would change it.
            "head_dim": self.head_dim,
            "intermediate_size": shape.intermediate,
        }

    def gguf_model_tensors(self) -> dict[str, torch.Tensor]:
        m = self.model
        out = {"token_embd.weight": m.model.embed_tokens.weight, "output_norm.weight": m.model.norm.weight}
        if m.lm_head.weight is not m.model.embed_tokens.weight:  # tied: llama.cpp reuses token_embd as output
            out["output.weight"] = m.lm_head.weight
        return out

    def gguf_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        attn, mlp = layer.self_attn, layer.mlp
        out = {"attn_norm.weight": layer.input_layernorm.weight,
               "ffn_norm.weight": layer.post_attention_layernorm.weight}
        for name, lin in (("attn_q", attn.q_proj), ("attn_k", attn.k_proj), ("attn_v", attn.v_proj),
                          ("attn_output", attn.o_proj), ("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj),
                          ("ffn_down", mlp.down_proj)):
            out[f"{name}.weight"] = lin.weight
            if lin.bias is not None:  # Qwen2's q/k/v biases
                out[f"{name}.bias"] = lin.bias
        return out

"""Adapter for OPT: multi-head attention with biases, ReLU MLP (fc1/fc2) on the decoder layer itself.

OPT derives head_dim from hidden_size, so only MLP-only uniform plans stay loadable with plain `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from minillm_core.modeling.base import ADAPTERS, ArchAdapter, LayerPlanIndices, LayerShape, Slice


@ADAPTERS.register("opt")
class OptAdapter(ArchAdapter):
    tied_heads = True
    config_expresses = frozenset({"channels"})

    def layers(self) -> Sequence[nn.Module]:
        return self.model.model.decoder.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        return layer

    @property
    def head_dim(self) -> int:
        return self.config.hidden_size // self.config.num_attention_heads

    def original_shape(self) -> LayerShape:
        c = self.config
        return LayerShape(c.num_attention_heads, c.num_attention_heads, c.ffn_dim)

    def attention_slices(self, layer: nn.Module) -> list[Slice]:
        attn, hd = layer.self_attn, self.head_dim
        return [
            Slice(attn, "q_proj", 0, "q", hd),
            Slice(attn, "k_proj", 0, "q", hd),
            Slice(attn, "v_proj", 0, "q", hd),
            Slice(attn, "out_proj", 1, "q", hd),
        ]

    def mlp_slices(self, layer: nn.Module) -> list[Slice]:
        return [Slice(layer, "fc1", 0, "channel", 1), Slice(layer, "fc2", 1, "channel", 1)]

    def sync_layer(self, layer: nn.Module, kept: LayerPlanIndices, shape: LayerShape) -> None:
        # OPTAttention reshapes with self.num_heads; head_dim and scaling stay those of the original heads.
        layer.self_attn.num_heads = shape.num_heads

    def config_fields(self, shape: LayerShape) -> dict[str, int]:
        return {"ffn_dim": shape.intermediate}

"""Adapter for BLOOM: fused query_key_value laid out per head as [q|k|v], GELU MLP, ALiBi position bias.

BLOOM rebuilds ALiBi slopes from `n_head` for the whole model, so each pruned layer keeps its surviving heads' slopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from minillm_core.modeling.base import ADAPTERS, ArchAdapter, LayerPlanIndices, LayerShape, Slice


def _select_alibi_heads(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: keep the ALiBi rows of the heads this layer still has.

    The model builds alibi as [batch * n_head_original, 1, kv_len] (batch-major); slopes depend on the head's
    original index (Press et al., 2022), so a pruned layer must not get the slopes of a smaller model.
    """
    heads = module.minillm_alibi_heads
    alibi = kwargs["alibi"]
    total = module.minillm_alibi_total
    batch = alibi.shape[0] // total
    picked = alibi.view(batch, total, *alibi.shape[1:])[:, heads.to(alibi.device)]
    kwargs["alibi"] = picked.reshape(batch * len(heads), *alibi.shape[1:])
    return args, kwargs


@ADAPTERS.register("bloom")
class BloomAdapter(ArchAdapter):
    tied_heads = True
    config_expresses: frozenset[str] = frozenset()  # n_head also sets head_dim; the MLP is fixed at 4 * hidden

    def layers(self) -> Sequence[nn.Module]:
        return self.model.transformer.h

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attention

    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    @property
    def head_dim(self) -> int:
        return self.config.hidden_size // self.config.n_head

    def original_shape(self) -> LayerShape:
        c = self.config
        return LayerShape(c.n_head, c.n_head, 4 * c.hidden_size)  # BloomMLP hard-codes 4 * hidden_size

    def attention_slices(self, layer: nn.Module) -> list[Slice]:
        attn, hd = layer.self_attention, self.head_dim
        # query_key_value rows are viewed as [n_head, 3, head_dim]: head h owns 3*head_dim consecutive rows.
        return [Slice(attn, "query_key_value", 0, "q", 3 * hd), Slice(attn, "dense", 1, "q", hd)]

    def mlp_slices(self, layer: nn.Module) -> list[Slice]:
        mlp = layer.mlp
        return [Slice(mlp, "dense_h_to_4h", 0, "channel", 1), Slice(mlp, "dense_4h_to_h", 1, "channel", 1)]

    def alibi_heads(self, layer: nn.Module) -> torch.Tensor:
        """Original head index of each current head of `layer` (identity until heads are removed)."""
        attn = layer.self_attention
        current = getattr(attn, "minillm_alibi_heads", None)
        return current if current is not None else torch.arange(attn.num_heads)

    def sync_layer(self, layer: nn.Module, kept: LayerPlanIndices, shape: LayerShape) -> None:
        attn = layer.self_attention
        origin = self.alibi_heads(layer)[list(kept.heads)]
        attn.num_heads = shape.num_heads
        self.restore_state(layer, {"alibi_heads": origin.tolist()})

    def layer_state(self, layer: nn.Module) -> dict[str, Any]:
        return {"alibi_heads": self.alibi_heads(layer).tolist()}

    def restore_state(self, layer: nn.Module, state: dict[str, Any]) -> None:
        attn = layer.self_attention
        attn.minillm_alibi_heads = torch.tensor(state["alibi_heads"], dtype=torch.long)
        attn.minillm_alibi_total = self.config.n_head
        attn.num_heads = len(state["alibi_heads"])
        if getattr(attn, "minillm_alibi_hook", None) is None:
            attn.minillm_alibi_hook = attn.register_forward_pre_hook(_select_alibi_heads, with_kwargs=True)

    def config_fields(self, shape: LayerShape) -> dict[str, int]:
        return {}

"""Per-weight importance terms several criteria share, and their sum over each head and channel of a layer.

Wanda's |W| x ||X|| is Wanda-sp's criterion (wanda.py) and the prior of FMS's gate scores (fms.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minillm_core.groups import head_scores, reduce_to_units
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.scoring.engine.forward import Stats, slice_site

PerWeight = Callable[[int, str, Slice], tuple[torch.Tensor, torch.Tensor | None]]


def layer_group_scores(adapter: ArchAdapter, i: int, per_weight: PerWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum a per-weight term over every head and channel of layer i: (heads [num_heads], channels [inter]).

    per_weight(layer index, family "attn"|"mlp", slice) -> (weight term [out, in], bias term [out] or None).
    """
    layer = adapter.layers()[i]
    units: dict[str, torch.Tensor] = {}
    for family, slices in (("attn", adapter.attention_slices(layer)), ("mlp", adapter.mlp_slices(layer))):
        for s in slices:
            w, b = per_weight(i, family, s)
            u = reduce_to_units(s, w.float(), None if b is None else b.float())
            units[s.unit] = units[s.unit] + u if s.unit in units else u
    return head_scores(units, adapter.layer_shape(i)).cpu(), units["channel"].cpu()


def group_scores(adapter: ArchAdapter, per_weight: PerWeight) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`layer_group_scores` of every layer: (heads [num_heads] per layer, channels [inter] per layer)."""
    pairs = [layer_group_scores(adapter, i, per_weight) for i in range(len(adapter.layers()))]
    return [h for h, _ in pairs], [c for _, c in pairs]


def wanda_weight_term(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2. weight: [out, in]; col_norm: [in] (L2 norm of input column j over tokens)."""
    return weight.abs().float() * col_norm[None, :]


def wanda_bias_term(bias: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """A bias reads a constant input 1 on every token, whose norm over tokens is sqrt(n_tokens). bias: [out]."""
    return bias.abs().float() * n_tokens**0.5


def wanda_per_weight(stats: Stats) -> PerWeight:
    """The per-weight term of `group_scores` for Wanda-sp, from recorded column norms."""

    def per_weight(i: int, family: str, s: Slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        col = stats[(i, slice_site(family, s))]
        lin = s.linear
        w = wanda_weight_term(lin.weight.detach(), col.norm.to(lin.weight.device))
        b = wanda_bias_term(lin.bias.detach(), col.count) if (s.dim == 0 and lin.bias is not None) else None
        return w, b

    return per_weight

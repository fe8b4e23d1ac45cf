"""Physical pruning: replace sliced linears with new, smaller `nn.Linear`s and sync shapes and config in one place.

Indices come from a `PruningPlan`; `zero_mask` is the reference a physically pruned model must match exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from minillm_core.modeling.base import ArchAdapter, LayerPlanIndices, LayerShape, Slice


def unit_index(units: Sequence[int], width: int, device: torch.device | None = None) -> torch.Tensor:
    """Weight rows/columns owned by `units` (each `width` wide), in order."""
    base = torch.as_tensor(list(units), dtype=torch.long, device=device)
    return (base[:, None] * width + torch.arange(width, device=device)).reshape(-1)


def _sliced_linear(s: Slice, units: Sequence[int]) -> nn.Linear:
    """A new nn.Linear holding only the kept rows (dim 0) or columns (dim 1) of `s.linear`."""
    old = s.linear
    w = old.weight
    idx = unit_index(units, s.width, w.device)
    weight = w.index_select(s.dim, idx)
    bias = old.bias
    if bias is not None and s.dim == 0:
        bias = bias.index_select(0, idx)
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight = nn.Parameter(weight.detach().clone(), requires_grad=w.requires_grad)
        if bias is not None:
            new.bias = nn.Parameter(bias.detach().clone(), requires_grad=old.bias.requires_grad)
    return new


def _kept_units(s: Slice, kept: LayerPlanIndices) -> Sequence[int]:
    return {"q": kept.heads, "kv": kept.kv_heads, "channel": kept.channels}[s.unit]


def prune_layer(adapter: ArchAdapter, index: int, kept: LayerPlanIndices) -> LayerShape:
    """Slice every linear of layer `index` to the kept heads/channels and sync the layer's attributes."""
    layer = adapter.layers()[index]
    for s in adapter.attention_slices(layer) + adapter.mlp_slices(layer):
        units = _kept_units(s, kept)
        if len(units) != s.n_units:
            setattr(s.parent, s.name, _sliced_linear(s, units))
    shape = LayerShape(len(kept.heads), len(kept.kv_heads), len(kept.channels))
    adapter.sync_layer(layer, kept, shape)
    return shape


def apply_indices(adapter: ArchAdapter, kept_per_layer: Sequence[LayerPlanIndices]) -> bool:
    """Prune every layer of `adapter.model` in place; return whether plain `from_pretrained` can rebuild it."""
    layers = adapter.layers()
    if len(kept_per_layer) != len(layers):
        raise ValueError(f"plan has {len(kept_per_layer)} layers, model has {len(layers)}")
    shapes = [prune_layer(adapter, i, kept) for i, kept in enumerate(kept_per_layer)]
    return adapter.sync_config(shapes)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy, so the caller's (possibly cached and shared) model is never pruned in place."""
    return copy.deepcopy(model)


@torch.no_grad()
def zero_mask(adapter: ArchAdapter, kept_per_layer: Sequence[LayerPlanIndices]) -> None:
    """Zero the output-side weights of every removed head and channel, in place (reference for equivalence).

    A removed head's o-columns and a removed channel's down-column are what carry it into the residual stream,
    so zeroing them makes the dense model compute exactly what the physically pruned one does.
    """
    for layer, kept in zip(adapter.layers(), kept_per_layer, strict=True):
        for s in adapter.attention_slices(layer) + adapter.mlp_slices(layer):
            if s.dim != 1:
                continue
            removed = sorted(set(range(s.n_units)) - set(_kept_units(s, kept)))
            if removed:
                s.linear.weight.index_fill_(1, unit_index(removed, s.width, s.linear.weight.device), 0.0)

"""Pruning groups: how per-weight quantities reduce to heads and channels, and the GQA rules.

A head owns its q rows and o columns (plus 1/n_rep of its KV head); a channel owns gate/up rows and a down column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from minillm_core.errors import PlanError
from minillm_core.modeling.base import LayerShape, Slice

HeadGranularity = Literal["q-heads", "kv-groups"]
HEAD_GRANULARITIES: tuple[str, ...] = ("q-heads", "kv-groups")


def reduce_to_units(s: Slice, weight_term: torch.Tensor, bias_term: torch.Tensor | None = None) -> torch.Tensor:
    """Sum an element-wise quantity over each unit of a slice.

    weight_term: [out, in] (same shape as the slice's weight); bias_term: [out] or None (rows only).
    Returns [n_units].
    """
    n, w = s.n_units, s.width
    if s.dim == 0:
        total = weight_term.reshape(n, w, -1).sum(dim=(1, 2))
        if bias_term is not None:
            total = total + bias_term.reshape(n, w).sum(dim=1)
        return total
    return weight_term.reshape(weight_term.shape[0], n, w).sum(dim=(0, 2))


def unit_scores(
    slices: Sequence[Slice], per_weight: Callable[[Slice], tuple[torch.Tensor, torch.Tensor | None]]
) -> dict[str, torch.Tensor]:
    """Sum `per_weight(slice)` over every slice, per unit kind ("q", "kv", "channel")."""
    out: dict[str, torch.Tensor] = {}
    for s in slices:
        weight_term, bias_term = per_weight(s)
        u = reduce_to_units(s, weight_term.float(), None if bias_term is None else bias_term.float())
        out[s.unit] = out[s.unit] + u if s.unit in out else u
    return out


def head_scores(units: dict[str, torch.Tensor], shape: LayerShape) -> torch.Tensor:
    """Per query-head score [num_heads]: its own q/o share plus an equal share of its KV head's k/v share."""
    q = units["q"]
    if "kv" not in units:
        return q
    return q + units["kv"].repeat_interleave(shape.n_rep) / shape.n_rep


def kv_group_of(head: int, shape: LayerShape) -> int:
    """The KV head a query head reads (transformers' repeat_kv layout: consecutive blocks of n_rep)."""
    return head // shape.n_rep


def heads_to_keep(
    scores: torch.Tensor, shape: LayerShape, n_remove: int, granularity: HeadGranularity
) -> tuple[list[int], list[int]]:
    """Kept (query heads, kv heads) after removing the lowest-scoring units of one layer.

    q-heads: remove `n_remove` query heads from *every* KV group (keeps heads % kv_heads == 0).
    kv-groups: remove `n_remove` whole KV groups, ranked by the sum of their query heads' scores.
    The last unit is never removed.
    """
    per_group = scores.reshape(shape.num_kv_heads, shape.n_rep)
    if granularity == "q-heads":
        if not 0 <= n_remove < shape.n_rep:
            raise PlanError(f"can remove 0..{shape.n_rep - 1} query heads per KV group, not {n_remove}")
        keep_in_group = torch.argsort(per_group, dim=1, descending=True, stable=True)[:, : shape.n_rep - n_remove]
        kept = sorted(int(g * shape.n_rep + j) for g in range(shape.num_kv_heads) for j in keep_in_group[g])
        return kept, list(range(shape.num_kv_heads))
    if granularity == "kv-groups":
        if not 0 <= n_remove < shape.num_kv_heads:
            raise PlanError(f"can remove 0..{shape.num_kv_heads - 1} KV groups, not {n_remove}")
        order = torch.argsort(per_group.sum(dim=1), descending=True, stable=True)
        groups = sorted(int(g) for g in order[: shape.num_kv_heads - n_remove])
        return [g * shape.n_rep + j for g in groups for j in range(shape.n_rep)], groups
    raise PlanError(f"unknown head granularity {granularity!r}; allowed: {', '.join(HEAD_GRANULARITIES)}")


def channels_to_keep(scores: torch.Tensor, keep: int) -> tuple[int, ...]:
    """The `keep` highest-scoring MLP channels, in index order."""
    top = torch.argsort(scores.float(), descending=True, stable=True)[:keep]
    return tuple(sorted(int(i) for i in top))


def validate_heads(heads: Sequence[int], kv_heads: Sequence[int], shape: LayerShape, tied: bool) -> LayerShape:
    """Check kept head indices obey the GQA rules; return the resulting layer shape (channels unchanged)."""
    if not heads or not kv_heads:
        raise PlanError("a layer must keep at least one attention head")
    if list(heads) != sorted(set(heads)) or list(kv_heads) != sorted(set(kv_heads)):
        raise PlanError("kept head indices must be sorted and unique")
    if heads[-1] >= shape.num_heads or kv_heads[-1] >= shape.num_kv_heads or heads[0] < 0 or kv_heads[0] < 0:
        raise PlanError(f"head index out of range (layer has {shape.num_heads} heads, {shape.num_kv_heads} KV heads)")
    if tied:
        if list(heads) != list(kv_heads):
            raise PlanError("this architecture has one K/V per head: kept heads and kv_heads must be equal")
        return LayerShape(len(heads), len(heads), shape.intermediate)
    per_group = {g: 0 for g in kv_heads}
    for h in heads:
        g = kv_group_of(h, shape)
        if g not in per_group:
            raise PlanError(f"query head {h} is kept but its KV head {g} is removed")
        per_group[g] += 1
    if len(set(per_group.values())) != 1:
        raise PlanError("every kept KV group must keep the same number of query heads (GQA)")
    return LayerShape(len(heads), len(kv_heads), shape.intermediate)

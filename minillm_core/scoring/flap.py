"""FLAP: the fluctuation metric (WIFV) on out-projection inputs, and FLAP's bias compensation for removed groups.

An et al., 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (AAAI), sections 3.1-3.3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.modeling import get_adapter
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import SCORERS, Engine, GroupScores, Need, Scorer
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE, Stats, collect_activations

if TYPE_CHECKING:  # planning imports scoring.base: a runtime import here would be circular
    from minillm_core.planning import PruningPlan

logger = logging.getLogger(__name__)


def wifv(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Weighted input feature variance per input column: Var_t(X_j) * ||W[:, j]||^2.

    weight: [out, in] of the out-projection; variance: [in]. Returns [in].
    """
    return variance.float() * weight.detach().float().pow(2).sum(dim=0)


def per_unit(column_scores: torch.Tensor, width: int) -> torch.Tensor:
    """Sum consecutive `width` columns into one score per unit: [in] -> [in // width]."""
    return column_scores.reshape(-1, width).sum(dim=1)


def standardize(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """FLAP's cross-layer standardisation of one structure type (zero mean, unit std over all layers)."""
    flat = torch.cat(scores)
    mean, std = flat.mean(), flat.std().clamp_min(1e-12)
    return [(s - mean) / std for s in scores]


def bias_compensation(weight: torch.Tensor, mean: torch.Tensor, removed_cols: torch.Tensor) -> torch.Tensor:
    """The bias that replaces removed input columns by their mean contribution: W[:, R] @ mean[R].

    weight: [out, in] (before pruning); mean: [in] mean activation over calibration tokens; removed_cols: [r] long.
    Returns [out], to add to the out-projection's bias.
    """
    idx = removed_cols.to(weight.device)
    return weight.detach().float().index_select(1, idx) @ mean.to(weight.device).float().index_select(0, idx)


def _out_slice(slices: list[Slice]) -> Slice:
    return next(s for s in slices if s.dim == 1)


@SCORERS.register("flap")
@dataclass
class FlapScorer(Scorer):
    """WIFV per head (sum over its o-proj columns) and per channel (its down-proj column)."""

    standardize: bool = False  # FLAP's cross-layer standardisation; only matters for global allocation
    batch_size: int = DEFAULT_BATCH_SIZE
    name = "flap"
    needs = frozenset({Need.ACTIVATIONS})
    engine = Engine.FORWARD
    description = "Fluctuation metric: Var(X_j) x ||W_out[:, j]||^2 summed per head/channel (An et al. 2024)."

    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        stats = collect_activations(model, adapter, calibration, sites=("attn_out", "mlp_out"), moments=("var",),
                                    batch_size=self.batch_size, progress=progress)
        heads, channels = [], []
        for i, layer in enumerate(adapter.layers()):
            for family, slices, out in (("attn", adapter.attention_slices(layer), heads),
                                        ("mlp", adapter.mlp_slices(layer), channels)):
                s = _out_slice(slices)
                col = wifv(s.linear.weight, stats[(i, f"{family}_out")].var.to(s.linear.weight.device))
                out.append(per_unit(col, s.width).cpu())
        if self.standardize:
            heads, channels = standardize(heads), standardize(channels)
        return GroupScores(self.name, heads, channels, self.options())


def _removed_columns(s: Slice, kept: tuple[int, ...]) -> torch.Tensor:
    removed = sorted(set(range(s.n_units)) - set(kept))
    base = torch.tensor(removed, dtype=torch.long)
    return (base[:, None] * s.width + torch.arange(s.width)).reshape(-1)


def compensate(
    model_before: nn.Module, pruned: nn.Module, plan: PruningPlan, calibration: torch.Tensor | None = None,
    stats: Stats | None = None, allow_new_bias: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """FLAP bias compensation: add W[:, removed] @ mean[removed] to each pruned out-projection's bias, in place.

    `model_before` is the unpruned model `plan` was built on; `pruned` is `apply_plan(model_before, plan)`.
    Means come from `stats` (sites attn_out/mlp_out with moment "mean") or one pass over `calibration`.
    Architectures whose out-projections have no bias (LLaMA family) need `allow_new_bias=True`: the new bias makes the
    forward exact but the config cannot describe it, so such a model cannot be saved and reloaded (default: refuse).
    Returns a summary: {"layers": n, "created_biases": n}.
    """
    before, after = get_adapter(model_before), get_adapter(pruned)
    if stats is None:
        if calibration is None:
            raise MiniLLMError("bias compensation needs calibration data or recorded mean activations")
        stats = collect_activations(model_before, before, calibration, sites=("attn_out", "mlp_out"),
                                    moments=("mean",), batch_size=batch_size, progress=progress)
    created = 0
    pairs = zip(before.layers(), after.layers(), plan.layers, strict=True)
    for i, (layer_b, layer_a, kept) in enumerate(pairs):
        for family, s, target, units in (
            ("attn", _out_slice(before.attention_slices(layer_b)), after.attention_out_proj(layer_a), kept.heads),
            ("mlp", _out_slice(before.mlp_slices(layer_b)), after.mlp_out_proj(layer_a), kept.channels),
        ):
            removed = _removed_columns(s, tuple(units))
            if removed.numel() == 0:
                continue
            mean = stats[(i, f"{family}_out")].mean
            if mean is None:
                raise MiniLLMError("bias compensation needs mean activations (record moment 'mean')")
            delta = bias_compensation(s.linear.weight, mean, removed).to(target.weight.dtype)
            if target.bias is None:
                if not allow_new_bias:
                    raise PlanError(f"{after.model_type} out-projections have no bias; pass "
                                    "allow_new_bias=True to add one (the model then cannot be saved and reloaded)")
                target.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=target.weight.requires_grad)
                created += 1
            with torch.no_grad():
                target.bias.add_(delta)
    if created:
        logger.warning("bias compensation added %d biases the config cannot describe; do not save this model", created)
    return {"layers": len(plan.layers), "created_biases": created}

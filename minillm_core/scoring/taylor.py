"""First-order Taylor importance with real backpropagation (LLM-Pruner): the math and its registered scorer.

Ma et al., 2023, "LLM-Pruner: On the Structural Pruning of Large Language Models", eq. 3-5 (element- and vector-wise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.groups import head_scores, reduce_to_units
from minillm_core.modeling.base import ArchAdapter
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import SCORERS, Engine, GroupScores, Need, Scorer, Workload
from minillm_core.scoring.engine.backprop import (
    accumulate_gradients,
    checkpointed_layers,
    gradients_only_for,
    slice_grads,
)
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE
from minillm_core.scoring.engine.hooks import linear_params, linears_of_layer, prunable_linears
from minillm_core.scoring.engine.layerwise import stream_layer_scores

TAYLOR_VARIANTS = ("element", "vector")


def taylor_element(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """|W * G| per weight (any shape): the first-order loss change of zeroing each weight."""
    return (weight.float() * grad.float()).abs()


def taylor_vector(signed_unit_sums: torch.Tensor) -> torch.Tensor:
    """|sum_{w in unit} W * G|: the first-order loss change of zeroing a whole unit. Input: [n_units] signed sums."""
    return signed_unit_sums.abs()


def taylor_layer_scores(adapter: ArchAdapter, i: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's (heads, channels) from the `.grad` now on its prunable linears. Element: sum |W*G|; vector: per
    slice |sum W*G|, summed over the slices of a group (LLM-Pruner's per-layer salience, aggregated by sum)."""
    layer = adapter.layers()[i]
    units: dict[str, torch.Tensor] = {}
    for s in adapter.attention_slices(layer) + adapter.mlp_slices(layer):
        g, gb = slice_grads(s)
        w, b = s.linear.weight.detach(), s.linear.bias
        prod = w.float() * g.float()
        bias = None if gb is None else b.detach().float() * gb.float()
        if variant == "element":
            u = reduce_to_units(s, prod.abs(), None if bias is None else bias.abs())
        else:
            u = taylor_vector(reduce_to_units(s, prod, bias))
        units[s.unit] = units[s.unit] + u if s.unit in units else u
    return head_scores(units, adapter.layer_shape(i)).cpu(), units["channel"].cpu()


def taylor_group_scores(adapter: ArchAdapter, variant: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`taylor_layer_scores` of every layer."""
    pairs = [taylor_layer_scores(adapter, i, variant) for i in range(len(adapter.layers()))]
    return [h for h, _ in pairs], [c for _, c in pairs]


@SCORERS.register("taylor")
@dataclass
class TaylorScorer(Scorer):
    """LLM-Pruner's first-order Taylor score with gradients of the calibration loss from real backprop."""

    variant: str = "element"
    batch_size: int = DEFAULT_BATCH_SIZE
    checkpoint: bool = False  # recompute decoder layers in backward: activation memory of one layer
    stream: bool = False  # exact gradients one layer at a time (engine/layerwise.py): no model-sized gradients
    name = "taylor"
    needs = frozenset({Need.BACKWARD})
    description = "First-order Taylor |W*G| (element) or |sum W*G| (vector) per group, real backprop (Ma et al. 2023)."

    def __post_init__(self) -> None:
        if self.variant not in TAYLOR_VARIANTS:
            raise MiniLLMError(f"unknown taylor variant {self.variant!r}; allowed: {', '.join(TAYLOR_VARIANTS)}")

    def workload(self) -> Workload:
        engine = Engine.LAYERWISE if self.stream else Engine.BACKPROP
        return Workload(engine, self.batch_size, recompute_layers=self.checkpoint)

    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        if calibration is None:
            raise MiniLLMError("the taylor scorer needs calibration data")
        if self.stream:
            heads, channels = stream_layer_scores(
                model, adapter, calibration, lambda i: linear_params(linears_of_layer(adapter, i)),
                lambda i, _stats: taylor_layer_scores(adapter, i, self.variant), sites=(),
                batch_size=self.batch_size, progress=progress)
            return GroupScores(self.name, heads, channels, self.options())
        params = linear_params(prunable_linears(adapter))
        with gradients_only_for(model, params), checkpointed_layers(adapter, self.checkpoint):
            accumulate_gradients(model, calibration, self.batch_size, progress, "taylor backward")
            heads, channels = taylor_group_scores(adapter, self.variant)
        return GroupScores(self.name, heads, channels, self.options())

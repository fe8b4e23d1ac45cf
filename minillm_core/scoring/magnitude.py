"""Data-free criteria: group weight magnitude (L1/L2) and a seeded random baseline.

Both need weights only, so they run instantly and give the planner something to rank before any calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.groups import head_scores, unit_scores
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import SCORERS, Engine, GroupScores, Need, Scorer


def _powered(p: int):
    def per_weight(s: Slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        lin = s.linear
        bias = lin.bias.detach().abs().float() ** p if (lin.bias is not None and s.dim == 0) else None
        return lin.weight.detach().abs().float() ** p, bias

    return per_weight


@SCORERS.register("magnitude")
@dataclass
class MagnitudeScorer(Scorer):
    """Group Lp norm of every weight a head or channel owns (p=1 or 2)."""

    p: int = 2
    name = "magnitude"
    needs = frozenset({Need.WEIGHTS})
    engine = Engine.WEIGHTS
    description = "L1/L2 norm of the weights each head/channel owns; needs no data."

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise MiniLLMError(f"magnitude p must be 1 or 2, not {self.p!r}")

    @torch.no_grad()
    def score(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        heads, channels = [], []
        layers = adapter.layers()
        for i, layer in enumerate(layers):
            shape = adapter.layer_shape(i)
            att = unit_scores(adapter.attention_slices(layer), _powered(self.p))
            mlp = unit_scores(adapter.mlp_slices(layer), _powered(self.p))
            heads.append(head_scores(att, shape).pow(1 / self.p).cpu())
            channels.append(mlp["channel"].pow(1 / self.p).cpu())
            progress(i + 1, len(layers), "magnitude")
        return GroupScores(self.name, heads, channels, self.options())


@SCORERS.register("random")
@dataclass
class RandomScorer(Scorer):
    """Uniform random scores from a seeded local generator: the floor every criterion must beat."""

    seed: int = 0
    name = "random"
    needs = frozenset({Need.WEIGHTS})
    engine = Engine.WEIGHTS
    description = "Seeded random ranking; the baseline every criterion must beat."

    def score(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        gen = torch.Generator().manual_seed(self.seed)
        shapes = adapter.layer_shapes()
        heads = [torch.rand(s.num_heads, generator=gen) for s in shapes]
        channels = [torch.rand(s.intermediate, generator=gen) for s in shapes]
        progress(len(shapes), len(shapes), "random")
        return GroupScores(self.name, heads, channels, self.options())

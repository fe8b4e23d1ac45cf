"""Wanda-sp: |weight| x input-activation norm, summed over each head and channel (structured Wanda).

Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"; structured as in An et al., 2024 (FLAP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.activations import (
    DEFAULT_BATCH_SIZE,
    Stats,
    collect_activations,
    group_scores,
    slice_site,
)
from minillm_core.scoring.base import SCORERS, GroupScores, Need, Scorer


def wanda_weight_term(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2. weight: [out, in]; col_norm: [in] (L2 norm of input column j over tokens)."""
    return weight.abs().float() * col_norm[None, :]


def wanda_bias_term(bias: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """A bias reads a constant input 1 on every token, whose norm over tokens is sqrt(n_tokens). bias: [out]."""
    return bias.abs().float() * n_tokens**0.5


def wanda_per_weight(stats: Stats):
    """The per-weight term of `group_scores` for Wanda-sp, from recorded column norms."""

    def per_weight(i: int, family: str, s: Slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        col = stats[(i, slice_site(family, s))]
        lin = s.linear
        w = wanda_weight_term(lin.weight.detach(), col.norm.to(lin.weight.device))
        b = wanda_bias_term(lin.bias.detach(), col.count) if (s.dim == 0 and lin.bias is not None) else None
        return w, b

    return per_weight


@SCORERS.register("wanda-sp")
@dataclass
class WandaSpScorer(Scorer):
    """Structured Wanda: heads via o-proj columns + q/k/v rows, channels via down columns + gate/up rows."""

    batch_size: int = DEFAULT_BATCH_SIZE
    name = "wanda-sp"
    needs = frozenset({Need.ACTIVATIONS})
    description = "|W| x input-activation norm per weight, summed per head/channel (Sun et al. 2023; An et al. 2024)."

    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        stats = collect_activations(model, adapter, calibration, batch_size=self.batch_size, progress=progress)
        heads, channels = group_scores(adapter, wanda_per_weight(stats))
        return GroupScores(self.name, heads, channels, self.options())

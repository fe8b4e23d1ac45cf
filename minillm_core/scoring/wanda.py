"""Wanda-sp: |weight| x input-activation norm, summed over each head and channel (structured Wanda).

Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"; structured as in An et al., 2024 (FLAP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minillm_core.modeling.base import ArchAdapter
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import SCORERS, Engine, GroupScores, Need, Scorer
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE, collect_activations
from minillm_core.scoring.terms import group_scores, wanda_per_weight


@SCORERS.register("wanda-sp")
@dataclass
class WandaSpScorer(Scorer):
    """Structured Wanda: heads via o-proj columns + q/k/v rows, channels via down columns + gate/up rows.

    The per-weight term |W_ij| * ||X_j|| (and a bias's |b_i| * sqrt(tokens)) is `terms.wanda_per_weight`, which FMS's
    gate scores also use as their prior.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    name = "wanda-sp"
    needs = frozenset({Need.ACTIVATIONS})
    engine = Engine.FORWARD
    description = "|W| x input-activation norm per weight, summed per head/channel (Sun et al. 2023; An et al. 2024)."

    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        stats = collect_activations(model, adapter, calibration, batch_size=self.batch_size, progress=progress)
        heads, channels = group_scores(adapter, wanda_per_weight(stats))
        return GroupScores(self.name, heads, channels, self.options())

"""Fidelity of an estimator's group scores against a reference (backprop Taylor or exact-gradient FMS).

Cosine similarity of all scores and per-layer Spearman rank correlation, and a sweep over probe counts for plots.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import GroupScores, make_scorer

logger = logging.getLogger(__name__)

DEFAULT_PROBES: tuple[int, ...] = (4, 16, 64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat score vectors (0 when either is all zeros)."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else 0.0


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors; NaN when undefined (fewer than 2 units or constant)."""
    if a.numel() < 2 or bool((a == a.flatten()[0]).all()) or bool((b == b.flatten()[0]).all()):
        return math.nan
    return float(spearmanr(a.double().flatten().numpy(), b.double().flatten().numpy()).statistic)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def fidelity(scores: GroupScores, reference: GroupScores) -> dict[str, Any]:
    """How well `scores` reproduce `reference`.

    cosine: over all head and channel scores concatenated; spearman_heads / spearman_channels: per layer (the ranking
    a uniform plan uses), with their means. Raises when the two do not describe the same model.
    """
    if [h.shape for h in scores.heads] != [h.shape for h in reference.heads] or \
            [c.shape for c in scores.channels] != [c.shape for c in reference.channels]:
        raise MiniLLMError("scores and reference describe different layer shapes")
    flat = lambda g: torch.cat([*g.heads, *g.channels])  # noqa: E731
    heads = [spearman(a, b) for a, b in zip(scores.heads, reference.heads, strict=True)]
    channels = [spearman(a, b) for a, b in zip(scores.channels, reference.channels, strict=True)]
    return {
        "cosine": cosine(flat(scores), flat(reference)),
        "spearman_heads": heads,
        "spearman_channels": channels,
        "mean_spearman_heads": _nanmean(heads),
        "mean_spearman_channels": _nanmean(channels),
    }


def probe_sweep(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, reference: GroupScores,
    scorer: str = "minillm", probes: Sequence[int] = DEFAULT_PROBES, progress: Progress = no_progress,
    **options: Any,
) -> list[dict[str, Any]]:
    """Score with `n_probes` in `probes` and compare each to `reference`; one flat dict per probe count.

    The rows (estimator options, n_probes, seconds, cosine, mean Spearman) go straight into `pandas.DataFrame`.
    """
    rows = []
    for k, n in enumerate(probes):
        s = make_scorer(scorer, **options, n_probes=n)
        start = time.perf_counter()
        got = s.score(model, adapter, calibration)
        seconds = time.perf_counter() - start
        f = fidelity(got, reference)
        rows.append({"scorer": scorer, **{k_: v for k_, v in s.options().items() if k_ != "n_probes"},
                     "n_probes": n, "seconds": seconds, "reference": reference.scorer,
                     "reference_options": dict(reference.options), "cosine": f["cosine"],
                     "mean_spearman_heads": f["mean_spearman_heads"],
                     "mean_spearman_channels": f["mean_spearman_channels"]})
        logger.info("fidelity %s n_probes=%d: cosine %.3f", scorer, n, f["cosine"])
        progress(k + 1, len(probes), "fidelity sweep")
    return rows

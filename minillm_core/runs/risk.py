"""What a pruning ratio is likely to cost, from measurements: a benchmark curve shipped for the bundled model and the
finished runs of the model at hand, as perplexity ratios (pruned / original) against the fraction removed.

`risk_curve` picks the evidence (the benchmark when one ships for the model, else the model's own runs),
`expected_ratio` interpolates it (log-linear between measured points, nothing outside them), `level` names the band.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minillm_core.runs.store import Run

#: Benchmark curves shipped with the package: `<model name>.json`, written by `bench/bench_quality.py --evidence`.
EVIDENCE_DIR = Path(__file__).resolve().parent.parent / "evidence"
#: Perplexity ratio (pruned / original) up to which a cut reads as mild, noticeable; above: severe.
LEVELS = ((1.5, "mild"), (3.0, "noticeable"), (math.inf, "severe"))


@dataclass(frozen=True)
class RiskPoint:
    """One measurement: `removed` fraction of all parameters, perplexity `ratio` pruned / original, from `source`."""

    removed: float
    ratio: float
    source: str


@dataclass(frozen=True)
class RiskCurve:
    """The points a band is drawn from, what they are (`about`: pipeline and protocol) and the metric."""

    points: tuple[RiskPoint, ...]
    about: str
    metric: str = "ppl/wikitext2"


def level(ratio: float) -> str:
    """"mild" (<= 1.5x the original's perplexity), "noticeable" (<= 3x) or "severe"."""
    return next(name for bound, name in LEVELS if ratio <= bound)


def benchmark_curve(model: str) -> RiskCurve | None:
    """The shipped benchmark curve of `model` (the bundled model has one), or None."""
    path = EVIDENCE_DIR / f"{model}.json"
    if "/" in model or "\\" in model or not path.is_file():  # a bundled name, not a folder that happens to match
        return None
    data = json.loads(path.read_text())
    points = tuple(RiskPoint(float(p["removed"]), float(p["ppl"]) / float(data["dense_ppl"]), "benchmark")
                   for p in data["points"])
    return RiskCurve(tuple(sorted(points, key=lambda p: p.removed)), data["about"], data.get("metric", "ppl/wikitext2"))


def run_points(runs: Sequence[Run], model: str, metric: str = "ppl/wikitext2") -> list[RiskPoint]:
    """Finished runs of `model` that measured `metric` on both models: (removed fraction, pruned / original)."""
    out = []
    for run in runs:
        original, pruned = run.metrics.get("original") or {}, run.metrics.get("pruned") or {}
        if (run.state != "done" or run.model != model or not original.get(metric) or pruned.get(metric) is None
                or not original.get("params") or not pruned.get("params")):
            continue
        out.append(RiskPoint(1 - pruned["params"] / original["params"], pruned[metric] / original[metric],
                             run.name or run.id))
    return sorted(out, key=lambda p: p.removed)


def risk_curve(model: str, runs: Sequence[Run]) -> RiskCurve | None:
    """The benchmark curve of `model` when one ships, else one from its finished runs (at least two removed
    fractions; runs at the same fraction averaged geometrically), else None."""
    shipped = benchmark_curve(model)
    if shipped is not None:
        return shipped
    by_fraction: dict[float, list[float]] = {}
    for p in run_points(runs, model):
        by_fraction.setdefault(round(p.removed, 3), []).append(p.ratio)
    if len(by_fraction) < 2:
        return None
    points = tuple(RiskPoint(f, math.exp(sum(map(math.log, r)) / len(r)), "runs")
                   for f, r in sorted(by_fraction.items()))
    return RiskCurve(points, f"from {sum(len(r) for r in by_fraction.values())} finished run(s) of this model")


def expected_ratio(curve: RiskCurve, removed: float) -> float | None:
    """The perplexity ratio expected at `removed`: log-linear between the measured points around it (ratio 1 at 0
    removed), None beyond the last measured point (no extrapolation)."""
    for (x0, y0), (x1, y1) in _segments(curve):
        if x0 <= removed <= x1:
            t = 0.0 if x1 == x0 else (removed - x0) / (x1 - x0)
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None


def describe(curve: RiskCurve, removed: float) -> str:
    """One sentence for the ratio slider: what `removed` is expected to cost, and where the bands begin."""
    expected = expected_ratio(curve, removed)
    starts = [(above, _crossing(curve, bound)) for (bound, _), (_, above) in itertools.pairwise(LEVELS)]
    bands = ", ".join(f"{name} from ~{start:.0%}" for name, start in starts if start is not None)
    if expected is None:
        head = f"{removed:.0%} removed is beyond the measured range (up to {curve.points[-1].removed:.0%})"
    else:
        head = f"At {removed:.0%} removed, expect perplexity about x{expected:.1f} the original's ({level(expected)})"
    return f"{head}; {bands or 'no band change measured'} ({curve.about})."


def _segments(curve: RiskCurve) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Successive measured (removed, ratio) pairs, starting from the original (0 removed, ratio 1)."""
    return list(itertools.pairwise([(0.0, 1.0)] + [(p.removed, p.ratio) for p in curve.points]))


def _crossing(curve: RiskCurve, bound: float) -> float | None:
    """The removed fraction where the interpolated ratio first reaches `bound`, or None."""
    for (x0, y0), (x1, y1) in _segments(curve):
        if y0 <= bound <= y1 and y1 > y0:
            return x0 + (x1 - x0) * (math.log(bound) - math.log(y0)) / (math.log(y1) - math.log(y0))
    return None


def to_dict(curve: RiskCurve) -> dict[str, Any]:
    return {"about": curve.about, "metric": curve.metric,
            "points": [{"removed": p.removed, "ratio": p.ratio, "source": p.source} for p in curve.points]}

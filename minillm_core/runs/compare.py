"""Runs as data for comparisons: original-vs-pruned rows, size-vs-quality points and their Pareto front, exports.

Pure functions on `Run` records; the figures and the HTML report built from them live in `ui/`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from minillm_core.runs.store import Run

METRIC_LABELS = {"params": "parameters", "size_mb": "size in memory (MB)", "disk_mb": "size on disk (MB)",
                 "acc/average": "zero-shot accuracy (mean acc)", "memory/peak_inference_mb": "peak memory (MB)",
                 "speed/prefill_ms/bs1": "prefill latency, batch 1 (ms)", "speed/prefill_ms/bs8":
                 "prefill latency, batch 8 (ms)", "speed/decode_tps/bs1": "decode tokens/s, batch 1",
                 "speed/decode_tps/bs8": "decode tokens/s, batch 8"}


def metric_label(key: str) -> str:
    """A readable name for a flat metric key ("ppl/wikitext2" -> "perplexity wikitext2")."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    head, _, rest = key.partition("/")
    if head == "llamacpp":  # llamacpp/ppl/wikitext2, llamacpp/decode_tps/t2, llamacpp/file_mb
        kind, _, arg = rest.partition("/")
        return {"ppl": f"llama.cpp perplexity {arg}", "decode_tps": f"llama.cpp decode tokens/s, batch 1, "
                f"{arg.removeprefix('t')} thread(s)", "file_mb": "GGUF file (MB)",
                "windows": f"llama.cpp windows {arg}"}.get(kind, key)
    return f"perplexity {rest}" if head == "ppl" else key


def comparison_rows(run: Run) -> list[dict[str, Any]]:
    """Original vs pruned per metric, with the retained percentage (pruned / original)."""
    orig, pruned = run.metrics.get("original") or {}, run.metrics.get("pruned") or {}
    metrics: list[tuple[str, Any, Any]] = [
        (metric_label(key), orig.get(key), pruned.get(key))
        for key in dict.fromkeys([*orig, *pruned])
    ]
    return [{"metric": name, "original": a, "pruned": b,
             "retained %": (100.0 * b / a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
             else None} for name, a, b in metrics]


def quality_of(run: Run, dataset: str | None = None) -> tuple[str, float] | None:
    """(dataset, pruned perplexity) of a finished run: `dataset` or its first benchmark; None when not measured."""
    ppl = {k.removeprefix("ppl/"): v for k, v in (run.metrics.get("pruned") or {}).items() if k.startswith("ppl/")}
    name = dataset if dataset in ppl else next(iter(ppl), None)
    return (name, float(ppl[name])) if name else None


def size_quality_points(runs: Sequence[Run], dataset: str | None = None) -> list[tuple[float, float, Run]]:
    """(pruned size in MB, pruned perplexity, run) of every run that measured both."""
    points = []
    for r in runs:
        q = quality_of(r, dataset)
        size = (r.metrics.get("pruned") or {}).get("size_mb")
        if q is not None and size is not None:
            points.append((float(size), q[1], r))
    return points


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both minimised: size and perplexity), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def metrics_csv(runs: Sequence[Run]) -> str:
    """One flat row per run (`Run.flat_metrics`), columns in first-seen order."""
    rows = [r.flat_metrics() for r in runs]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def metrics_json(runs: Sequence[Run]) -> str:
    """Every field of each run plus its flat row (`"flat"`)."""
    return json.dumps([{**asdict(r), "flat": r.flat_metrics()} for r in runs], indent=1)

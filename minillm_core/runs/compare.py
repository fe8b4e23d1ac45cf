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

from minillm_core.evaluation.suite import direction, flat_metrics

if TYPE_CHECKING:
    from minillm_core.runs.store import Run

METRIC_LABELS = {"params": "parameters", "size_mb": "size in memory (MB)", "disk_mb": "size on disk (MB)",
                 "acc/average": "zero-shot accuracy (mean acc)", "memory/peak_inference_mb": "peak memory (MB)",
                 "speed/prefill_ms/bs1": "prefill latency, batch 1 (ms)", "speed/prefill_ms/bs8":
                 "prefill latency, batch 8 (ms)", "speed/decode_tps/bs1": "decode tokens/s, batch 1",
                 "speed/decode_tps/bs8": "decode tokens/s, batch 8"}


AB_LABELS = {"ab/exact_match": "A/B identical answers", "ab/agreement": "A/B token agreement",
             "ab/min_agreement": "A/B token agreement, worst prompt", "ab/prefix": "A/B shared answer prefix",
             "ab/kl": "A/B KL per token", "ab/worst_kl": "A/B KL per token, worst prompt", "ab/rougeL": "A/B ROUGE-L",
             "ab/chrf": "A/B chrF", "ab/ref_match": "A/B reference answers found", "ab/ref_rougeL":
             "A/B ROUGE-L vs reference"}
AB_FRACTIONS = ("ab/exact_match", "ab/agreement", "ab/min_agreement", "ab/prefix", "ab/ref_match")


def metric_label(key: str) -> str:
    """A readable name for a flat metric key ("ppl/wikitext2" -> "perplexity wikitext2")."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    if key in AB_LABELS:
        return AB_LABELS[key]
    head, _, rest = key.partition("/")
    if head == "llamacpp":  # llamacpp/ppl/wikitext2, llamacpp/decode_tps/t2, llamacpp/file_mb
        kind, _, arg = rest.partition("/")
        return {"ppl": f"llama.cpp perplexity {arg}", "decode_tps": f"llama.cpp decode tokens/s, batch 1, "
                f"{arg.removeprefix('t')} thread(s)", "file_mb": "GGUF file (MB)",
                "windows": f"llama.cpp windows {arg}"}.get(kind, key)
    return f"perplexity {rest}" if head == "ppl" else key


def format_value(key: str, value: Any) -> str:
    """A metric value with its unit, for people: "134.5 M", "513.1 MB", "55.12", "45.3 %", "39.9 tok/s"."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else str(value)
    if key == "params":
        return f"{value / 1e6:,.1f} M" if value >= 1e6 else f"{value:,.0f}"
    if key.endswith("_mb"):
        return _mb(value)
    if key.startswith(("acc", "agreement/", *AB_FRACTIONS)):
        return f"{value:.1%}"
    if "decode_tps" in key:
        return f"{value:,.1f} tok/s"
    if "_ms" in key:
        return f"{value:,.1f} ms"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _mb(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 100 else f"{value:,.1f} MB" if value >= 1 else f"{value:.2f} MB"


def change_of(key: str, original: Any, pruned: Any) -> str:
    """Pruned vs original as a ratio with its verdict: "x2.94 worse", "x0.80 better", "same"."""
    if not all(isinstance(v, (int, float)) for v in (original, pruned)) or not original:
        return ""
    ratio, d = pruned / original, direction(key)
    if abs(ratio - 1) < 0.005:
        return "same"
    if d is None:
        return f"x{ratio:.2f}"
    better = ratio < 1 if d < 0 else ratio > 1
    return f"{'↓' if ratio < 1 else '↑'} x{ratio:.2f} {'better' if better else 'worse'}"


def comparison_table(run: Run) -> list[dict[str, str]]:
    """Original vs pruned per metric for people: formatted values with units and the change with its direction; a run
    with recovery adds the recovered model beside them (its change against the original too)."""
    orig, pruned = run.metrics.get("original") or {}, run.metrics.get("pruned") or {}
    recovered = run.metrics.get("recovered") or {}
    rows = []
    for k in dict.fromkeys([*orig, *pruned]):
        row = {"metric": metric_label(k), "original": format_value(k, orig.get(k)),
               "pruned": format_value(k, pruned.get(k)), "change": change_of(k, orig.get(k), pruned.get(k))}
        if recovered:
            row |= {"after recovery": format_value(k, recovered.get(k)),
                    "change after recovery": change_of(k, orig.get(k), recovered.get(k))}
        rows.append(row)
    return rows


def headline(run: Run) -> str:
    """The trade-off of a run in one sentence: size, quality, agreement and speed, each with its direction."""
    o, p, c = run.metrics.get("original") or {}, run.metrics.get("pruned") or {}, run.metrics.get("comparison") or {}
    parts = []
    if o.get("params") and p.get("params"):
        mb = next((k for k in ("disk_mb", "size_mb") if o.get(k) and p.get(k)), None)
        sizes = f" ({_mb(o[mb]).removesuffix(' MB')} -> {_mb(p[mb])})" if mb else ""
        parts.append(f"{1 - p['params'] / o['params']:.0%} smaller{sizes}")
    ppl = next((k for k in p if k.startswith("ppl/") and o.get(k)), None)
    if ppl:
        x = p[ppl] / o[ppl]
        verdict = "about the same" if abs(x - 1) < 0.005 else f"x{x:.2f} {'worse' if x > 1 else 'better'}"
        parts.append(f"perplexity ({ppl.removeprefix('ppl/')}) {o[ppl]:,.1f} -> {p[ppl]:,.1f}, {verdict}")
    r = run.metrics.get("recovered") or {}
    if ppl and r.get(ppl):
        parts.append(f"after recovery {r[ppl]:,.1f}, x{r[ppl] / o[ppl]:.2f}")
    if o.get("acc/average") and p.get("acc/average"):
        parts.append(f"zero-shot accuracy {o['acc/average']:.1%} -> {p['acc/average']:.1%}")
    agree = next((v for k, v in c.items() if k.startswith("agreement/")), None)
    if agree is not None:
        parts.append(f"{agree:.0%} of next tokens unchanged")
    speed = next(((k, v) for k, v in sorted(c.items()) if k.startswith("speedup/llamacpp_decode")), None) or \
        next(((k, v) for k, v in c.items() if k == "speedup/decode/bs1"), None)
    if speed:
        where = "llama.cpp, batch 1" if "llamacpp" in speed[0] else "PyTorch, batch 1"
        parts.append(f"decoding x{speed[1]:.2f} {'faster' if speed[1] >= 1 else 'slower'} ({where})")
    return "; ".join(parts) if parts else "no comparison with the original was measured"


def protocol(run: Run) -> str:
    """How the quality numbers were measured: windows and tokens per perplexity set, items per task."""
    details = (run.metrics.get("details") or {}).get("pruned") or {}
    sets = [f"{name}: {r['n_windows']} windows of {r['seq_len']} tokens"
            for name, r in (details.get("perplexity") or {}).items() if isinstance(r, dict) and "n_windows" in r]
    config = run.metrics.get("eval_config") or {}
    tasks = config.get("tasks") or []
    if tasks:
        items = f"the first {config['limit']}" if config.get("limit") else "all"
        sets.append(f"{len(tasks)} zero-shot task(s) on {items} items")
    return ("Measured on " + "; ".join(sets) + ".") if sets else ""


def comparison_tile(key: str, value: float) -> tuple[str, str]:
    """(label, formatted value) of a `comparison` metric: KL, agreement, measured speed-ups."""
    head, _, rest = key.partition("/")
    if head == "kl":
        return f"KL to the original ({rest})", f"{value:.3f}"
    if key == "param_ratio":
        return "parameter ratio (original / pruned)", f"x{value:.2f}"
    if head == "agreement":
        return f"next tokens unchanged ({rest})", f"{value:.1%}"
    if key.startswith("speedup/llamacpp_decode_tps/t"):
        return f"decode speed-up in llama.cpp, {key.rsplit('/t', 1)[1]} thread(s)", f"x{value:.2f}"
    if head == "speedup":  # speedup/decode/bs1, speedup/prefill/bs8
        kind, _, batch = rest.partition("/")
        return f"{kind} speed-up in PyTorch, batch {batch.removeprefix('bs')}", f"x{value:.2f}"
    return key, f"{value:.4g}"


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


def dense_points(runs: Sequence[Run], dataset: str | None = None) -> list[tuple[float, float, str]]:
    """(size in MB, perplexity, model) of each distinct original model the runs measured (the reference point)."""
    out: dict[str, tuple[float, float, str]] = {}
    for r in runs:
        orig, q = r.metrics.get("original") or {}, quality_of(r, dataset)
        key = f"ppl/{q[0]}" if q else None
        if key and orig.get(key) is not None and orig.get("size_mb") is not None and r.model not in out:
            out[r.model] = (float(orig["size_mb"]), float(orig[key]), r.model)
    return list(out.values())


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both minimised: size and perplexity), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


#: What the trend view offers first: resources beside quality (any other measured metric can be added).
TREND_DEFAULTS = ("size_mb", "ppl/wikitext2", "llamacpp/decode_tps/t1", "speed/decode_tps/bs1",
                  "memory/peak_inference_mb", "ab/agreement")


def trend_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per finished run, oldest first: when, which, and every numeric metric of its pruned model and its
    comparison with the original (resources, quality, A/B), for plotting a series of experiments over time."""
    rows = []
    for r in sorted((r for r in runs if r.state == "done"), key=lambda r: r.created):
        values = {**(r.metrics.get("pruned") or {}), **(r.metrics.get("comparison") or {})}
        rows.append({"run": r.id, "name": r.name, "created": r.created, "ratio": r.ratio,
                     **{k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    return rows


def trend_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics measured by at least one run, the usual resource/quality ones first."""
    found = list(dict.fromkeys(k for row in rows for k in row if k not in ("run", "name", "created", "ratio")))
    return [k for k in TREND_DEFAULTS if k in found] + [k for k in found if k not in TREND_DEFAULTS]


def run_flat_metrics(run: Run, ab: Any = None) -> dict[str, float]:
    """Every metric a contract can name for a finished run (`RunMetrics.flat()`'s names); with `ab` (an
    `ABResult` kept with the run), its A/B metrics replace those of the run's own evaluation."""
    m = run.metrics
    original, pruned = dict(m.get("original") or {}), dict(m.get("pruned") or {})
    comparison = dict(m.get("comparison") or {})
    if ab is not None:
        comparison |= ab.comparison()
        original |= ab.model_metrics("original")
        pruned |= ab.model_metrics("pruned")
    return flat_metrics(original, pruned, comparison)


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


#: Spec fields that differ between any two runs and say nothing about how they were made.
_NOT_SETTINGS = ("name", "extra", "plan.layers", "plan.original", "plan.predicted_params", "plan.removed_fraction",
                 "plan.original_params", "plan.format", "plan.provenance.created", "format")


def flat_settings(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A run spec (`RunSpec.to_dict()`) as `section.field -> text`, without the per-layer kept indices (the plan's
    widths follow from its settings) and without the name; lists print as comma-separated values."""
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if name in _NOT_SETTINGS:
            continue
        if isinstance(value, dict):
            out |= flat_settings(value, f"{name}.") if value else {name: "-"}
        elif isinstance(value, (list, tuple)):
            out[name] = ", ".join(map(str, value)) if value else "-"
        else:
            out[name] = "-" if value is None else str(value)
    return out


def run_vs_run(a: Run, b: Run, spec_a: dict[str, Any] | None, spec_b: dict[str, Any] | None
               ) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """Two runs side by side (as W&B's run comparer): the pruned models' metrics with B's change against A, and the
    settings that differ (`spec_a`/`spec_b`: their specs as dicts; None when a run has none). Returns (metrics rows,
    differing settings rows, how many settings are the same)."""
    pa, pb = a.metrics.get("pruned") or {}, b.metrics.get("pruned") or {}
    metrics = [{"metric": metric_label(k), "A": format_value(k, pa.get(k)), "B": format_value(k, pb.get(k)),
                "B vs A": change_of(k, pa.get(k), pb.get(k))} for k in dict.fromkeys([*pa, *pb])]
    sa, sb = flat_settings(spec_a or {}), flat_settings(spec_b or {})
    keys = list(dict.fromkeys([*sa, *sb]))
    differ = [{"setting": k, "A": sa.get(k, "(not recorded)"), "B": sb.get(k, "(not recorded)")}
              for k in keys if sa.get(k) != sb.get(k)]
    return metrics, differ, len(keys) - len(differ)

"""Plotly figure builders: importance scores and scorer agreement, plan widths, run comparisons, threshold searches.

Score inputs are `GroupScores` (heads[i]: [num_heads], channels[i]: [intermediate]); run inputs are `runs.Run`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from scipy.stats import spearmanr

from minillm_core.runs import (
    ABResult,
    Run,
    comparison_rows,
    dense_points,
    metric_label,
    pareto_front,
    risk,
    size_quality_points,
)
from minillm_core.scoring import GroupScores

CHANNEL_BINS = 64


def heads_heatmap(scores: GroupScores, removed: list[list[int]] | None = None) -> go.Figure:
    """Layers x query heads, exact score on hover (layers may differ in width: missing cells stay empty);
    `removed[i]`: the heads of layer i a plan removes, marked with a cross."""
    width = max(h.numel() for h in scores.heads)
    z = np.full((scores.num_layers, width), np.nan)
    for i, h in enumerate(scores.heads):
        z[i, : h.numel()] = h.float().numpy()
    color, title = color_values(z)
    fig = go.Figure(go.Heatmap(z=color, customdata=z, colorscale="Viridis", colorbar={"title": title},
                               name="score",
                               hovertemplate="layer %{y}, head %{x}<br>score %{customdata:.6g}<extra></extra>"))
    if removed:
        cells = [(head, layer) for layer, heads in enumerate(removed) for head in heads]
        fig.add_trace(go.Scatter(x=[c[0] for c in cells], y=[c[1] for c in cells], mode="markers",
                                 name="removed by the plan",
                                 marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "#e63946"}},
                                 hovertemplate="layer %{y}, head %{x}: removed by the plan<extra></extra>"))
        fig.update_layout(legend={"orientation": "h", "y": -0.15})
    fig.update_layout(title=f"{scores.scorer}: attention heads", xaxis_title="head", yaxis_title="layer")
    return fig


def color_values(z: np.ndarray, span: float = 100.0) -> tuple[np.ndarray, str]:
    """What a heatmap colours: log10 of the scores when all are positive and they span more than `span`x (FLAP's
    and Taylor's heavy tails would otherwise paint one cell bright and the rest dark), else the scores themselves."""
    finite = z[np.isfinite(z)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > span:
        return np.log10(z), "log10 score"
    return z, "score"


def binned_channels(channels: list, bins: int = CHANNEL_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each layer's channel scores sorted high -> low and averaged in `bins` equal rank bins.

    Returns (mean, min, max), each [num_layers, bins]; a layer narrower than `bins` fills its first columns.
    """
    n = len(channels)
    mean, lo, hi = (np.full((n, bins), np.nan) for _ in range(3))
    for i, c in enumerate(channels):
        ordered = np.sort(c.float().numpy())[::-1]
        for j, part in enumerate(np.array_split(ordered, min(bins, len(ordered)))):
            mean[i, j], lo[i, j], hi[i, j] = part.mean(), part.min(), part.max()
    return mean, lo, hi


def channels_heatmap(scores: GroupScores, mode: str = "binned") -> go.Figure:
    """Layers x MLP channels, sorted per layer; `binned` averages 64 rank bins so thousands stay readable."""
    if mode == "binned":
        mean, lo, hi = binned_channels(scores.channels)
        color, title = color_values(mean)
        fig = go.Figure(go.Heatmap(
            z=color, customdata=np.stack([lo, hi, mean], axis=-1), colorscale="Viridis", colorbar={"title": title},
            hovertemplate="layer %{y}, rank bin %{x}<br>mean %{customdata[2]:.6g}<br>min %{customdata[0]:.6g}, "
                          "max %{customdata[1]:.6g}<extra></extra>"))
        xtitle = f"channel rank bin (1/{CHANNEL_BINS} of the layer each, most important first)"
    else:
        width = max(c.numel() for c in scores.channels)
        z = np.full((scores.num_layers, width), np.nan)
        for i, c in enumerate(scores.channels):
            z[i, : c.numel()] = np.sort(c.float().numpy())[::-1]
        color, title = color_values(z)
        fig = go.Figure(go.Heatmap(z=color, customdata=z, colorscale="Viridis", colorbar={"title": title},
                                   hovertemplate="layer %{y}, rank %{x}<br>score %{customdata:.6g}<extra></extra>"))
        xtitle = "channel rank within the layer (most important first)"
    fig.update_layout(title=f"{scores.scorer}: MLP channels", xaxis_title=xtitle, yaxis_title="layer")
    return fig


def layer_bars(scores: GroupScores) -> go.Figure:
    """Mean head score and mean channel score per layer, in two stacked sub-plots (their scales differ)."""
    from plotly.subplots import make_subplots

    layers = list(range(scores.num_layers))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("mean attention-head score", "mean MLP-channel score"))
    fig.add_trace(go.Bar(x=layers, y=[float(h.float().mean()) for h in scores.heads], name="heads",
                         hovertemplate="layer %{x}: %{y:.6g}<extra>heads</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=[float(c.float().mean()) for c in scores.channels], name="channels",
                         hovertemplate="layer %{x}: %{y:.6g}<extra>channels</extra>"), row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    fig.update_layout(title=f"{scores.scorer}: importance per layer", showlegend=False, height=480)
    return fig


def _spearman(a, b) -> float:
    a, b = a.float().numpy(), b.float().numpy()
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def rank_agreement(a: GroupScores, b: GroupScores) -> pd.DataFrame:
    """Spearman rank correlation of two scorers per layer, for heads and for channels."""
    return pd.DataFrame({
        "layer": range(a.num_layers),
        "heads ρ": [_spearman(x, y) for x, y in zip(a.heads, b.heads, strict=True)],
        "channels ρ": [_spearman(x, y) for x, y in zip(a.channels, b.channels, strict=True)],
    })


def agreement_figure(table: pd.DataFrame, a: str, b: str) -> go.Figure:
    fig = go.Figure([go.Scatter(x=table["layer"], y=table[col], mode="lines+markers", name=col)
                     for col in ("heads ρ", "channels ρ")])
    fig.update_layout(title=f"Rank agreement per layer: {a} vs {b}", xaxis_title="layer",
                      yaxis={"title": "Spearman ρ", "range": [-1.05, 1.05]})
    return fig


def fidelity_figure(rows: list[dict]) -> go.Figure:
    """Fidelity of forward-only estimators vs backprop FMS (cosine, mean Spearman) against the number of probes."""
    fig = go.Figure()
    for est in dict.fromkeys(r["estimator"] for r in rows):
        mine = sorted((r for r in rows if r["estimator"] == est), key=lambda r: r["n_probes"])
        for metric, dash in (("cosine", "solid"), ("mean_spearman_heads", "dot"), ("mean_spearman_channels", "dash")):
            fig.add_scatter(x=[r["n_probes"] for r in mine], y=[r[metric] for r in mine], mode="lines+markers",
                            name=f"{est}: {metric.replace('mean_', '').replace('_', ' ')}", line={"dash": dash},
                            hovertemplate="%{x} probes: %{y:.3f}<extra></extra>")
    fig.update_layout(title="Forward-only estimates vs backprop FMS", xaxis_title="probes", xaxis_type="log",
                      yaxis_title="agreement with backprop", yaxis_range=[-0.2, 1.05])
    return fig


def search_figure(curve: dict, metric: str) -> go.Figure:
    """Size-vs-quality curve of a threshold search: `metric` against the pruning ratio, passing points marked."""
    points = [p for p in curve["points"] if metric in p]
    fig = go.Figure()
    fig.add_scatter(x=[p["ratio"] for p in points], y=[p[metric] for p in points], mode="lines", name=metric,
                    line={"color": "#888"}, hoverinfo="skip")
    for passed, color in ((True, "#2a9d8f"), (False, "#e76f51")):
        sel = [p for p in points if bool(p["passed"]) is passed]
        fig.add_scatter(x=[p["ratio"] for p in sel], y=[p[metric] for p in sel], mode="markers",
                        marker={"size": 10, "color": color}, name="meets contract" if passed else "fails contract",
                        customdata=[p.get("params") for p in sel],
                        hovertemplate="ratio %{x:.3f}: %{y:.4g}<br>%{customdata:,} parameters<extra></extra>")
    if curve.get("best_ratio") is not None:
        fig.add_vline(x=curve["best_ratio"], line_dash="dot", annotation_text="largest passing ratio")
    fig.update_layout(title=f"Threshold search: {metric} vs pruning ratio",
                      xaxis_title="fraction of parameters removed", yaxis_title=metric)
    return fig


def widths_figure(rows: list[dict[str, int]], title: str = "Kept widths per layer") -> go.Figure:
    """Kept vs original heads and channels per layer, from `PlanSummary.rows` (a plan preview or a run's summary)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("attention heads", "MLP channels"))
    layers = [r["layer"] for r in rows]
    for col, key in ((1, "heads"), (2, "channels")):
        fig.add_trace(go.Bar(x=layers, y=[r[f"{key}_before"] for r in rows], name=f"{key} before",
                             marker_color="lightgray", hovertemplate="layer %{x}: %{y} before<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Bar(x=layers, y=[r[f"{key}_after"] for r in rows], name=f"{key} kept",
                             hovertemplate="layer %{x}: %{y} kept<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(barmode="overlay", title=title)
    return fig


def architecture_figure(rows: list[dict[str, int]], title: str = "Architecture: what each layer keeps",
                        top: str = "token embedding", bottom: str = "final norm and LM head") -> go.Figure:
    """The decoder as a stack of blocks (Netron-like, compact): per layer an attention and an MLP block, each a grey
    bar for its original width filled to the part kept, labelled "6/9 heads" / "1,152/1,536"; layer 0 at the top,
    between the embedding and the LM head. Rows are `PlanSummary.rows`; untouched layers are drawn in grey-blue."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.07,
                        subplot_titles=("self-attention (query heads)", "MLP (channels)"))
    names = [f"layer {r['layer']}" for r in rows]
    for col, key, unit, colour in ((1, "heads", "heads", "#1f77b4"), (2, "channels", "channels", "#ff7f0e")):
        before = [r[f"{key}_before"] for r in rows]
        after = [r[f"{key}_after"] for r in rows]
        kept = [a / b if b else 0.0 for a, b in zip(after, before, strict=True)]
        if key == "heads":
            gqa = [r["kv_heads_before"] != r["heads_before"] for r in rows]
            text = [f"{r['heads_after']}/{r['heads_before']} heads"
                    + (f" ({r['kv_heads_after']}/{r['kv_heads_before']} kv)" if g else "")
                    for r, g in zip(rows, gqa, strict=True)]
        else:
            text = [f"{a:,}/{b:,}" for a, b in zip(after, before, strict=True)]
        colours = ["#9db4c8" if k >= 1.0 else "#d62728" if k < 0.25 else colour for k in kept]
        fig.add_trace(go.Bar(y=names, x=[1.0] * len(rows), orientation="h", marker_color="#e8e8e8",
                             hoverinfo="skip", showlegend=False), row=1, col=col)
        fig.add_trace(go.Bar(y=names, x=kept, orientation="h", marker_color=colours, showlegend=False,
                             customdata=list(zip(after, before, strict=True)),
                             hovertemplate=f"%{{y}}: %{{customdata[0]:,}} of %{{customdata[1]:,}} {unit} kept"
                                           "<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Bar(y=names, x=[1.0] * len(rows), orientation="h", marker_color="rgba(0,0,0,0)", text=text,
                             textposition="inside", insidetextanchor="end", textfont={"size": 12, "color": "#333"},
                             hoverinfo="skip", showlegend=False), row=1, col=col)  # labels on top, at the right
        fig.update_xaxes(range=[0, 1], tickformat=".0%", title_text="kept", row=1, col=col)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=names)
    fig.update_layout(barmode="overlay", title=title, height=140 + 24 * len(rows), bargap=0.12,
                      uniformtext={"minsize": 11, "mode": "show"},
                      margin={"t": 100, "b": 80},
                      annotations=[*fig.layout.annotations,
                                   {"text": f"↓ {top}", "xref": "paper", "yref": "paper", "x": 0.5, "y": 1.0,
                                    "yshift": 45, "showarrow": False, "font": {"size": 12, "color": "gray"}},
                                   {"text": f"↓ {bottom}", "xref": "paper", "yref": "paper", "x": 0.5, "y": 0,
                                    "yshift": -60, "showarrow": False, "font": {"size": 12, "color": "gray"}}])
    return fig


RISK_COLOURS = {"mild": "rgba(44,160,44,0.14)", "noticeable": "rgba(255,127,14,0.16)", "severe": "rgba(214,39,40,0.14)"}


def risk_figure(curve: risk.RiskCurve, runs: list[risk.RiskPoint], removed: float) -> go.Figure:
    """The ratio slider's risk band: perplexity ratio (pruned / original, log axis) against the fraction removed, over
    mild / noticeable / severe bands, the measured curve, this model's finished runs as dots, and the current plan."""
    right = max(0.6, removed + 0.05, *(p.removed + 0.05 for p in runs))
    ys = [p.ratio for p in (*curve.points, *runs)]
    top = max(10.0, *ys) * 1.5
    fig = go.Figure()
    low = 1.0
    for bound, name in risk.LEVELS:
        high = min(bound, top)
        fig.add_hrect(y0=low, y1=high, fillcolor=RISK_COLOURS[name], line_width=0, layer="below")
        fig.add_annotation(x=1.0, xref="paper", xanchor="right", y=math.log10(math.sqrt(low * high)), yref="y",
                           text=name, showarrow=False, font={"color": "gray"})  # a log axis places text by log10
        low = high
    fig.add_trace(go.Scatter(x=[0.0] + [p.removed for p in curve.points], y=[1.0] + [p.ratio for p in curve.points],
                             mode="lines+markers", name="measured", line_color="#444",
                             hovertemplate="%{x:.0%} removed: perplexity x%{y:.2f}<extra>measured</extra>"))
    if runs:
        fig.add_trace(go.Scatter(x=[p.removed for p in runs], y=[p.ratio for p in runs], mode="markers",
                                 name="your runs", marker={"color": "#1f77b4", "size": 8},
                                 text=[p.source for p in runs],
                                 hovertemplate="%{text}: %{x:.0%} removed, perplexity x%{y:.2f}<extra></extra>"))
    expected = risk.expected_ratio(curve, removed)
    fig.add_vline(x=removed, line_color="#d62728", line_dash="dot",
                  annotation_text=f"this plan: {removed:.0%}" + (f", ~x{expected:.1f}" if expected else ""),
                  annotation_position="top right")
    fig.update_xaxes(range=[0, right], tickformat=".0%", title_text="fraction of parameters removed")
    fig.update_yaxes(type="log", range=[0, math.log10(top)], title_text="perplexity x original")
    fig.update_layout(height=260, margin={"t": 30, "b": 40, "l": 60, "r": 20}, showlegend=bool(runs),
                      legend={"orientation": "h", "y": 1.15, "x": 1, "xanchor": "right"})
    return fig


def comparison_figure(run: Run) -> go.Figure:
    """Grouped bars: original vs pruned, each metric as % of the original."""
    rows = [r for r in comparison_rows(run) if r["retained %"] is not None]
    fig = go.Figure([
        go.Bar(name="original", x=[r["metric"] for r in rows], y=[100.0] * len(rows),
               customdata=[r["original"] for r in rows],
               hovertemplate="%{x}: %{customdata:.4g}<extra>original</extra>"),
        go.Bar(name="pruned", x=[r["metric"] for r in rows], y=[r["retained %"] for r in rows],
               customdata=[r["pruned"] for r in rows], hovertemplate="%{x}: %{customdata:.4g}<extra>pruned</extra>"),
    ])
    fig.update_layout(barmode="group", title=f"{run.name}: pruned as % of original", yaxis_title="% of original")
    return fig


def pareto_figure(runs: list[Run], dataset: str | None = None) -> go.Figure:
    """Size (MB) vs pruned perplexity for finished runs (labelled), the original model as the reference point, the
    Pareto front as a line; perplexity on a log axis (a broken model is orders of magnitude off), sizes from 0."""
    points = size_quality_points(runs, dataset)
    pts = [(size, ppl) for size, ppl, _ in points]
    front = pareto_front(pts)
    fig = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers+text", name="pruned runs",
                               text=[r.name for _, _, r in points], textposition="top center",
                               customdata=[r.id for _, _, r in points],
                               hovertemplate="%{text} (%{customdata})<br>%{x:,.1f} MB, perplexity %{y:,.2f}"
                                             "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[pts[i][0] for i in front], y=[pts[i][1] for i in front], mode="lines",
                             name="Pareto front", line={"dash": "dash"}))
    dense = dense_points(runs, dataset)
    fig.add_trace(go.Scatter(x=[d[0] for d in dense], y=[d[1] for d in dense], mode="markers+text", name="original",
                             text=[f"original {d[2]}" for d in dense], textposition="bottom center",
                             marker={"symbol": "star", "size": 14},
                             hovertemplate="%{text}<br>%{x:,.1f} MB, perplexity %{y:,.2f}<extra></extra>"))
    sizes = [p[0] for p in pts] + [d[0] for d in dense]
    fig.update_layout(title="Size vs quality across runs (lower left is better)", xaxis_title="size in memory (MB)",
                      yaxis_title=f"perplexity{f' ({dataset})' if dataset else ''}, log scale", yaxis_type="log",
                      xaxis_range=[0, max(sizes, default=1) * 1.1])
    return fig


#: Per-prompt A/B metrics on a 0..1 scale (higher: closer to the original), as the distribution figure shows them.
AB_SHOWN = {"agreement": "token agreement", "prefix": "shared prefix", "rougeL": "ROUGE-L", "chrf": "chrF / 100"}


def ab_figure(result: ABResult) -> go.Figure:
    """One box per A/B metric over the prompts (every prompt a point, hover names it), plus KL on its own axis."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.75, 0.25], horizontal_spacing=0.12,
                        subplot_titles=("closeness to the original (1 = same)", "KL per token (nats)"))
    ids = [r.id for r in result.records]
    for key, label in AB_SHOWN.items():
        values = [getattr(r, key) / (100.0 if key == "chrf" else 1.0) for r in result.records]
        fig.add_trace(go.Box(y=values, name=label, boxpoints="all", jitter=0.4, pointpos=0, text=ids,
                             hovertemplate="%{text}: %{y:.2f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Box(y=[r.kl for r in result.records], name="KL", boxpoints="all", jitter=0.4, pointpos=0,
                         text=ids, hovertemplate="%{text}: %{y:.3f}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=1)
    fig.update_layout(showlegend=False, title=f"{result.suite}: per-prompt distribution ({len(ids)} prompts)",
                      height=380)
    return fig


def trend_figure(rows: list[dict], metrics: list[str]) -> go.Figure:
    """Each chosen metric of the pruned models over the runs' start times (one panel per metric, shared time axis),
    every point labelled by its run: how a series of experiments moved size, speed, memory and quality."""
    import datetime

    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[metric_label(m) for m in metrics])
    for i, metric in enumerate(metrics, start=1):
        shown = [r for r in rows if metric in r]
        fig.add_trace(go.Scatter(
            x=[datetime.datetime.fromtimestamp(r["created"]) for r in shown], y=[r[metric] for r in shown],
            mode="lines+markers", name=metric_label(metric), text=[r["name"] for r in shown],
            customdata=[f"{r['ratio']:.0%}" for r in shown],
            hovertemplate="%{text} (ratio %{customdata})<br>%{x|%Y-%m-%d %H:%M}: %{y:,.4g}<extra></extra>"),
            row=i, col=1)
    fig.update_layout(height=max(260, 190 * len(metrics)), showlegend=False, title="Trends across runs (pruned models)")
    return fig


def sweep_figure(points: list[tuple], dense: list[tuple[float, float, str]], dataset: str,
                 passing: dict[str, float] | None = None) -> go.Figure:
    """Size-vs-quality curves of a sweep, one line per scorer (and re-fit setting): `points` are (series name,
    ratio, size MB, perplexity) of the finished points; the original as a star; `passing` marks each series'
    largest ratio that met the quality gate. Perplexity on a log axis, sizes from 0."""
    fig = go.Figure()
    series: dict[str, list[tuple]] = {}
    for name, ratio, size, ppl in points:
        series.setdefault(name, []).append((ratio, size, ppl))
    for name, rows in series.items():
        rows.sort()
        fig.add_trace(go.Scatter(x=[r[1] for r in rows], y=[r[2] for r in rows], mode="lines+markers+text", name=name,
                                 text=[f"{r[0]:.0%}" for r in rows], textposition="top center",
                                 hovertemplate=name + ": %{text} removed<br>%{x:,.1f} MB, perplexity %{y:,.2f}"
                                               "<extra></extra>"))
    for name, best in (passing or {}).items():
        hit = [r for r in series.get(name, []) if r[0] == best]
        fig.add_trace(go.Scatter(x=[r[1] for r in hit], y=[r[2] for r in hit], mode="markers", showlegend=False,
                                 marker={"size": 18, "symbol": "circle-open", "line": {"width": 3},
                                         "color": "#2a9d8f"},
                                 hovertemplate=f"{name}: largest passing ratio {best:.0%}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[d[0] for d in dense], y=[d[1] for d in dense], mode="markers+text", name="original",
                             text=["original" for _ in dense], textposition="bottom center",
                             marker={"symbol": "star", "size": 14, "color": "black"},
                             hovertemplate="original<br>%{x:,.1f} MB, perplexity %{y:,.2f}<extra></extra>"))
    sizes = [p[2] for p in points] + [d[0] for d in dense]
    fig.update_layout(title="Size vs quality per scorer (lower left is better; labels: share of parameters removed)",
                      xaxis_title="size in memory (MB)", yaxis_title=f"perplexity ({dataset}), log scale",
                      yaxis_type="log", xaxis_range=[0, max(sizes, default=1) * 1.1], legend_title_text="scorer")
    return fig

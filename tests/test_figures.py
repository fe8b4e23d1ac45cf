"""Dashboard figures: what the heatmaps colour and what their hover shows."""

from __future__ import annotations

import numpy as np
import torch

from minillm_core.scoring import GroupScores
from ui import figures


def test_heavy_tailed_positive_scores_are_coloured_by_log10_and_hover_shows_the_raw_score():
    z = np.array([[1e-3, 1.0], [np.nan, 10.0]])
    color, title = figures.color_values(z)
    assert title == "log10 score" and np.allclose(color[np.isfinite(z)], [-3.0, 0.0, 1.0])
    scores = GroupScores("flap", [torch.tensor([1e-3, 1.0]), torch.tensor([10.0])],
                         [torch.tensor([1e-3, 5.0, 2.0]), torch.tensor([1.0, 4.0])])
    heads = figures.heads_heatmap(scores).data[0]
    assert heads.colorbar.title.text == "log10 score" and heads.customdata[1][0] == 10.0
    channels = figures.channels_heatmap(scores, "sorted").data[0]
    assert np.allclose(channels.customdata[0], [5.0, 2.0, 1e-3])  # sorted, raw (float32 scores)


def test_narrow_or_signed_scores_keep_a_linear_colour_scale():
    assert figures.color_values(np.array([[1.0, 50.0]]))[1] == "score"
    assert figures.color_values(np.array([[-1.0, 1e4]]))[1] == "score"  # standardised scores can be negative


def test_trends_across_runs_order_by_time_and_keep_only_measured_points():
    from minillm_core.runs import Run, trend_metrics, trend_rows

    def run(i: int, created: float, state: str = "done", **pruned) -> Run:
        return Run(f"r{i}", f"run {i}", created, "m", "flap", 0.2 * i, state, "", metrics={
            "pruned": pruned, "comparison": {"ab/agreement": 0.5 + 0.1 * i}})

    runs = [run(2, 200.0, size_mb=80.0, **{"ppl/wikitext2": 90.0}), run(1, 100.0, size_mb=100.0),
            run(3, 300.0, state="failed", size_mb=1.0)]
    rows = trend_rows(runs)
    assert [r["run"] for r in rows] == ["r1", "r2"]  # oldest first, finished runs only
    assert trend_metrics(rows)[:3] == ["size_mb", "ppl/wikitext2", "ab/agreement"]
    fig = figures.trend_figure(rows, ["size_mb", "ppl/wikitext2"])
    assert list(fig.data[0].y) == [100.0, 80.0] and list(fig.data[1].y) == [90.0]  # r1 measured no perplexity
    assert fig.layout.annotations[1].text == "perplexity wikitext2"


def test_per_layer_bars_are_two_subplots_with_their_own_axes():
    scores = GroupScores("flap", [torch.tensor([1.0, 3.0]), torch.tensor([5.0, 5.0])],
                         [torch.tensor([100.0, 300.0]), torch.tensor([0.5, 1.5])])
    fig = figures.layer_bars(scores)
    heads, channels = fig.data
    assert list(heads.y) == [2.0, 5.0] and list(channels.y) == [200.0, 1.0]
    assert heads.yaxis != channels.yaxis and fig.layout.yaxis.overlaying is None  # stacked, not overlaid


def test_sweep_curves_one_line_per_scorer_with_the_gate_marked():
    points = [("flap", 0.2, 400.0, 90.0), ("flap", 0.1, 450.0, 70.0), ("magnitude", 0.1, 450.0, 900.0)]
    fig = figures.sweep_figure(points, [(513.0, 56.0, "m")], "wikitext2", {"flap": 0.2})
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["flap"].x) == [450.0, 400.0] and list(by_name["flap"].text) == ["10%", "20%"]
    assert by_name["original"].marker.symbol == "star" and fig.layout.yaxis.type == "log"
    ring = next(t for t in fig.data if t.name is None)
    assert list(ring.x) == [400.0] and list(ring.y) == [90.0]


def test_heads_heatmap_marks_the_heads_a_plan_removes():
    scores = GroupScores("flap", [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])],
                         [torch.tensor([1.0]), torch.tensor([1.0])])
    fig = figures.heads_heatmap(scores, [[0], [1, 2]])
    crosses = fig.data[1]
    assert crosses.name == "removed by the plan"
    assert list(zip(crosses.x, crosses.y, strict=True)) == [(0, 0), (1, 1), (2, 1)]
    assert len(figures.heads_heatmap(scores).data) == 1


def test_the_architecture_view_fills_each_block_to_the_part_kept():
    rows = [{"layer": 0, "heads_before": 9, "heads_after": 9, "kv_heads_before": 3, "kv_heads_after": 3,
             "channels_before": 1536, "channels_after": 1536},
            {"layer": 1, "heads_before": 9, "heads_after": 6, "kv_heads_before": 3, "kv_heads_after": 3,
             "channels_before": 1536, "channels_after": 256}]
    fig = figures.architecture_figure(rows)
    kept = [t for t in fig.data if t.hovertemplate]  # the filled bars (the grey originals and labels skip hover)
    assert [list(t.x) for t in kept] == [[1.0, 6 / 9], [1.0, 256 / 1536]]
    assert list(kept[0].y) == ["layer 0", "layer 1"] and fig.layout.yaxis.autorange == "reversed"  # layer 0 on top
    labels = [list(t.text) for t in fig.data if t.text is not None]
    assert labels == [["9/9 heads (3/3 kv)", "6/9 heads (3/3 kv)"], ["1,536/1,536", "256/1,536"]]
    assert kept[1].marker.color[1] == "#d62728" and kept[0].marker.color[0] == "#9db4c8"  # under 1/4; untouched

"""The ratio slider's risk band: measured perplexity ratios, interpolated, named, and drawn."""

from __future__ import annotations

import json
import math

import pytest

from minillm_core.runs import Run, risk
from ui import figures


def _run(name: str, removed: float, ratio: float, model: str = "m", state: str = "done") -> Run:
    metrics = {"original": {"params": 100, "ppl/wikitext2": 10.0},
               "pruned": {"params": round(100 * (1 - removed)), "ppl/wikitext2": 10.0 * ratio}}
    return Run(id=name, name=name, created=0.0, model=model, scorer="flap", ratio=removed, state=state, run_dir="",
               metrics=metrics)


CURVE = risk.RiskCurve((risk.RiskPoint(0.2, 2.0, "benchmark"), risk.RiskPoint(0.4, 8.0, "benchmark")), "test")


def test_expected_ratio_is_log_linear_between_measured_points_and_silent_beyond():
    assert risk.expected_ratio(CURVE, 0.0) == pytest.approx(1.0)
    assert risk.expected_ratio(CURVE, 0.1) == pytest.approx(math.sqrt(2.0))  # halfway from x1 to x2 on a log scale
    assert risk.expected_ratio(CURVE, 0.3) == pytest.approx(4.0)
    assert risk.expected_ratio(CURVE, 0.4) == pytest.approx(8.0)
    assert risk.expected_ratio(CURVE, 0.5) is None


def test_levels_and_the_sentence_under_the_slider():
    assert [risk.level(r) for r in (1.0, 1.5, 1.6, 3.0, 3.1)] == ["mild", "mild", "noticeable", "noticeable", "severe"]
    text = risk.describe(CURVE, 0.3)
    assert text.startswith("At 30% removed, expect perplexity about x4.0 the original's (severe)")
    assert "noticeable from ~12%" in text  # 2^(x / 0.2) = 1.5 at 11.7%
    assert "severe from ~26%" in text  # 2 * 4^((x - 0.2) / 0.2) = 3 at 25.8%
    assert risk.describe(CURVE, 0.6).startswith("60% removed is beyond the measured range (up to 40%)")


def test_a_models_finished_runs_make_its_curve_when_no_benchmark_ships():
    runs = [_run("a", 0.2, 2.0), _run("b", 0.2, 8.0), _run("c", 0.4, 9.0), _run("d", 0.3, 3.0, model="other"),
            _run("e", 0.3, 3.0, state="failed")]
    points = risk.run_points(runs, "m")
    assert [(p.source, round(p.removed, 2), p.ratio) for p in points] == [("a", 0.2, 2.0), ("b", 0.2, 8.0),
                                                                         ("c", 0.4, 9.0)]
    curve = risk.risk_curve("m", runs)
    assert [(p.removed, p.ratio) for p in curve.points] == [(0.2, pytest.approx(4.0)), (0.4, pytest.approx(9.0))]
    assert "3 finished run(s)" in curve.about
    assert risk.risk_curve("m", runs[:2]) is None  # one removed fraction is not a curve


def test_the_shipped_benchmark_curve_is_read_for_its_name_only(tmp_path, monkeypatch):
    (tmp_path / "tiny.json").write_text(json.dumps({
        "model": "tiny", "metric": "ppl/wikitext2", "dense_ppl": 50.0, "about": "measured on tiny",
        "points": [{"ratio": 0.2, "removed": 0.2, "ppl": 100.0}, {"ratio": 0.1, "removed": 0.1, "ppl": 60.0}]}))
    monkeypatch.setattr(risk, "EVIDENCE_DIR", tmp_path)
    curve = risk.risk_curve("tiny", [_run("a", 0.3, 1.2, model="tiny"), _run("b", 0.5, 9.0, model="tiny")])
    assert [(p.removed, p.ratio) for p in curve.points] == [(0.1, 1.2), (0.2, 2.0)]
    assert curve.about == "measured on tiny"
    assert risk.benchmark_curve(str(tmp_path / "tiny")) is None  # a folder named like a bundled model is not it


def test_the_bundled_model_ships_a_measured_curve():
    curve = risk.benchmark_curve("smollm2-135m")
    assert curve is not None and len(curve.points) >= 4
    assert all(b.ratio >= a.ratio for a, b in zip(curve.points, curve.points[1:], strict=False))  # worse with more cut
    assert "WikiText-2" in curve.about and "bench/results/" in curve.about


def test_the_risk_figure_shows_the_bands_the_curve_the_runs_and_the_plan():
    fig = figures.risk_figure(CURVE, [risk.RiskPoint(0.25, 2.5, "my run")], 0.3)
    assert [s.y0 for s in fig.layout.shapes if s.type == "rect"] == [1.0, 1.5, 3.0]
    assert list(fig.data[0].x) == [0.0, 0.2, 0.4] and list(fig.data[1].text) == ["my run"]
    assert fig.layout.yaxis.type == "log"
    assert any("this plan: 30%, ~x4.0" in (a.text or "") for a in fig.layout.annotations)

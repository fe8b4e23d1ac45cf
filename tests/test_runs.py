"""The run store: CRUD over the SQLite index, persistence across instances, exports, Pareto front, HTML report.

Runs are made from unstarted jobs with hand-written status and metrics files, so no model runs here.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from minillm_core import jobs
from minillm_core.errors import MiniLLMError
from minillm_core.runs import RunStore, comparison_rows, pareto_front

PLAN = {"scorer": "magnitude", "config": {"ratio": 0.25}, "original_params": 1000, "predicted_params": 750}


def fake_run(root: Path, ppl: float, size_mb: float, state: str = "done") -> str:
    """A job directory that looks finished, and its metrics (original ppl 10, 4 MB)."""
    job_id = jobs.submit(jobs.JobSpec(model="tiny", plan=PLAN, name=f"ppl {ppl}"), root, start=False)
    folder = root / job_id
    status = json.loads((folder / jobs.STATUS_FILE).read_text())
    status.update(state=state, error="boom" if state == "failed" else "")
    (folder / jobs.STATUS_FILE).write_text(json.dumps(status))
    rows = [{"layer": i, "heads_before": 6, "heads_after": 4, "channels_before": 80, "channels_after": 64,
             "kv_heads_before": 2, "kv_heads_after": 2, "params_before": 100, "params_after": 75} for i in range(2)]
    metrics = {
        "schema": "minillm.run/1",
        "original": {"params": 1000, "size_mb": 4.0, "ppl/wikitext2": 10.0, "speed/decode_tps/bs1": 100.0},
        "pruned": {"params": 750, "size_mb": size_mb, "ppl/wikitext2": ppl, "speed/decode_tps/bs1": 120.0},
        "retained": {"params": 0.75, "ppl/wikitext2": ppl / 10.0},
        "comparison": {"kl/wikitext2": 0.5, "agreement/wikitext2": 0.8},
        "summary": {"rows": rows}, "model_dir": str(folder / jobs.MODEL_SUBDIR), "seconds": 1.0,
    }
    if state == "done":
        (folder / jobs.METRICS_FILE).write_text(json.dumps(metrics))
    return job_id


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


def test_add_list_get_rename_delete_and_persistence(store):
    a = fake_run(store.root, ppl=12.0, size_mb=3.0)
    store.add_job(a)
    b = fake_run(store.root, ppl=15.0, size_mb=2.0, state="failed")
    store.add_job(b, name="second")
    runs = store.list()
    assert [r.id for r in runs] == [b, a]  # newest first
    assert runs[0].state == "failed" and runs[0].error == "boom"
    assert runs[1].state == "done" and runs[1].params_after == 750
    assert runs[1].metrics["pruned"]["ppl/wikitext2"] == 12.0

    store.rename(a, "  best run ")
    reopened = RunStore(store.root)  # a restart: a new store over the same root
    assert reopened.get(a).name == "best run"
    assert [r.id for r in reopened.list(states=("done",))] == [a]
    with pytest.raises(MiniLLMError, match="empty"):
        reopened.rename(a, " ")
    with pytest.raises(MiniLLMError, match="no run"):
        reopened.rename("nosuchrun1", "x")

    reopened.delete(a)
    assert not (store.root / a).exists()
    assert [r.id for r in reopened.list()] == [b]
    with pytest.raises(MiniLLMError, match="no run"):
        reopened.get(a)


def test_running_row_follows_its_job(store):
    job_id = jobs.submit(jobs.JobSpec(model="tiny", plan=PLAN), store.root, start=False)
    store.add_job(job_id)
    (store.root / job_id / jobs.PID_FILE).write_text("999999999")  # no such process: the worker is gone
    run = store.get(job_id)
    assert run.state == "failed" and "process ended unexpectedly" in run.error


def test_exports(store):
    a = fake_run(store.root, ppl=12.0, size_mb=3.0)
    store.add_job(a)
    rows = list(csv.DictReader(io.StringIO(store.metrics_csv([a]))))
    assert rows[0]["pruned:ppl/wikitext2"] == "12.0" and rows[0]["original:size_mb"] == "4.0"
    assert rows[0]["comparison:kl/wikitext2"] == "0.5"
    data = json.loads(store.metrics_json([a]))
    assert data[0]["id"] == a and data[0]["flat"]["pruned:params"] == 750
    table = {r["metric"]: r for r in comparison_rows(store.get(a))}
    assert table["parameters"]["retained %"] == pytest.approx(75.0)
    assert table["perplexity wikitext2"]["retained %"] == pytest.approx(120.0)


def test_report_html_embeds_figures_and_plotly(store):
    ids = [fake_run(store.root, ppl, size) for ppl, size in ((12.0, 3.0), (11.0, 3.5))]
    for i in ids:
        store.add_job(i)
    page = store.report_html(ids)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("Plotly.newPlot") == 1 + 2 * len(ids)  # Pareto + (comparison, widths) per run
    assert "Pareto front" in page and "kept widths" in page
    assert len(page) > 1_000_000  # plotly.js is inlined, so the file works offline
    with pytest.raises(MiniLLMError, match="at least one run"):
        store.report_html([])


def test_pareto_front():
    points = [(3.0, 12.0), (2.0, 15.0), (3.5, 11.0), (3.2, 13.0), (2.0, 16.0)]
    assert pareto_front(points) == [1, 0, 2]
    assert pareto_front([]) == []


def test_delete_refuses_paths_outside_the_root(store, tmp_path):
    a = fake_run(store.root, ppl=12.0, size_mb=3.0)
    store.add_job(a)
    outside = tmp_path / "precious"
    outside.mkdir()
    with store._db() as db:
        db.execute("UPDATE runs SET run_dir=? WHERE id=?", (str(outside), a))
    with pytest.raises(MiniLLMError, match="refusing"):
        store.delete(a)
    assert outside.is_dir()

"""The run store: list/get/rename/delete over run directories, persistence, exports, Pareto front, HTML report,
and runs written before the runs package (JobSpec layout, `job_id` status, names in the old SQLite index).

Runs are unstarted submissions with hand-written status and metrics files, so no model runs here.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minillm_core import runs
from minillm_core.errors import MiniLLMError
from minillm_core.planning import PruningPlan
from minillm_core.recovery import RecoveryConfig
from ui.report import report_html


def hand_plan(ratio: float = 0.25) -> PruningPlan:
    """A 2-layer plan (6 heads in 2 KV groups, 80 channels -> 4 heads, 64 channels) made by hand."""
    shape = {"num_heads": 6, "num_kv_heads": 2, "intermediate": 80}
    kept = {"heads": [0, 1, 3, 4], "kv_heads": [0, 1], "channels": list(range(64))}
    return PruningPlan.from_dict({"format": 1, "model": "tiny", "model_type": "llama", "scorer": "magnitude",
                                  "config": {"ratio": ratio}, "original_params": 1000, "predicted_params": 750,
                                  "original": [shape, shape], "layers": [kept, kept]})


def fake_metrics(folder: Path, ppl: float, size_mb: float) -> dict:
    """metrics.json of a finished run (original ppl 10, 4 MB)."""
    rows = [{"layer": i, "heads_before": 6, "heads_after": 4, "channels_before": 80, "channels_after": 64,
             "kv_heads_before": 2, "kv_heads_after": 2, "params_before": 100, "params_after": 75} for i in range(2)]
    return {
        "schema": "minillm.run/1",
        "original": {"params": 1000, "size_mb": 4.0, "ppl/wikitext2": 10.0, "speed/decode_tps/bs1": 100.0},
        "pruned": {"params": 750, "size_mb": size_mb, "ppl/wikitext2": ppl, "speed/decode_tps/bs1": 120.0},
        "retained": {"params": 0.75, "ppl/wikitext2": ppl / 10.0},
        "comparison": {"kl/wikitext2": 0.5, "agreement/wikitext2": 0.8},
        "summary": {"rows": rows}, "model_dir": str(folder / "model"), "seconds": 1.0,
    }


def fake_run(root: Path, ppl: float, size_mb: float, state: str = "done") -> str:
    """An unstarted run whose status and metrics say it finished."""
    run_id = runs.submit(runs.RunSpec(model="tiny", plan=hand_plan(), name=f"ppl {ppl}"), root, start=False)
    folder = root / run_id
    status = json.loads((folder / "status.json").read_text())
    status.update(state=state, error="boom" if state == "failed" else "")
    (folder / "status.json").write_text(json.dumps(status))
    if state == "done":
        (folder / "metrics.json").write_text(json.dumps(fake_metrics(folder, ppl, size_mb)))
    return run_id


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


def test_list_get_rename_delete_and_persistence(root):
    a = fake_run(root, ppl=12.0, size_mb=3.0)
    b = fake_run(root, ppl=15.0, size_mb=2.0, state="failed")
    runs.rename(b, "second", root)
    listed = runs.list(root=root)
    assert [r.id for r in listed] == [b, a]  # newest first
    assert listed[0].state == "failed" and listed[0].error == "boom" and listed[0].name == "second"
    assert listed[1].state == "done" and listed[1].params_after == 750 and listed[1].name == "ppl 12.0"
    assert listed[1].metrics["pruned"]["ppl/wikitext2"] == 12.0
    assert listed[1].model_dir == str(root / a / "model") and listed[1].plan_path == str(root / a / "plan.json")

    runs.rename(a, "  best run ", root)
    assert runs.get(a, root).name == "best run"  # a restart reads the same directories: nothing is held in memory
    assert [r.id for r in runs.list(states=("done",), root=root)] == [a]
    with pytest.raises(MiniLLMError, match="empty"):
        runs.rename(a, " ", root)
    with pytest.raises(MiniLLMError, match="no run"):
        runs.rename("nosuchrun1", "x", root)

    runs.delete(a, root)
    assert not (root / a).exists()
    assert [r.id for r in runs.list(root=root)] == [b]
    with pytest.raises(MiniLLMError, match="no run"):
        runs.get(a, root)


def test_reads_write_nothing(root):
    done = fake_run(root, ppl=12.0, size_mb=3.0)
    queued = runs.submit(runs.RunSpec(model="tiny", plan=hand_plan()), root, start=False)  # no worker yet
    running = fake_run(root, ppl=15.0, size_mb=2.0, state="running")
    folder = root / running
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder)])  # a live "worker"
    try:
        status = json.loads((folder / "status.json").read_text())
        (folder / "status.json").write_text(json.dumps(status | {"pid": worker.pid}))
        before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
        for _ in range(2):
            assert {r.id: r.state for r in runs.list(root=root)} == {done: "done", queued: "queued",
                                                                      running: "running"}
            for run_id in (done, queued, running):
                runs.get(run_id, root)
                runs.status(run_id, root)
        assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    finally:
        worker.kill()
        worker.wait()


def test_running_run_follows_its_worker(root):
    run_id = runs.submit(runs.RunSpec(model="tiny", plan=hand_plan()), root, start=False)
    (root / run_id / "pid").write_text("999999999")  # no such process: the worker is gone
    run = runs.get(run_id, root)
    assert run.state == "failed" and "process ended unexpectedly" in run.error
    assert json.loads((root / run_id / "status.json").read_text())["state"] == "failed"  # recorded once


def test_exports(root):
    a = fake_run(root, ppl=12.0, size_mb=3.0)
    rows = list(csv.DictReader(io.StringIO(runs.metrics_csv([a], root))))
    assert rows[0]["pruned:ppl/wikitext2"] == "12.0" and rows[0]["original:size_mb"] == "4.0"
    assert rows[0]["comparison:kl/wikitext2"] == "0.5"
    data = json.loads(runs.metrics_json([a], root))
    assert data[0]["id"] == a and data[0]["flat"]["pruned:params"] == 750
    table = {r["metric"]: r for r in runs.comparison_rows(runs.get(a, root))}
    assert table["parameters"]["retained %"] == pytest.approx(75.0)
    assert table["perplexity wikitext2"]["retained %"] == pytest.approx(120.0)


def test_headline_and_table_state_the_trade_off_with_directions(root):
    run = runs.get(fake_run(root, ppl=29.4, size_mb=3.0), root)
    run.metrics["comparison"]["speedup/decode/bs1"] = 1.2
    run.metrics["details"] = {"pruned": {"perplexity": {"wikitext2": {"n_windows": 40, "seq_len": 128}}}}
    assert runs.headline(run) == ("25% smaller (4.0 -> 3.0 MB); perplexity (wikitext2) 10.0 -> 29.4, x2.94 worse; 80% "
                                  "of next tokens unchanged; decoding x1.20 faster (PyTorch, batch 1)")
    assert runs.protocol(run) == "Measured on wikitext2: 40 windows of 128 tokens."
    table = {r["metric"]: r for r in runs.comparison_table(run)}
    assert table["parameters"] == {"metric": "parameters", "original": "1,000", "pruned": "750",
                                   "change": "↓ x0.75 better"}
    assert table["perplexity wikitext2"]["change"] == "↑ x2.94 worse"  # lower is better: no "294 %" anymore
    assert table["decode tokens/s, batch 1"]["pruned"] == "120.0 tok/s"
    assert table["decode tokens/s, batch 1"]["change"] == "↑ x1.20 better"
    assert runs.comparison_tile("agreement/wikitext2", 0.8) == ("next tokens unchanged (wikitext2)", "80.0%")
    assert runs.comparison_tile("speedup/llamacpp_decode_tps/t1", 1.234) == (
        "decode speed-up in llama.cpp, 1 thread(s)", "x1.23")
    run.metrics["recovered"] = {"params": 750, "ppl/wikitext2": 15.0}  # a run with recovery: shown beside
    assert runs.headline(run).startswith("25% smaller (4.0 -> 3.0 MB); perplexity (wikitext2) 10.0 -> 29.4, x2.94 "
                                         "worse; after recovery 15.0, x1.50;")
    table = {r["metric"]: r for r in runs.comparison_table(run)}
    assert table["perplexity wikitext2"]["after recovery"] == "15.00"
    assert table["perplexity wikitext2"]["change after recovery"] == "↑ x1.50 worse"


def test_size_quality_figure_has_the_original_on_a_log_axis(root):
    from ui.figures import pareto_figure

    done = [runs.get(fake_run(root, ppl, size), root) for ppl, size in ((12.0, 3.0), (28_000.0, 2.0))]
    assert runs.dense_points(done) == [(4.0, 10.0, "tiny")]
    fig = pareto_figure(done)
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.range[0] == 0
    original = next(t for t in fig.data if t.name == "original")
    assert list(original.x) == [4.0] and list(original.y) == [10.0]
    assert list(next(t for t in fig.data if t.name == "pruned runs").text) == ["ppl 12.0", "ppl 28000.0"]


def test_report_html_embeds_figures_and_plotly(root):
    ids = [fake_run(root, ppl, size) for ppl, size in ((12.0, 3.0), (11.0, 3.5))]
    page = report_html([runs.get(i, root) for i in ids])
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("Plotly.newPlot") == 1 + 2 * len(ids)  # Pareto + (comparison, widths) per run
    assert "Pareto front" in page and "kept widths" in page
    assert page.count('"plot_bgcolor":"white"') == 1 + 2 * len(ids)  # plotly_white, fixed: never the server's theme
    assert "x1.20 better" in page and "25% smaller" in page  # the formatted table and the headline
    assert len(page) > 1_000_000  # plotly.js is inlined, so the file works offline
    small = report_html([runs.get(ids[0], root)], offline=False)
    assert len(small) < 1_500_000 and "cdn.plot.ly" in small and small.count("Plotly.newPlot") == 2
    with pytest.raises(MiniLLMError, match="at least one run"):
        report_html([])


def test_pareto_front():
    points = [(3.0, 12.0), (2.0, 15.0), (3.5, 11.0), (3.2, 13.0), (2.0, 16.0)]
    assert runs.pareto_front(points) == [1, 0, 2]
    assert runs.pareto_front([]) == []


def test_delete_refuses_paths_outside_the_root(root, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    a = fake_run(root, ppl=12.0, size_mb=3.0)
    for item in (root / a).iterdir():
        item.rename(outside / item.name)
    (root / a).rmdir()
    (root / a).symlink_to(outside)  # a run directory that is a link to somewhere else
    with pytest.raises(MiniLLMError, match="refusing"):
        runs.delete(a, root)
    assert (outside / "spec.json").is_file()


def test_spec_round_trips_and_validates():
    spec = runs.RunSpec(model="tiny", plan=hand_plan(), name="x", evaluate_original=False,
                        evaluation=runs.eval_config(perplexity=("ptb",), tasks=("piqa",), limit=None, seq_len=64),
                        recovery=RecoveryConfig(rank=4, alpha=8.0, target_modules=("q_proj",)))
    assert runs.RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # KL/agreement on the windows the run evaluates, never on more (at most 16)
    assert [runs.eval_config(limit=n).compare_windows for n in (8, 40, None)] == [8, 16, 16]
    with pytest.raises(MiniLLMError, match="allowed: wikitext2, ptb"):
        runs.eval_config(perplexity=("lambada",))
    with pytest.raises(MiniLLMError, match="limit"):
        runs.eval_config(limit=0)
    with pytest.raises(MiniLLMError, match="seq_len"):
        runs.RunSpec(model="x", plan=hand_plan(), evaluation=runs.eval_config(seq_len=1))
    with pytest.raises(MiniLLMError, match="plan must be a PruningPlan"):
        runs.RunSpec(model="x", plan=hand_plan().to_dict())
    with pytest.raises(MiniLLMError, match="bad recovery settings"):
        runs.RunSpec.from_dict(spec.to_dict() | {"recovery": {"rnak": 8}})
    with pytest.raises(MiniLLMError, match="unsupported run spec format"):
        runs.RunSpec.from_dict(spec.to_dict() | {"format": "minillm.runspec/9"})


# --- a run directory written before the runs package -------------------------------------------------------------

OLD_ID = "oldRunAbc123"


def old_layout_run(root: Path) -> Path:
    """What `jobs.submit` + the worker + `RunStore` left: spec.json in the flat JobSpec layout, status.json with
    `job_id`, metrics.json, plan.json, model/, and the `runs.sqlite` index holding the run's (renamed) name."""
    folder = root / OLD_ID
    (folder / "model").mkdir(parents=True)
    plan = hand_plan().to_dict()
    (folder / "spec.json").write_text(json.dumps({
        "model": "tiny", "plan": plan, "perplexity": ["wikitext2", "ptb"], "tasks": [], "limit": 8, "seq_len": 64,
        "recovery": {"rank": 4, "alpha": 8.0, "max_steps": 3}, "evaluate_original": True, "measure_speed": False,
        "dtype": "auto", "device": "cpu", "data_dir": "/data", "name": "", "extra": {}}))
    created = time.time() - 3600
    (folder / "status.json").write_text(json.dumps({
        "job_id": OLD_ID, "state": "done", "step": "evaluate recovered", "step_index": 8, "steps": 8, "done": 1,
        "total": 1, "error": "", "pid": 4242, "created": created, "started": created + 1, "updated": created + 60,
        "finished": created + 60}))
    (folder / "metrics.json").write_text(json.dumps(fake_metrics(folder, 12.0, 3.0)))
    (folder / "plan.json").write_text(json.dumps(plan))
    with sqlite3.connect(root / "runs.sqlite") as db:
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, model TEXT "
                   "NOT NULL, scorer TEXT NOT NULL, ratio REAL NOT NULL, state TEXT NOT NULL, error TEXT NOT NULL "
                   "DEFAULT '', params_before INTEGER, params_after INTEGER, metrics TEXT NOT NULL DEFAULT '{}', "
                   "run_dir TEXT NOT NULL, model_dir TEXT NOT NULL DEFAULT '', plan_path TEXT NOT NULL DEFAULT '')")
        db.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (OLD_ID, "my old run", created, "tiny", "magnitude", 0.25, "done", "", 1000, 750, "{}",
                    str(folder), str(folder / "model"), str(folder / "plan.json")))
    db.close()
    return folder


def test_an_old_run_directory_opens_and_lists(root):
    folder = old_layout_run(root)
    new = fake_run(root, ppl=11.0, size_mb=3.5)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert [r.id for r in runs.list(root=root)] == [new, OLD_ID]  # newest first, the old one included
    old = runs.get(OLD_ID, root)
    assert (old.name, old.state, old.model, old.scorer, old.ratio) == ("my old run", "done", "tiny", "magnitude", 0.25)
    assert old.created == json.loads((folder / "status.json").read_text())["created"]
    assert old.params_before == 1000 and old.params_after == 750 and old.metrics["schema"] == "minillm.run/1"
    assert old.model_dir == str(folder / "model") and old.plan_path == str(folder / "plan.json")
    assert runs.status(OLD_ID, root).id == OLD_ID
    assert runs.comparison_rows(old)[0]["metric"] == "parameters"
    spec = runs.read_spec(OLD_ID, root)  # the flat JobSpec fields land in the typed configs
    assert spec.evaluation == runs.eval_config(perplexity=("wikitext2", "ptb"), limit=8, seq_len=64,
                                               measure_speed=False, data_dir="/data")
    assert spec.recovery == RecoveryConfig(rank=4, alpha=8.0, max_steps=3, data_dir="/data")
    assert spec.plan == hand_plan() and spec.device == "cpu" and spec.label == "magnitude 25%"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # the old index is only read

    runs.rename(OLD_ID, "renamed again", root)
    assert runs.get(OLD_ID, root).name == "renamed again"
    assert "oldRunAbc123" in report_html([runs.get(OLD_ID, root)])
    runs.delete(OLD_ID, root)
    assert [r.id for r in runs.list(root=root)] == [new]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"pruned": 3}', ""])
def test_one_unreadable_metrics_file_breaks_only_its_own_run(root, content):
    """Issue 14: one run's damaged metrics.json made the run list (and the pages) fail for every run."""
    good, bad = fake_run(root, ppl=12.0, size_mb=3.0), fake_run(root, ppl=13.0, size_mb=3.0)
    (root / bad / "metrics.json").write_text(content)
    listed = {r.id: r for r in runs.list(root=root)}
    assert listed[good].state == "done" and listed[good].metrics["pruned"]["ppl/wikitext2"] == 12.0
    assert listed[bad].state == "failed" and str(root / bad / "metrics.json") in listed[bad].error
    assert [r.id for r in runs.list(states=("done",), root=root)] == [good]
    runs.delete(bad, root)  # a broken run can still be removed
    assert [r.id for r in runs.list(root=root)] == [good]


def test_two_processes_submitting_at_once_lose_and_duplicate_nothing(tiny_model_dir, runs_dir):
    """Runs are directories built aside and renamed into place under random ids: concurrent writers cannot clash."""
    code = ("import sys; from pathlib import Path; from minillm_core import runs; from tests.helpers import spec_for\n"
            "ids = [runs.submit(spec_for(Path(sys.argv[1]), name=f'{sys.argv[2]}-{i}'), sys.argv[3], start=False)"
            " for i in range(6)]\nprint(' '.join(ids))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model_dir), tag, str(runs_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
             for tag in ("a", "b")]
    made = [i for p in procs for i in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs) and len(made) == len(set(made)) == 12
    listed = runs.list(root=runs_dir)
    assert sorted(r.id for r in listed) == sorted(made)
    assert sorted(r.name for r in listed) == sorted(f"{t}-{i}" for t in "ab" for i in range(6))
    assert not [p for p in runs_dir.iterdir() if p.name.startswith(".")]  # no half-built run left behind

"""The run store: a SQLite index of prune-and-evaluate runs under the runs root, artifacts in each run's directory.

A run is a job directory (see `jobs`); the index caches its name, state and metrics so listing is cheap. It is shared
by every caller of the same root (all dashboard sessions see all runs); exports are CSV/JSON and a standalone HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minillm_core import jobs
from minillm_core.errors import MiniLLMError

INDEX_FILE = "runs.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    scorer TEXT NOT NULL,
    ratio REAL NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    params_before INTEGER,
    params_after INTEGER,
    metrics TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT NOT NULL,
    model_dir TEXT NOT NULL DEFAULT '',
    plan_path TEXT NOT NULL DEFAULT ''
)
"""


@dataclass
class Run:
    """One row of the index."""

    id: str
    name: str
    created: float
    model: str
    scorer: str
    ratio: float
    state: str
    run_dir: str
    error: str = ""
    params_before: int | None = None
    params_after: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_dir: str = ""
    plan_path: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in jobs.TERMINAL

    def flat_metrics(self) -> dict[str, Any]:
        """One flat row: sizes, parameters, perplexities and speed of the original and the pruned model."""
        row: dict[str, Any] = {"run": self.id, "name": self.name, "model": self.model, "scorer": self.scorer,
                               "ratio": self.ratio, "state": self.state}
        for which in ("original", "pruned", "retained", "comparison"):
            for key, value in (self.metrics.get(which) or {}).items():
                row[f"{which}:{key}"] = value
        return row


class RunStore:
    """CRUD over the runs index at `root/runs.sqlite`; directories live at `root/<run id>`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = jobs.runs_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: safe across Streamlit's threads and concurrent processes.
        with closing(sqlite3.connect(self.root / INDEX_FILE, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            with conn:
                yield conn

    # --- create / read -----------------------------------------------------------------------------------------

    def add_job(self, job_id: str, name: str = "") -> Run:
        """Index a submitted job (see `jobs.submit`) as a run."""
        spec = jobs.read_spec(job_id, self.root)
        plan = spec.plan
        run = Run(
            id=job_id, name=name or spec.name or f"{plan.get('scorer', '?')} {plan['config']['ratio']:.0%}",
            created=time.time(), model=spec.model, scorer=str(plan.get("scorer", "")),
            ratio=float(plan["config"]["ratio"]), state="queued", run_dir=str(self.root / job_id),
            params_before=plan.get("original_params"), params_after=plan.get("predicted_params"),
        )
        with self._db() as db:
            db.execute(
                "INSERT INTO runs (id, name, created, model, scorer, ratio, state, error, params_before, params_after,"
                " metrics, run_dir, model_dir, plan_path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.id, run.name, run.created, run.model, run.scorer, run.ratio, run.state, run.error,
                 run.params_before, run.params_after, "{}", run.run_dir, "", ""),
            )
        return run

    def _row(self, row: sqlite3.Row) -> Run:
        data = dict(row)
        data["metrics"] = json.loads(data["metrics"] or "{}")
        return Run(**data)

    def get(self, run_id: str, refresh: bool = True) -> Run:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise MiniLLMError(f"no run {run_id!r} in {self.root}")
        run = self._row(row)
        return self.refresh(run) if refresh and not run.terminal else run

    def list(self, states: Sequence[str] | None = None) -> list[Run]:
        """Every run, newest first (running ones refreshed from their job status)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        runs = [self.refresh(r) if not r.terminal else r for r in map(self._row, rows)]
        return [r for r in runs if states is None or r.state in states]

    def refresh(self, run: Run) -> Run:
        """Pull the job's status (and metrics once done) from its directory into the index."""
        try:
            st = jobs.status(run.id, self.root)
        except MiniLLMError as exc:  # directory removed behind our back
            st = jobs.JobStatus(run.id, state="failed", error=str(exc))
        run.state, run.error = st.state, st.error
        if st.state == "done":
            metrics = jobs.read_metrics(run.id, self.root) or {}
            run.metrics = metrics
            run.params_after = (metrics.get("pruned") or {}).get("params", run.params_after)
            run.model_dir = metrics.get("model_dir", str(Path(run.run_dir) / jobs.MODEL_SUBDIR))
            run.plan_path = str(Path(run.run_dir) / jobs.PLAN_FILE)
        with self._db() as db:
            db.execute("UPDATE runs SET state=?, error=?, metrics=?, params_after=?, model_dir=?, plan_path=? "
                       "WHERE id=?", (run.state, run.error, json.dumps(run.metrics), run.params_after,
                                      run.model_dir, run.plan_path, run.id))
        return run

    # --- update / delete ---------------------------------------------------------------------------------------

    def rename(self, run_id: str, name: str) -> Run:
        name = name.strip()
        if not name:
            raise MiniLLMError("a run name cannot be empty")
        if len(name) > 200:
            raise MiniLLMError("a run name is at most 200 characters")
        with self._db() as db:
            if db.execute("UPDATE runs SET name=? WHERE id=?", (name, run_id)).rowcount == 0:
                raise MiniLLMError(f"no run {run_id!r} in {self.root}")
        return self.get(run_id, refresh=False)

    def delete(self, run_id: str) -> None:
        """Remove the run from the index and its directory from disk (a running job is cancelled first)."""
        run = self.get(run_id)
        if not run.terminal:
            jobs.cancel(run_id, self.root)
        folder = Path(run.run_dir).resolve()
        if folder.parent != self.root:  # never delete outside the runs root
            raise MiniLLMError(f"refusing to delete {folder}: not inside {self.root}")
        shutil.rmtree(folder, ignore_errors=True)
        with self._db() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # --- exports -----------------------------------------------------------------------------------------------

    def metrics_json(self, run_ids: Sequence[str]) -> str:
        return json.dumps([{**asdict(self.get(i)), "flat": self.get(i).flat_metrics()} for i in run_ids], indent=1)

    def metrics_csv(self, run_ids: Sequence[str]) -> str:
        return metrics_csv([self.get(i) for i in run_ids])

    def report_html(self, run_ids: Sequence[str]) -> str:
        return report_html([self.get(i) for i in run_ids])


def metrics_csv(runs: Sequence[Run]) -> str:
    rows = [r.flat_metrics() for r in runs]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- comparisons and figures (shared by the dashboard and the HTML report) ------------------------------------------


def quality_of(run: Run, dataset: str | None = None) -> tuple[str, float] | None:
    """(dataset, pruned perplexity) of a finished run: `dataset` or its first benchmark; None when not measured."""
    ppl = {k.removeprefix("ppl/"): v for k, v in (run.metrics.get("pruned") or {}).items() if k.startswith("ppl/")}
    name = dataset if dataset in ppl else next(iter(ppl), None)
    return (name, float(ppl[name])) if name else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both minimised: size and perplexity), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


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


def comparison_figure(run: Run):
    """Grouped bars: original vs pruned, each metric as % of the original."""
    import plotly.graph_objects as go

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


def pareto_figure(runs: Sequence[Run], dataset: str | None = None):
    """Size (MB) vs pruned perplexity for finished runs, with the Pareto front drawn as a line."""
    import plotly.graph_objects as go

    pts, labels = [], []
    for r in runs:
        q = quality_of(r, dataset)
        size = (r.metrics.get("pruned") or {}).get("size_mb")
        if q is not None and size is not None:
            pts.append((float(size), q[1]))
            labels.append(f"{r.name} ({r.id})")
    front = pareto_front(pts)
    fig = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="runs",
                               text=labels, hovertemplate="%{text}<br>%{x:.2f} MB, ppl %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[pts[i][0] for i in front], y=[pts[i][1] for i in front], mode="lines+markers",
                             name="Pareto front", line={"dash": "dash"}))
    fig.update_layout(title="Size vs quality across runs", xaxis_title="pruned size (MB)",
                      yaxis_title=f"perplexity{f' ({dataset})' if dataset else ''}")
    return fig


def widths_figure(rows: Sequence[dict[str, int]], title: str = "Kept widths per layer"):
    """Kept vs original heads and channels per layer, from `PlanSummary.rows` (a plan preview or a run's summary)."""
    import plotly.graph_objects as go
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


def report_html(runs: Sequence[Run]) -> str:
    """A standalone HTML report (plotly.js embedded once, so it opens offline) for one or several runs."""
    if not runs:
        raise MiniLLMError("choose at least one run for the report")
    figures = [pareto_figure(runs)] if len(runs) > 1 else []
    for r in runs:
        if r.state == "done":
            figures += [comparison_figure(r),
                        widths_figure((r.metrics.get("summary") or {}).get("rows") or [], f"{r.name}: kept widths")]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    tables = "".join(_run_section(r) for r in runs)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MINI-LLM Studio report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>MINI-LLM Studio report</h1><p>{len(runs)} run(s), generated {created}.</p>"
        f"{tables}<h2>Figures</h2>{''.join(parts) or '<p>No finished run to plot.</p>'}</body></html>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else html.escape(str(v))


def _run_section(run: Run) -> str:
    rows = "".join(f"<tr><th>{html.escape(r['metric'])}</th><td>{_fmt(r['original'])}</td><td>{_fmt(r['pruned'])}"
                   f"</td><td>{_fmt(r['retained %'])}</td></tr>" for r in comparison_rows(run))
    error = f"<p>Error: {html.escape(run.error)}</p>" if run.error else ""
    return (f"<h2>{html.escape(run.name)} <small>({html.escape(run.id)})</small></h2>"
            f"<p>model {html.escape(run.model)}, scorer {html.escape(run.scorer)}, ratio {run.ratio:.1%}, "
            f"state {html.escape(run.state)}; pruned model: {html.escape(run.model_dir or '-')}</p>{error}"
            f"<table><tr><th>metric</th><th>original</th><th>pruned</th><th>retained %</th></tr>{rows}</table>")

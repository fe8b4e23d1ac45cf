"""The standalone HTML report of one or several runs: their comparison tables and Plotly figures in one file.

plotly.js is embedded once, so the downloaded report opens offline.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from minillm_core.errors import MiniLLMError
from minillm_core.runs import Run, comparison_table, headline, protocol
from ui.figures import comparison_figure, pareto_figure, widths_figure


def report_html(runs: Sequence[Run]) -> str:
    """The report page: a section (settings, error, metric table) per run, then the figures of the finished ones."""
    if not runs:
        raise MiniLLMError("choose at least one run for the report")
    figures = [pareto_figure(list(runs))] if len(runs) > 1 else []
    for r in runs:
        if r.state == "done":
            figures += [comparison_figure(r),
                        widths_figure((r.metrics.get("summary") or {}).get("rows") or [], f"{r.name}: kept widths")]
    # A fixed template: figures built inside the Streamlit server otherwise carry its theme placeholders, which a
    # standalone page cannot resolve (every chart came out black).
    parts = [fig.update_layout(template="plotly_white").to_html(full_html=False, include_plotlyjs=(i == 0))
             for i, fig in enumerate(figures)]
    tables = "".join(_run_section(r) for r in runs)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MINI-LLM Studio report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>MINI-LLM Studio report</h1><p>{len(runs)} run(s), generated {created}.</p>"
        f"{tables}<h2>Figures</h2>{''.join(parts) or '<p>No finished run to plot.</p>'}</body></html>"
    )


def _run_section(run: Run) -> str:
    rows = "".join(f"<tr><th>{html.escape(r['metric'])}</th><td>{html.escape(r['original'])}</td>"
                   f"<td>{html.escape(r['pruned'])}</td><td>{html.escape(r['change'])}</td></tr>"
                   for r in comparison_table(run))
    summary = (f"<p><b>{html.escape(headline(run))}</b><br>{html.escape(protocol(run))}</p>"
               if run.state == "done" else "")
    error = f"<p>Error: {html.escape(run.error)}</p>" if run.error else ""
    return (f"<h2>{html.escape(run.name)} <small>({html.escape(run.id)})</small></h2>"
            f"<p>model {html.escape(run.model)}, scorer {html.escape(run.scorer)}, ratio {run.ratio:.1%}, "
            f"state {html.escape(run.state)}; pruned model: {html.escape(run.model_dir or '-')}</p>{error}{summary}"
            f"<table><tr><th>metric</th><th>original</th><th>pruned</th><th>change</th></tr>{rows}</table>")

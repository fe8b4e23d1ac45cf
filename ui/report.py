"""The standalone HTML report of one or several runs: their comparison tables and Plotly figures in one file.

plotly.js is embedded once (`offline`, ~4.6 MB: the report opens with no network), or loaded from its CDN (a few
hundred KB for a run).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence

from minillm_core.errors import MiniLLMError
from minillm_core.runs import ABResult, Run, ab_results, comparison_table, headline, protocol
from ui.figures import ab_figure, comparison_figure, pareto_figure, widths_figure

REPORT_WORST = 5  # prompts per A/B result shown in the report (the worst first; the CSV has them all)
DIFF_STYLE = ("<style>.ab-resp{white-space:pre-wrap;font-family:monospace;font-size:0.9em;border:1px solid #ccc;"
              "border-radius:4px;padding:6px}.ab-resp mark{background:#ffd6a5}</style>")


def report_html(runs: Sequence[Run], offline: bool = True) -> str:
    """The report page: a section (settings, error, metric table) per run, then the figures of the finished ones;
    plotly.js inlined once when `offline`, else a script tag for its CDN."""
    if not runs:
        raise MiniLLMError("choose at least one run for the report")
    figures = [pareto_figure(list(runs))] if len(runs) > 1 else []
    for r in runs:
        if r.state == "done":
            figures += [comparison_figure(r),
                        widths_figure((r.metrics.get("summary") or {}).get("rows") or [], f"{r.name}: kept widths")]
            figures += [ab_figure(a) for a in _ab_of(r)[:1]]
    # A fixed template: figures built inside the Streamlit server otherwise carry its theme placeholders, which a
    # standalone page cannot resolve (every chart came out black).
    bundle = True if offline else "cdn"
    parts = [fig.update_layout(template="plotly_white").to_html(full_html=False,
                                                                include_plotlyjs=bundle if i == 0 else False)
             for i, fig in enumerate(figures)]
    tables = "".join(_run_section(r) for r in runs)
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MINI-LLM Studio report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>"
        f"{DIFF_STYLE}</head><body>"
        f"<h1>MINI-LLM Studio report</h1><p>{len(runs)} run(s), generated {created}.</p>"
        f"{tables}<h2>Figures</h2>{''.join(parts) or '<p>No finished run to plot.</p>'}</body></html>"
    )


def _run_section(run: Run) -> str:
    table = comparison_table(run)
    columns = list(table[0]) if table else ["metric", "original", "pruned", "change"]  # + recovered, with recovery
    rows = "".join("<tr>" + "".join(f"<{'th' if c == 'metric' else 'td'}>{html.escape(r[c])}"
                                    f"</{'th' if c == 'metric' else 'td'}>" for c in columns) + "</tr>" for r in table)
    summary = (f"<p><b>{html.escape(headline(run))}</b><br>{html.escape(protocol(run))}</p>"
               if run.state == "done" else "")
    error = f"<p>Error: {html.escape(run.error)}</p>" if run.error else ""
    ab = "".join(ab_section(a) for a in _ab_of(run)[:1]) if run.state == "done" else ""
    return (f"<h2>{html.escape(run.name)} <small>({html.escape(run.id)})</small></h2>"
            f"<p>model {html.escape(run.model)}, scorer {html.escape(run.scorer)}, ratio {run.ratio:.1%}, "
            f"state {html.escape(run.state)}; pruned model: {html.escape(run.model_dir or '-')}</p>{error}{summary}"
            f"<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in columns)}</tr>{rows}</table>{ab}")


def _ab_of(run: Run) -> list[ABResult]:
    """The run's A/B results, newest first ([] for a run directory the store cannot read them from)."""
    try:
        return ab_results(run.id, os.path.dirname(run.run_dir))
    except MiniLLMError:
        return []


def common_start(a: str, b: str) -> int:
    """Length of the common beginning of two texts, backed off to a word start when they part mid-word."""
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if n >= min(len(a), len(b)):  # one text is the other's beginning
        return n
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n


def diff_html(original: str, pruned: str) -> str:
    """Two responses side by side; what follows their common beginning is highlighted in each (escaped HTML)."""
    n = common_start(original, pruned)
    cells = "".join(f"<td style='vertical-align:top;text-align:left;width:50%'><b>{label}</b><div class='ab-resp'>"
                    f"{html.escape(text[:n])}<mark>{html.escape(text[n:])}</mark></div></td>"
                    for label, text in (("original", original), ("pruned", pruned)))
    return f"<table style='width:100%;border:none'><tr>{cells}</tr></table>"


def ab_section(result: ABResult) -> str:
    """An A/B result in the report: its headline, the suite-level metrics and the prompts that differ most."""
    metrics = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in result.comparison().items())
    worst = "".join(f"<h4>{html.escape(r.id)}: agreement {r.agreement:.2f}, KL {r.kl:.3f}</h4>"
                    f"<p>{html.escape(r.prompt)}</p>{diff_html(r.original, r.pruned)}"
                    for r in result.worst(REPORT_WORST))
    return (f"<h3>A/B: {html.escape(result.label)}</h3><p><b>{html.escape(result.headline())}</b></p>"
            f"<table>{metrics}</table><p>The {REPORT_WORST} prompts where the models differ most "
            f"(highlighted: from where the answers part):</p>{worst}")

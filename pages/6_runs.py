"""Runs & report: every recorded run (shared by all sessions), rename/delete, exports, and how to load the model.

Lists what `minillm_core.runs` finds under the runs root, old run directories included; the report is `ui.report`.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from minillm_core import runs
from minillm_core.errors import MiniLLMError
from ui import figures
from ui.report import report_html


def _gguf_download(run: runs.Run) -> None:
    """Write the run's model as GGUF for llama.cpp (once per weight type) and offer the file."""
    st.subheader("Run it in llama.cpp")
    c1, c2 = st.columns([1, 2])
    dtype = c1.selectbox("GGUF weights", runs.GGUF_DTYPES, key="gguf_dtype",
                         help="q8_0 and q4_0 are quantized (the embedding/output matrix stays q8_0 under q4_0).")
    path = runs.gguf_file(run.id, dtype)
    if path is None and c2.button("Write the GGUF file", key="gguf_write"):
        try:
            with st.spinner("Writing the GGUF file (a few seconds per 100M parameters) ..."):
                path = runs.export_gguf(run.id, dtype)
        except MiniLLMError as exc:
            st.error(str(exc))
    if path is not None:
        c2.download_button(f"Download {path.name} ({path.stat().st_size / 1e6:.0f} MB)", path.read_bytes(),
                           file_name=f"{run.id}-{dtype}.gguf", mime="application/octet-stream", key="gguf_download")
        st.code(f"llama-cli -m {run.id}-{dtype}.gguf -p \"The capital of France is\" -n 32", language="bash")


st.title("Runs & report")
recorded = runs.list()
st.caption(f"Run store: `{runs.runs_root()}` (shared by every session of this server).")
if not recorded:
    st.info("No runs recorded yet. Start one on **Prune & evaluate**.")
    st.stop()

table = pd.DataFrame([{
    "id": r.id, "name": r.name, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
    "model": r.model, "scorer": r.scorer, "ratio": r.ratio, "state": r.state,
    "params before": r.params_before, "params after": r.params_after, "error": r.error,
} for r in recorded])
st.dataframe(table, hide_index=True, key="runs_table",
             column_config={"ratio": st.column_config.NumberColumn(format="percent")})

trend = runs.trend_rows(recorded)
if len(trend) > 1:
    with st.expander("Trends across runs: size, speed, memory and quality over time", expanded=False):
        offered = runs.trend_metrics(trend)
        shown = st.multiselect("Metrics", offered, default=offered[:3], format_func=runs.metric_label,
                               key="trend_metrics")
        if shown:
            st.plotly_chart(figures.trend_figure(trend, shown), key="trend_chart")

by_id = {r.id: r for r in recorded}
run_id = st.selectbox("Run", list(by_id), format_func=lambda i: f"{by_id[i].name} · {i} · {by_id[i].state}")
run = by_id[run_id]

c1, c2 = st.columns(2)
with c1.form("rename"):
    new_name = st.text_input("Name", value=run.name)
    if st.form_submit_button("Rename"):
        try:
            runs.rename(run.id, new_name)
        except MiniLLMError as exc:
            st.error(str(exc))
        else:
            st.rerun()
with c2:
    sure = st.checkbox("Yes, delete this run and its files", key="confirm_delete")
    if st.button("Delete run", disabled=not sure, key="delete_run"):
        runs.delete(run.id)
        st.rerun()

st.subheader("Exports")
d1, d2 = st.columns(2)
d1.download_button("Metrics CSV", runs.metrics_csv([run.id]), file_name=f"{run.id}-metrics.csv", mime="text/csv")
d2.download_button("Metrics JSON", runs.metrics_json([run.id]), file_name=f"{run.id}-metrics.json",
                   mime="application/json")
chosen = st.multiselect("Runs in the HTML report", list(by_id), default=[run.id],
                        format_func=lambda i: f"{by_id[i].name} · {i}")
if chosen:
    picked = [by_id[i] for i in chosen]
    r1, r2 = st.columns(2)
    r1.download_button("HTML report", report_html(picked, offline=False), file_name="minillm-report.html",
                       mime="text/html", help="Small: the charts load plotly.js from its CDN when opened.")
    r2.download_button("HTML report, works offline", report_html(picked), file_name="minillm-report-offline.html",
                       mime="text/html", help="plotly.js included (about 4.6 MB more): opens with no network.")

if run.state == "done" and run.model_dir:
    st.subheader("The pruned model")
    st.markdown(f"Saved in `{run.model_dir}`.")
    try:
        plain = runs.loads_with_from_pretrained(run.id)
    except MiniLLMError as exc:
        st.error(str(exc))
        st.stop()
    code = f"import minillm_core\nmodel, tokenizer = minillm_core.load_pruned({run.model_dir!r})"
    if plain:
        code += ("\n\n# or, since every layer kept the same widths:\nfrom transformers import AutoModelForCausalLM\n"
                 f"model = AutoModelForCausalLM.from_pretrained({run.model_dir!r})")
    st.code(code, language="python")
    _gguf_download(run)
elif run.error:
    st.error(run.error)

"""A/B test: a prompt suite through the original and a run's pruned model, compared prompt by prompt.

The models are the cached handles (shared, locked while generating); results are saved with the run (`runs.save_ab`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from ui import figures, state
from ui.models import model_handle, pruned_handle
from ui.report import DIFF_STYLE, diff_html
from ui.widgets import run_picker


def ab_form() -> workflow.ABConfig | None:
    """The suite and generation settings; the config when submitted (errors shown), else None."""
    suites = workflow.describe_suites()
    with st.form("ab_form"):
        c1, c2, c3 = st.columns([2, 1, 1])
        name = c1.selectbox("Prompt suite", list(suites), key="ab_suite", format_func=lambda s: f"{s}: {suites[s]}")
        tokens = c2.number_input("New tokens per response", 1, 256, 32, key="ab_tokens")
        limit = c3.number_input("Prompts (0 = all)", 0, 2000, 0, key="ab_limit",
                                help="The first N prompts of the suite; a data set gives 32 unless you say more.")
        upload = st.file_uploader("Or your own prompt file, used instead of the suite: .jsonl ({'prompt', "
                                  "'reference', 'tag'} or {'messages'} per line), .csv (columns prompt, reference, "
                                  "tag) or .txt (one prompt per line)", type=["jsonl", "csv", "txt"], key="ab_upload")
        sample = st.checkbox("Seeded sampling instead of greedy decoding", key="ab_sample")
        if not st.form_submit_button("Run A/B", type="primary"):
            return None
    if upload is not None:  # the user's name only as a label: letters, digits, - and _ (never a path)
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(upload.name).stem)[:40] or "prompts"
        path = state.upload_dir() / f"{stem}{Path(upload.name).suffix.lower()}"
        path.write_bytes(upload.getvalue())
        name = str(path)
    with state.user_errors():
        return workflow.ABConfig(prompts=name, max_new_tokens=int(tokens), limit=int(limit) or None, sample=sample)


def run_ab(run: runs.Run, config: workflow.ABConfig) -> None:
    """Both models answer the suite here (a progress bar per batch); the result is saved with the run."""
    with state.user_errors():
        suite = workflow.load_suite(config.prompts, config.limit, os.environ.get("MINILLM_DATA_DIR"))
        original = model_handle(run.model, st.session_state[state.DTYPE], st.session_state[state.DEVICE])
        pruned = pruned_handle(run.model_dir, st.session_state[state.DTYPE], st.session_state[state.DEVICE])
        bar = st.progress(0.0, text=f"{len(suite.prompts)} prompts, both models")

        def progress(done: int, total: int, label: str) -> None:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total} prompts")

        with original.lock, pruned.lock:  # cached models are shared by every session
            result = workflow.ab_test(original.loaded, pruned.loaded, suite, config, progress=progress)
        runs.save_ab(run.id, result)
    bar.progress(1.0, text=f"done in {result.seconds:.1f} s")


def tiles(result: runs.ABResult) -> None:
    c, o, p = result.comparison(), result.model_metrics("original"), result.model_metrics("pruned")
    shown = [("identical answers", f"{c['ab/exact_match']:.0%}", None),
             ("token agreement", f"{c['ab/agreement']:.1%}", f"worst prompt {c['ab/min_agreement']:.0%}"),
             ("KL per token", f"{c['ab/kl']:.3f}", f"worst prompt {c['ab/worst_kl']:.3f}"),
             ("ROUGE-L / chrF", f"{c['ab/rougeL']:.2f} / {c['ab/chrf']:.0f}", None)]
    if o and p:
        shown.append(("reference answers found", f"{p['ab/ref_match']:.0%}", f"original {o['ab/ref_match']:.0%}"))
    for col, (label, value, note) in zip(st.columns(len(shown)), shown, strict=True):
        col.metric(label, value, help=note)
        if note:
            col.caption(note)


def prompt_table(result: runs.ABResult) -> pd.DataFrame:
    """One row per prompt, the prompts that differ most first."""
    return pd.DataFrame([{
        "id": r.id, "tag": r.tag, "agreement": r.agreement, "KL": r.kl, "ROUGE-L": r.rougeL, "chrF": r.chrf,
        "parts at token": r.first_divergence, "reference found (orig / pruned)":
            f"{'yes' if r.ref_match['original'] else 'no'} / {'yes' if r.ref_match['pruned'] else 'no'}"
            if r.references else "", "prompt": r.prompt[:80]} for r in result.worst(len(result.records))])


def show(run: runs.Run, result: runs.ABResult) -> None:
    st.markdown(f"#### {result.headline()[:1].upper()}{result.headline()[1:]}")
    st.caption(f"{result.label}. Token agreement and KL are measured on the original's answer (teacher-forced); "
               "ROUGE-L and chrF compare the two answers as text.")
    tiles(result)
    st.plotly_chart(figures.ab_figure(result), key="ab_chart")
    st.dataframe(prompt_table(result), hide_index=True, key="ab_table", column_config={
        "agreement": st.column_config.NumberColumn(format="percent"),
        "KL": st.column_config.NumberColumn(format="%.3f"), "ROUGE-L": st.column_config.NumberColumn(format="%.2f"),
        "chrF": st.column_config.NumberColumn(format="%.0f")})
    by_id = {r.id: r for r in result.records}
    order = [r.id for r in result.worst(len(result.records))]
    chosen = by_id[st.selectbox("Side by side (the prompts that differ most first)", order, key="ab_prompt")]
    st.markdown(f"**Prompt** `{chosen.id}`" + (f" · reference: {' | '.join(chosen.references)}"
                                                if chosen.references else ""))
    st.text(chosen.prompt)
    st.html(DIFF_STYLE + diff_html(chosen.original, chosen.pruned))
    d1, d2 = st.columns(2)
    d1.download_button("Per-prompt CSV", result.to_csv(), file_name=f"{run.id}-ab-{result.suite}.csv",
                       mime="text/csv", key="ab_csv")
    d2.download_button("Full result JSON", json.dumps(result.to_dict(), indent=1),
                       file_name=f"{run.id}-ab-{result.suite}.json", mime="application/json", key="ab_json")


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("A/B test")
st.caption("Both models answer the same prompts with the same settings. Use it before you ship: where does the "
           "pruned model answer differently, and is that acceptable? (`minillm ab` does the same headless.)")
run = run_picker([r for r in runs.list(states=("done",)) if r.model_dir],
                 "No finished run with a saved model yet. Start one on **Prune & evaluate**.")
config = ab_form()
if config is not None:
    run_ab(run, config)
results = runs.ab_results(run.id)
if not results:
    st.info("No A/B result for this run yet: pick a prompt suite and press **Run A/B** (about a second per prompt "
            "on a CPU for the bundled model).")
    st.stop()
labels = [r.label for r in results]
picked = st.selectbox("Result", range(len(results)), format_func=lambda i: labels[i], key="ab_result")
show(run, results[picked])

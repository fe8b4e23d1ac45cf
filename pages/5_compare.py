"""Compare: original vs pruned metrics of a run, size vs quality across runs, and both models' generations.

Runs come from `minillm_core.runs`, figures from `ui.figures`; the generations load the original and the pruned model.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from minillm_core.errors import MiniLLMError
from ui import figures, state
from ui.models import model_handle, pruned_handle, stream_generate
from ui.widgets import run_picker

state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Compare")
done = runs.list(states=("done",))
run = run_picker(done, "No finished run yet. Start one on **Prune & evaluate**.")

# --- one run: original vs pruned --------------------------------------------------------------------------------
st.markdown(f"#### {runs.headline(run)}")
if runs.protocol(run):
    st.caption(runs.protocol(run))
st.dataframe(pd.DataFrame(runs.comparison_table(run)), hide_index=True, key="comparison_table")
comparison = {k: v for k, v in (run.metrics.get("comparison") or {}).items() if not k.startswith("ab/")}
if comparison:  # KL / agreement against the original and measured speed-ups (A/B results: their own line below)
    cols = st.columns(min(len(comparison), 4))
    for i, (key, value) in enumerate(sorted(comparison.items())):
        cols[i % len(cols)].metric(*runs.comparison_tile(key, value))
st.plotly_chart(figures.comparison_figure(run), key="comparison_chart")
layer_rows = (run.metrics.get("summary") or {}).get("rows")
if layer_rows:
    with st.expander("What was removed, layer by layer"):
        st.plotly_chart(figures.architecture_figure(layer_rows, title=f"{run.name}: what each layer keeps"),
                        key="architecture_chart")
ab = runs.ab_results(run.id)
if ab:
    st.markdown(f"**A/B test of the answers** ({ab[0].label}): {ab[0].headline()}.")
st.page_link("pages/7_ab.py", label="A/B-test the answers on a prompt suite", icon=":material/difference:",
             query_params={"job": run.id})

# --- does it pass? ---------------------------------------------------------------------------------------------


def contract_panel(run) -> None:
    """A bundled contract template (or the user's file) checked on this run's measurements and A/B results."""
    st.subheader("Does it pass a quality contract?")
    templates = workflow.contract_templates()
    c1, c2 = st.columns([1, 1])
    choice = c1.selectbox("Contract template", list(templates), key="contract_choice",
                          format_func=lambda t: f"{t}: {templates[t]}")
    upload = c2.file_uploader("or your own contract (.yaml / .json, see README)", type=["yaml", "yml", "json"],
                              key="contract_upload")
    source = choice
    if upload is not None:  # a fixed name in the session's folder: the user's file name never becomes a path
        source = state.upload_dir() / f"contract{os.path.splitext(upload.name)[1].lower()}"
        source.write_bytes(upload.getvalue())
    try:
        contract, results, ab = runs.check_contract(run.id, source)
    except MiniLLMError as exc:
        st.error(str(exc))
        return
    passed = all(r.passed for r in results)
    (st.success if passed else st.error)(f"Contract **{contract.name}**: {'passed' if passed else 'FAILED'} "
                                         f"({sum(r.passed for r in results)} of {len(results)} clauses hold)")
    st.dataframe(pd.DataFrame([{"clause": r.clause.describe(), "measured": "not measured" if r.value is None
                                else f"{r.value:.4g}",
                                "verdict": "pass" if r.passed else "FAIL"} for r in results]),
                 hide_index=True, key="contract_table")
    if contract.needs_ab and ab is None:
        suite = os.path.basename(contract.prompts or "facts")
        st.info(f"Its ab/ clauses read an A/B test on the **{suite}** suite, which this run does not have yet.")
        st.page_link("pages/7_ab.py", label="Run it on the A/B test page", icon=":material/difference:",
                     query_params={"job": run.id})
    elif ab is not None:
        st.caption(f"A/B metrics from: {ab.label}.")


contract_panel(run)

# --- across runs ------------------------------------------------------------------------------------------------
datasets = sorted({k.removeprefix("ppl/") for r in done for k in (r.metrics.get("pruned") or {})
                   if k.startswith("ppl/")})
if datasets:
    ds = st.selectbox("Quality measure for the scatter", datasets)
    st.plotly_chart(figures.pareto_figure(done, ds), key="pareto_chart")

# --- run vs run -------------------------------------------------------------------------------------------------
if len(done) >= 2:
    st.subheader("Two runs side by side")
    labels = {r.id: f"{r.name} ({r.id})" for r in done}
    ids = list(labels)
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", ids, index=ids.index(run.id), format_func=labels.get, key="vs_a")
    b = c2.selectbox("Run B", ids, index=1 if ids[0] == a else 0, format_func=labels.get, key="vs_b")
    metrics, differ, same = runs.side_by_side(a, b)
    st.dataframe(pd.DataFrame(metrics), hide_index=True, key="vs_metrics")
    if differ:
        st.markdown(f"**Settings that differ** ({same} others are the same)")
        st.dataframe(pd.DataFrame(differ), hide_index=True, key="vs_settings")
    else:
        st.caption(f"The two runs have the same settings ({same} compared).")

# --- threshold search curve -------------------------------------------------------------------------------------
with st.expander("Threshold search curve (from `minillm search --out search.json`)"):
    upload = st.file_uploader("search.json", type=["json"], key="search_upload")
    if upload is not None:
        with state.user_errors():
            curve = workflow.load_search(upload.getvalue())
        metrics = [k for k in curve["points"][0] if k.startswith(("ppl/", "acc/", "retained/", "kl/", "agreement/",
                                                                   "speedup/"))] if curve["points"] else []
        if metrics:
            metric = st.selectbox("Quality measure", metrics)
            st.plotly_chart(figures.search_figure(curve, metric), key="search_chart")
        best = curve.get("best_ratio")
        st.caption(f"Largest ratio meeting contract **{curve.get('contract')}**: "
                   + (f"{best:.3f}" if best is not None else "none of the ratios tried"))

# --- generations ------------------------------------------------------------------------------------------------
st.subheader("Same prompt, both models")


def _use_example() -> None:
    if st.session_state.get("gen_example"):
        st.session_state["gen_prompt"] = st.session_state["gen_example"]


examples = [p.messages[-1][1] for name in ("facts", "instructions", "code")
            for p in workflow.load_suite(name, limit=3).prompts if len(p.messages) == 1]
st.selectbox("Example prompts", ["", *examples], key="gen_example", on_change=_use_example,
             format_func=lambda p: p or "(pick one, or write your own below)")
st.session_state.setdefault("gen_prompt", "The capital of France is")
with st.form("generate"):
    prompt = st.text_area("Prompt", key="gen_prompt")
    c1, c2 = st.columns(2)
    max_new = int(c1.number_input("New tokens", 1, 256, 32))
    chat = c2.checkbox("Chat template (instruct models)", value=True, key="gen_chat",
                       help="Send the prompt as a user turn of the model's chat template, as a chat app would; "
                            "off: the text is continued as is. Models without a template always continue.")
    go = st.form_submit_button("Generate")
if go:
    with state.user_errors():
        original = model_handle(run.model, st.session_state[state.DTYPE], st.session_state[state.DEVICE])
        pruned = pruned_handle(run.model_dir, st.session_state[state.DTYPE], st.session_state[state.DEVICE])
    for col, (label, handle) in zip(st.columns(2), (("original", original), ("pruned", pruned)), strict=True):
        with col:
            st.markdown(f"**{label}**")
            result: dict = {}
            with st.container(border=True):
                st.write_stream(stream_generate(handle, prompt, max_new, chat, result))
            out = result["generation"]
            st.caption(f"{out.new_tokens} new tokens, {out.tokens_per_s:,.1f} tokens/s (greedy; speed over the "
                       "generated tokens only)")

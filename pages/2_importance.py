"""Importance: run a scorer on the current model and explore its head and channel scores as heatmaps."""

from __future__ import annotations

import time

import streamlit as st

from minillm_core import workflow
from minillm_core.errors import DataError
from minillm_core.workflow import CalibrationConfig, ScoreConfig
from ui import figures, state
from ui.models import model_handle
from ui.widgets import next_step, scorer_options

_SCORE_NOW = "_score_after_own_text"


def _use_own_text() -> None:
    """The no-data path: the model writes its own calibration text (seeded), so scoring needs no data set; the
    scores are computed right away (one click, not two)."""
    st.session_state[state.CALIBRATION] = {**st.session_state[state.CALIBRATION], "source": workflow.SELF_SOURCE,
                                           "path": None}
    st.session_state[_SCORE_NOW] = True


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Importance")
with state.user_errors():
    handle = model_handle(*state.model_key())
g = handle.geometry

# --- choose and run a scorer ------------------------------------------------------------------------------------
names = workflow.scorer_names()
# FLAP by default: forward-only, seconds on a CPU, and the best criterion at 20% in bench/results/scoring.md
name = st.selectbox("Scorer", names, index=names.index(ScoreConfig().scorer))
with st.expander("Scorer options", expanded=False):
    options = scorer_options(workflow.scorer_class(name), key=f"opt.{name}")
calib = st.session_state[state.CALIBRATION]
with state.user_errors():
    cost = workflow.preview_scorer(ScoreConfig(name, options), g, calib["n_samples"], calib["seq_len"],
                                   str(handle.loaded.device))
st.caption(f"{cost.description}  \nNeeds: {', '.join(cost.needs)}")
needs_data = cost.needs_calibration
st.caption(f"{'Forward-only' if cost.forward_only else 'Uses backpropagation'} ({cost.engine}). Estimate: about "
           f"{cost.seconds:,.0f} s and {cost.extra_mb:,.0f} MB beyond the model"
           + (f", on {calib['n_samples']} x {calib['seq_len']} calibration tokens from "
              + ("the model's own text" if calib["source"] == workflow.SELF_SOURCE else calib["source"])
              if needs_data else " (weights only, no data)"))

if st.button("Compute scores", type="primary") or st.session_state.pop(_SCORE_NOW, False):
    bar = st.progress(0.0, text="starting")

    def progress(done: int, total: int, label: str) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total}")

    with state.user_errors():
        calibration = None
        if needs_data:
            bar.progress(0.0, text="building calibration batch")
            try:
                with handle.lock:  # 'self' calibration runs the shared model
                    calibration = workflow.calibrate(handle.loaded, CalibrationConfig(**calib))
            except DataError as exc:  # no mirror and no internet: offer the path that needs no data at all
                st.error(f"{exc}")
                st.button("Use the model's own text instead (no data set needed)", type="primary",
                          on_click=_use_own_text, key="use_own_text")
                st.stop()
        t0 = time.perf_counter()
        with handle.lock:  # the cached model is shared: scorers that hook it take turns
            result = workflow.score(handle.loaded, ScoreConfig(name, options), calibration, progress=progress)
    defaults = cost.defaults
    changed = {k: v for k, v in options.items() if defaults.get(k) != v}  # the label names what differs
    label = name + (f" {changed}" if changed else "")
    state.remember_scores(label, result)
    st.session_state[state.ACTIVE_SCORER] = label
    st.session_state[state.PLAN] = None
    state.sidebar_status()
    bar.progress(1.0, text=f"{label} done in {time.perf_counter() - t0:.1f} s")

# --- explore computed scores ------------------------------------------------------------------------------------
computed = state.scores_for_model()
if not computed:
    st.info("No scores yet for this model. Choose a scorer and press **Compute scores**.")
    st.stop()

labels = list(computed)
active = st.session_state.get(state.ACTIVE_SCORER)
shown = st.radio("Scores computed in this session (the plan uses the selected one)", labels,
                 index=labels.index(active) if active in labels else len(labels) - 1, horizontal=True)
st.session_state[state.ACTIVE_SCORER] = shown
scores = computed[shown]

plan = st.session_state.get(state.PLAN)
removed = None
if plan is not None and plan.scorer == scores.scorer and len(plan.layers) == scores.num_layers:
    removed = [sorted(set(range(h.numel())) - set(kept.heads)) for h, kept in zip(scores.heads, plan.layers,
                                                                                  strict=True)]
    n_channels = sum(c.numel() - len(kept.channels) for c, kept in zip(scores.channels, plan.layers, strict=True))
    st.caption(f"Crosses: the heads the current plan removes ({plan.removed_fraction:.1%} of the parameters; it also "
               f"removes {n_channels:,} MLP channels). Change it on the **Plan** page.")
st.plotly_chart(figures.heads_heatmap(scores, removed), key="heads_heatmap")
mode = st.radio("MLP channels", ("binned", "sorted"), horizontal=True,
                format_func=lambda m: f"sorted, {figures.CHANNEL_BINS} rank bins" if m == "binned"
                else "sorted, every channel")
st.plotly_chart(figures.channels_heatmap(scores, mode), key="channels_heatmap")
st.plotly_chart(figures.layer_bars(scores), key="layer_bars")

if len(labels) >= 2:
    st.subheader("Do two scorers agree?")
    c1, c2 = st.columns(2)
    a = c1.selectbox("Scorer A", labels, index=0)
    b = c2.selectbox("Scorer B", labels, index=1)
    if a != b:
        table = figures.rank_agreement(computed[a], computed[b])
        st.plotly_chart(figures.agreement_figure(table, a, b), key="agreement")
        st.dataframe(table, hide_index=True, key="agreement_table")
else:
    st.caption("Compute a second scorer to see how their rankings agree layer by layer.")

# --- estimator fidelity: forward-only scores vs backprop FMS as probes grow --------------------------------------
with st.expander("Estimator fidelity: forward-only gradient estimates vs backprop, as probes grow"):
    st.caption("Scores the model with MINI-LLM's forward-only estimators at several probe counts and compares each "
               "with FMS computed from the exact gradient (backprop, one layer at a time): cosine similarity and "
               "mean per-layer Spearman rank correlation. Uses the calibration set of **Model & data**; each probe "
               "costs two forward passes.")
    f1, f2 = st.columns(2)
    forward_only = workflow.forward_only_estimators()
    estimators = f1.multiselect("Estimators", forward_only, default=forward_only[:1])
    probe_counts = f2.multiselect("Probes", [1, 2, 4, 8, 16, 32, 64], default=[2, 4, 8])
    if st.button("Run fidelity sweep") and estimators and probe_counts:
        sweep_bar = st.progress(0.0, text="backprop reference")
        with state.user_errors(), handle.lock:
            rows = workflow.fidelity_sweep(handle.loaded, CalibrationConfig(**calib), estimators, probe_counts,
                                           progress=lambda d, t, label: sweep_bar.progress(d / t, text=label))
        st.session_state[state.FIDELITY] = rows
        sweep_bar.progress(1.0, text="done")
    if st.session_state.get(state.FIDELITY):
        st.plotly_chart(figures.fidelity_figure(st.session_state[state.FIDELITY]), key="fidelity_chart")

next_step("pages/3_plan.py", "Next: choose how much to remove (Plan)")

"""Plan: a ratio slider and plan options previewed from cached scores (no weights touched); plan JSON in and out."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from minillm_core.workflow import PlanConfig, PruningPlan
from ui import state
from ui.figures import architecture_figure, risk_figure, widths_figure
from ui.models import model_handle
from ui.widgets import config_widgets, next_step

PROTECTED = "plan.protected_layers"  # the protected-layers widget's key
CHART_GENERATION = "plan.widths_chart_generation"  # bumped after each click: a fresh chart with no selection


def _chart_key() -> str:
    return f"widths_chart_{st.session_state.get(CHART_GENERATION, 0)}"


def _toggle_clicked_layers() -> None:
    """Click a layer's bar to protect it (or to unprotect it); runs before the script, so it may set the widget.

    The chart gets a new key after every click, so no click meets a selection left from an earlier one (issue 13
    reported clicks that stopped toggling; with Streamlit 1.67 the browser test toggles with or without this guard)."""
    points = st.session_state[_chart_key()].selection.get("points", [])
    clicked = {int(p["x"]) for p in points if "x" in p}
    st.session_state[PROTECTED] = sorted(set(st.session_state.get(PROTECTED, [])) ^ clicked)
    st.session_state[CHART_GENERATION] = st.session_state.get(CHART_GENERATION, 0) + 1


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Plan")
with state.user_errors():
    handle = model_handle(*state.model_key())
g = handle.geometry
scores = state.active_scores()
uploaded: PruningPlan | None = st.session_state.get(state.UPLOADED_PLAN)

# --- upload a plan ----------------------------------------------------------------------------------------------
with st.expander("Upload a plan JSON", expanded=uploaded is not None):
    file = st.file_uploader("Plan file", type=["json"], key="plan_upload")
    if file is not None and st.button("Use the uploaded plan"):
        with state.user_errors():
            plan = PruningPlan.from_json(file.getvalue().decode("utf-8", errors="replace"))
            plan.validate(g)
        st.session_state[state.UPLOADED_PLAN] = uploaded = plan
    if uploaded is not None:
        st.info(f"Using the uploaded plan ({uploaded.scorer}, ratio {uploaded.config.ratio:.0%}).")
        if st.button("Back to the slider"):
            st.session_state[state.UPLOADED_PLAN] = uploaded = None

# --- or build one from the slider -------------------------------------------------------------------------------
risk_band = st.container()  # filled once the plan is known: what its ratio is expected to cost
if uploaded is not None:
    plan = uploaded
elif scores is None:
    st.info("Compute importance scores first (page **Importance**); the plan ranks heads and channels by them.")
    st.stop()
else:
    st.caption(f"Ranking by **{st.session_state.get(state.ACTIVE_SCORER) or scores.scorer}** scores.")
    values = config_widgets(PlanConfig, "plan", workflow.plan_defaults(g), columns=1, sliders=("ratio",),
                            choices={"protected_layers": list(range(g.num_layers)),
                                     "allocation": [a for a in workflow.ALLOCATIONS if a != "search"]})
    st.caption("Searched per-layer widths take minutes of forward passes: run `minillm plan --allocation search "
               "--out plan.json` (or `minillm prune`), then upload the plan above to see its widths.")
    with state.user_errors():
        plan = workflow.make_plan(handle.loaded, scores, PlanConfig(**values))
st.session_state[state.PLAN] = plan
state.sidebar_status()
curve, your_runs = runs.ratio_risk(st.session_state[state.MODEL])
if curve is not None:
    with risk_band:
        st.plotly_chart(risk_figure(curve, your_runs, plan.removed_fraction), key="risk_band")
        st.caption(runs.risk.describe(curve, plan.removed_fraction))

# --- preview ----------------------------------------------------------------------------------------------------
if plan.config.target == "auto":
    st.caption(f"Target **auto** at {plan.config.ratio:.0%}: **{plan.config.resolved_target}** (MLP channels first "
               "below 30%, heads and channels in every layer from 30%: what measured best on SmolLM2).")
s = workflow.summary_of(plan, g)
m1, m2, m3 = st.columns(3)
m1.metric("Parameters after", f"{s.params_after:,}", f"-{s.removed_fraction:.1%}", delta_color="off")
m2.metric("Non-embedding removed", f"{s.removed_fraction_non_embedding:.1%}")
m3.metric("Ideal speed-up", f"x{s.ideal_speedup:.2f}")
st.markdown("**Exports to:** " + " · ".join(s.exports_to))
for risk in workflow.plan_risks(s):
    st.warning(risk)
sizes = pd.DataFrame({"before (MB)": s.size_mb_before, "after (MB)": s.size_mb_after}).rename_axis("dtype")
st.dataframe(sizes.round(1), key="sizes_table")
if not s.loads_with_from_pretrained:
    st.caption("Layers end up with different widths: load the result with `minillm_core.load_pruned(dir)`.")
clickable = uploaded is None
widths_tab, architecture_tab = st.tabs(["Widths per layer", "Architecture before / after"])
with widths_tab:
    st.plotly_chart(widths_figure(s.rows), key=_chart_key(),
                    on_select=_toggle_clicked_layers if clickable else "ignore", selection_mode="points")
    if clickable:
        st.caption("Click a layer's bar to protect it, or to unprotect it.")
with architecture_tab:
    st.plotly_chart(architecture_figure(s.rows, top=f"token embedding ({g.hidden_size:,} wide)"),
                    key="architecture_chart")
    st.caption("Each decoder layer as its two blocks, filled to the part the plan keeps. Grey-blue: untouched "
               "(protected) layers; red: under a quarter kept.")
st.dataframe(pd.DataFrame(s.rows).set_index("layer"), key="plan_table")
st.download_button("Download plan JSON", plan.to_json(), file_name=f"plan-{plan.scorer}-{plan.config.ratio:.2f}.json",
                   mime="application/json")

next_step("pages/4_run.py", "Next: prune and measure this plan (Prune & evaluate)")

"""MINI-LLM Studio dashboard: the router. Page config, the shared sidebar, and navigation over `pages/`.

Run with `streamlit run app.py`; every screen is a thin page calling `minillm_core`.
"""

from __future__ import annotations

import streamlit as st

from ui import state
from ui.models import device_label

st.set_page_config(page_title="MINI-LLM Studio", page_icon=":material/content_cut:", layout="wide")
state.init()

PAGES = [
    # Material icons: emoji render as empty boxes in Debian's Chromium (no colour emoji font by default)
    st.Page("pages/1_model.py", title="Model & data", icon=":material/memory:", default=True),
    st.Page("pages/2_importance.py", title="Importance", icon=":material/local_fire_department:"),
    st.Page("pages/3_plan.py", title="Plan", icon=":material/straighten:"),
    st.Page("pages/4_run.py", title="Prune & evaluate", icon=":material/content_cut:"),
    st.Page("pages/5_compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/8_sweep.py", title="Sweep ratios", icon=":material/ssid_chart:"),
    st.Page("pages/7_ab.py", title="A/B test", icon=":material/difference:"),
    st.Page("pages/6_runs.py", title="Runs & report", icon=":material/folder_open:"),
]

with st.sidebar:
    st.markdown("### :material/content_cut: MINI-LLM Studio")
    st.caption(f"Device: **{device_label()}**")
    st.caption(f"Model: **{st.session_state[state.MODEL]}**")
    state.sidebar_status(st.empty())  # pages that change scores or the plan redraw it (no lag behind the page)

st.navigation(PAGES).run()

"""MINI-LLM Studio dashboard: the router. Page config, the shared sidebar, and navigation over `pages/`.

Run with `streamlit run app.py`; every screen is a thin page calling `minillm_core`.
"""

from __future__ import annotations

import streamlit as st

from ui import state
from ui.models import device_label

st.set_page_config(page_title="MINI-LLM Studio", page_icon="✂️", layout="wide")
state.init()

PAGES = [
    st.Page("pages/1_model.py", title="Model & data", icon="🧠", default=True),
    st.Page("pages/2_importance.py", title="Importance", icon="🔥"),
    st.Page("pages/3_plan.py", title="Plan", icon="📐"),
    st.Page("pages/4_run.py", title="Prune & evaluate", icon="⚙️"),
    st.Page("pages/5_compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/6_runs.py", title="Runs & report", icon="🗂️"),
]

with st.sidebar:
    st.markdown("### ✂️ MINI-LLM Studio")
    st.caption(f"Device: **{device_label()}**")
    st.caption(f"Model: **{st.session_state[state.MODEL]}**")
    state.sidebar_status(st.empty())  # pages that change scores or the plan redraw it (no lag behind the page)

st.navigation(PAGES).run()

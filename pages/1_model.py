"""Model & data: pick the model (bundled, Hub id, local directory or GGUF), see its architecture, pick calibration."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from minillm_core.errors import DataError
from minillm_core.workflow import CalibrationConfig, LoadConfig, PlanConfig, ScoreConfig
from ui import state
from ui.models import model_handle
from ui.widgets import config_widgets, next_step

MAX_UPLOAD_MB = 20
SOURCES = ("Bundled", "Hugging Face Hub id", "Local directory or .gguf file")

DEMO_RATIO, DEMO_WINDOWS = 0.2, 8
DEMO_CALIBRATION = {"source": "c4", "n_samples": 32, "seq_len": 128, "seed": 0, "path": None}


def quick_demo(handle) -> None:
    """Score (FLAP), plan (20%), submit a small run and follow it on the Run page, which opens Compare when it is
    done. Without a data set the model's own text calibrates (the run's evaluation still needs WikiText-2). The
    re-fit keeps FLAP's units (no OBS re-selection: half the time, a little less quality) for a demo's pace."""
    calib = dict(DEMO_CALIBRATION)
    with st.status("Quick demo: scoring and planning", expanded=True) as status, state.user_errors():
        status.write("Calibration: 32 x 128 tokens of C4")
        try:
            with handle.lock:  # the cached model is shared by every session
                rows = workflow.calibrate(handle.loaded, CalibrationConfig(**calib))
        except DataError:
            status.write("No data set here: the model writes its own calibration text instead")
            calib["source"] = workflow.SELF_SOURCE
            with handle.lock:
                rows = workflow.calibrate(handle.loaded, CalibrationConfig(**calib))
        st.session_state[state.CALIBRATION] = calib
        status.write("Scoring heads and MLP channels with FLAP")
        with handle.lock:
            scores = workflow.score(handle.loaded, ScoreConfig("flap"), rows)
        state.remember_scores("flap", scores)
        st.session_state[state.ACTIVE_SCORER] = "flap"
        plan = workflow.make_plan(handle.loaded, scores, PlanConfig(ratio=DEMO_RATIO))
        st.session_state[state.PLAN] = plan
        status.write(f"Starting the run: remove {plan.removed_fraction:.1%} of the parameters")
        run_id = runs.submit(runs.RunSpec(
            model=st.session_state[state.MODEL], plan=plan, name=f"quick demo: flap {DEMO_RATIO:.0%}",
            evaluation=runs.eval_config(limit=DEMO_WINDOWS, measure_speed=False,
                                        data_dir=os.environ.get("MINILLM_DATA_DIR")),
            reconstruct=runs.ReconstructConfig(select="plan"), calibration=runs.CalibrationConfig(**calib),
            dtype=st.session_state[state.DTYPE], device=st.session_state[state.DEVICE]))
    st.session_state[state.JOBS].append(run_id)
    st.session_state[state.DEMO_JOB] = run_id
    st.switch_page("pages/4_run.py", query_params={"job": run_id})


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Model & data")

# --- model ------------------------------------------------------------------------------------------------------
current = st.session_state[state.MODEL]
with st.form("model_form"):
    bundled_names = workflow.bundled_models()
    kind = st.radio("Model source", SOURCES, index=0 if current in bundled_names else 2, horizontal=True)
    bundled = st.selectbox("Bundled model", bundled_names, help="Shipped with the app; no download needed.")
    typed = st.text_input("Hub id or local path", value="" if current in bundled_names else current,
                          placeholder="HuggingFaceTB/SmolLM2-135M or /path/to/model_dir or model.gguf")
    picked = config_widgets(LoadConfig, "load", LoadConfig(current, st.session_state[state.DTYPE],
                                                           st.session_state[state.DEVICE]),
                            only=("dtype", "device"), choices={"device": ("auto", "cpu", "cuda")}, columns=2)
    if st.form_submit_button("Use this model", type="primary"):
        name = bundled if kind == SOURCES[0] else typed.strip()
        if not name:
            st.error("Type a Hub id or a local path first.")
        else:
            st.session_state[state.MODEL], st.session_state[state.DTYPE] = name, picked["dtype"]
            st.session_state[state.DEVICE] = picked["device"]
            st.session_state[state.PLAN] = st.session_state[state.UPLOADED_PLAN] = None
            st.rerun()

with state.user_errors():
    handle = model_handle(*state.model_key())
g = handle.geometry
shape = g.layers[0]
st.success(f"Loaded **{handle.loaded.name}** ({g.model_type}) from `{handle.loaded.source}` on "
           f"{handle.loaded.device} in {handle.load_seconds:.1f} s")
mb = {dt: g.total_params * n / 2**20 for dt, n in (("float32", 4), ("float16/bfloat16", 2))}
summary = pd.DataFrame([
    ("architecture", g.model_type), ("layers", g.num_layers), ("attention heads", shape.num_heads),
    ("KV heads", shape.num_kv_heads), ("head dim", g.head_dim), ("hidden size", g.hidden_size),
    ("MLP channels", shape.intermediate), ("parameters", f"{g.total_params:,}"),
    ("embedding parameters", f"{g.embedding_params:,}"), ("weights dtype", g.dtype),
    *((f"size {dt}", f"{v:,.1f} MB") for dt, v in mb.items()),
], columns=["property", "value"]).astype(str)
st.subheader("Architecture")
st.dataframe(summary, hide_index=True, key="arch_table")
if len(set(g.layers)) > 1:
    st.info("This model's layers have different widths (it was pruned before).")

# --- quick demo -------------------------------------------------------------------------------------------------
with st.container(border=True):
    st.markdown("**Quick demo** — one click from here to the comparison: FLAP scores on 32 x 128 calibration "
                f"tokens, a plan removing {DEMO_RATIO:.0%} of the parameters, then a background run that prunes, "
                f"re-fits the kept weights (FLAP's units; the default pipeline also re-chooses them by OBS) and "
                f"measures both models on {DEMO_WINDOWS} WikiText-2 windows, then opens **Compare**.")
    if st.button("Run the quick demo", icon=":material/bolt:", key="quick_demo"):
        quick_demo(handle)

# --- calibration ------------------------------------------------------------------------------------------------
st.subheader("Calibration data")
st.caption("Used by scorers that look at activations or losses; weights-only scorers ignore it.")
calib = st.session_state[state.CALIBRATION]
values = config_widgets(CalibrationConfig, "calib", SimpleNamespace(**calib),  # "file" has no path yet
                        only=("source", "n_samples", "seq_len", "seed"), columns=4)
source, n_samples, seq_len, seed = values["source"], values["n_samples"], values["seq_len"], values["seed"]
path = calib.get("path") if source == workflow.FILE_SOURCE else None
if source == workflow.FILE_SOURCE:
    upload = st.file_uploader("Calibration file", type=["txt", "jsonl"], max_upload_size=MAX_UPLOAD_MB,
                              key="calib_file",
                              help=".txt: paragraphs split on blank lines; .jsonl: one {\"text\": ...} per line. "
                                   f"At most {MAX_UPLOAD_MB} MB.")
    if upload is not None:
        data = upload.getvalue()
        suffix = ".jsonl" if upload.name.lower().endswith(".jsonl") else ".txt"
        if len(data) > MAX_UPLOAD_MB * 2**20:
            st.error(f"{upload.name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB.")
        else:
            # Our own file name in this session's private directory: the user's name never becomes a path.
            target = state.upload_dir() / f"calibration{suffix}"
            target.write_bytes(data)
            with state.user_errors():
                docs = workflow.read_calibration_file(target)
            st.success(f"{upload.name}: {len(docs):,} documents, {len(data) / 1024:,.1f} KB")
            path = str(target)
    if path is None:
        st.info("Upload a file to use it for calibration.")
with state.user_errors():
    if source != workflow.FILE_SOURCE or path is not None:
        config = CalibrationConfig(source=source, n_samples=n_samples, seq_len=seq_len, seed=seed, path=path)
        st.session_state[state.CALIBRATION] = {"source": source, "n_samples": n_samples, "seq_len": seq_len,
                                               "seed": seed, "path": path}
        st.caption(f"Calibration: {config.n_samples} x {config.seq_len} tokens from **{config.source}**.")

next_step("pages/2_importance.py", "Next: score heads and channels (Importance)")

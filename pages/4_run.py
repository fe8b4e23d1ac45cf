"""Prune & evaluate: run the current plan as a background job (its own process), poll it, cancel it, record it."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from minillm_core import jobs
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.tasks import ALL_TASKS
from minillm_core.runs import RunStore
from ui import state

st.title("Prune & evaluate")
store = RunStore()
plan = st.session_state.get(state.PLAN)

# --- start a job ------------------------------------------------------------------------------------------------
if plan is None:
    st.info("Make a plan first (page **Plan**); its pruning and evaluations run here in the background.")
else:
    with st.form("job_form"):
        st.caption(f"Plan: {plan.scorer}, remove {plan.removed_fraction:.1%} of {plan.original_params:,} parameters "
                   f"of **{st.session_state[state.MODEL]}**.")
        name = st.text_input("Run name", value=f"{plan.scorer} {plan.config.ratio:.0%}")
        datasets = st.multiselect("Perplexity on", jobs.PPL_DATASETS, default=["wikitext2"])
        tasks = st.multiselect("Zero-shot tasks (lm-eval prompts, acc / acc_norm)", ALL_TASKS, default=[],
                               help="Each task scores `limit` items; leave empty for a quick run.")
        c1, c2, c3 = st.columns(3)
        limit = int(c1.number_input("Windows per dataset / items per task (0 = all)", 0, 100_000, 16))
        seq_len = int(c2.number_input("Window length (tokens)", 16, 4096, 128))
        original = c3.checkbox("Also evaluate the original", value=True)
        speed = c3.checkbox("Measure speed and memory", value=True,
                            help="Prefill latency and decode tokens/s at batch 1 and 8; off for quick demos.")
        recover_on = st.checkbox("Recover with LoRA after pruning", value=False,
                                 help="A short peft LoRA fine-tune on instruction data, evaluated the same way.")
        with st.expander("LoRA settings"):
            r1, r2, r3 = st.columns(3)
            rec_data = r1.text_input("Training data", "alpaca", help="alpaca, c4, ptb, or a .json/.jsonl/.txt path")
            rec_samples = int(r2.number_input("Records", 16, 51_760, 200))
            rec_epochs = int(r3.number_input("Epochs", 1, 10, 1))
            r4, r5, r6 = st.columns(3)
            rec_lr = r4.select_slider("Learning rate", [5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3], value=3e-4)
            rec_rank = r5.select_slider("Rank", [4, 8, 16, 32], value=8)
            rec_merge = r6.checkbox("Merge adapters into the weights", value=True)
        submitted = st.form_submit_button("Start", type="primary")
    if submitted:
        try:
            spec = jobs.JobSpec(model=st.session_state[state.MODEL], plan=plan.to_dict(), perplexity=tuple(datasets),
                                tasks=tuple(tasks),
                                recovery={"data": rec_data, "n_samples": rec_samples, "epochs": rec_epochs,
                                          "learning_rate": rec_lr, "rank": rec_rank, "alpha": 2.0 * rec_rank,
                                          "merge": rec_merge} if recover_on else None,
                                limit=limit or None, seq_len=seq_len, evaluate_original=original, measure_speed=speed,
                                dtype=st.session_state[state.DTYPE], device=st.session_state[state.DEVICE],
                                data_dir=os.environ.get("MINILLM_DATA_DIR"), name=name)
            job_id = jobs.submit(spec, store.root)
            store.add_job(job_id, name)
        except MiniLLMError as exc:
            st.error(str(exc))
        else:
            st.session_state[state.JOBS].append(job_id)
            st.query_params["job"] = job_id

# --- attach to a job (URL first, so a refresh or a second tab re-attaches) --------------------------------------
mine = st.session_state[state.JOBS]
job_id = st.query_params.get("job") or (mine[-1] if mine else None)
if job_id is None:
    st.stop()
try:
    first = jobs.status(job_id, store.root)
except MiniLLMError as exc:
    st.error(str(exc))
    st.stop()
if job_id not in mine:
    mine.append(job_id)  # re-attached from the URL: this session now follows it
if len(mine) > 1:
    picked = st.selectbox("Jobs of this session", list(reversed(mine)), index=list(reversed(mine)).index(job_id))
    if picked != job_id:
        st.query_params["job"] = picked
        st.rerun()

st.subheader(f"Job `{job_id}`")


def _loss_chart(job_id: str) -> None:
    """The LoRA loss curve, live while training (from the run's log) and final afterwards."""
    from minillm_core.recovery import loss_curve

    rows = loss_curve(jobs.job_dir(job_id, store.root) / jobs.RECOVERED_SUBDIR)
    if rows:
        st.line_chart(pd.DataFrame(rows), x="step", y="loss", height=220)


@st.fragment(run_every=None if first.terminal else 1.0)
def job_panel(job_id: str, was_running: bool) -> None:
    st_ = jobs.status(job_id, store.root)
    if st_.state in ("queued", "running"):
        label = f"step {st_.step_index}/{st_.steps}: {st_.step}" if st_.step else st_.state
        if st_.total:
            label += f" ({st_.done}/{st_.total})"
        st.progress(st_.fraction, text=label)
        if st_.step == jobs.RECOVER_STEP:
            _loss_chart(job_id)
        if st.button("Cancel", key="cancel"):
            jobs.cancel(job_id, store.root)
            st.rerun(scope="app")
        return
    if was_running:  # just finished: refresh the whole page once (stops the polling, updates the store)
        st.rerun(scope="app")
    try:
        run = store.get(job_id)
    except MiniLLMError as exc:
        st.error(str(exc))
        return
    if st_.state == "done":
        st.success(f"Done in {run.metrics.get('seconds', 0):.1f} s: {run.params_before:,} -> "
                   f"{run.params_after:,} parameters. See **Compare** and **Runs & report**.")
        if run.metrics.get("recovered"):
            before, after = run.metrics["pruned"], run.metrics["recovered"]
            cols = st.columns(max(1, sum(k.startswith(("ppl/", "acc/")) for k in after)))
            for col, key in zip(cols, [k for k in after if k.startswith(("ppl/", "acc/"))], strict=False):
                col.metric(f"{key} after LoRA", f"{after[key]:.4g}", f"{after[key] - before.get(key, 0):+.4g}",
                           delta_color="inverse" if key.startswith("ppl/") else "normal")
            _loss_chart(job_id)
        st.page_link("pages/5_compare.py", label="Compare original and pruned", icon="⚖️")
    elif st_.state == "cancelled":
        st.warning("Cancelled. Earlier runs are kept.")
    else:
        st.error(f"Failed: {st_.error}")


job_panel(job_id, not first.terminal)

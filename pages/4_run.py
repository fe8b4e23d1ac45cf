"""Prune & evaluate: run the current plan in the background (its own process), poll it, cancel it, record it.

Everything about a run goes through `minillm_core.runs`; this page never touches a run's directory.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from minillm_core.errors import MiniLLMError
from ui import state
from ui.widgets import config_widgets

LORA_OPTIONS = ("method", "trainable", "data", "n_samples", "epochs", "max_tokens", "max_minutes", "learning_rate",
                "rank", "kd_temperature", "kd_alpha", "eval_every", "merge")
RECON_OPTIONS = ("enabled", "select", "target", "damping")


def spec_form(plan) -> runs.RunSpec | None:
    """The run form; the spec when it was submitted with valid settings (errors are shown), else None."""
    with st.form("job_form"):
        st.caption(f"Plan: {plan.scorer}, remove {plan.removed_fraction:.1%} of {plan.original_params:,} parameters "
                   f"of **{st.session_state[state.MODEL]}**.")
        name = st.text_input("Run name", value=f"{plan.scorer} {plan.config.ratio:.0%}")
        evaluation = config_widgets(runs.EvalConfig, "run.eval", runs.eval_config(),
                                    only=("perplexity", "tasks", "limit", "seq_len", "speed"))
        st.markdown("**Re-fit** (least squares on the session's calibration data, forward passes only)")
        recon = config_widgets(runs.ReconstructConfig, "run.recon", only=RECON_OPTIONS, columns=4)
        original = st.checkbox("Also evaluate the original", value=True)
        suites = workflow.describe_suites()
        prompts = st.selectbox("A/B test the answers on a prompt suite (with the original)", [None, *suites],
                               format_func=lambda s: "no" if s is None else f"{s}: {suites[s]}", key="run.ab",
                               help="Both models answer every prompt; see the page A/B test (any suite, any time).")
        llamacpp = st.checkbox("Also measure in llama.cpp", value=False,
                               help="Export both models to GGUF (q8_0) and measure perplexity and decode speed in "
                                    "llama.cpp (CPU), as deployed; the pruned model's GGUF stays in the run.")
        recover_on = st.checkbox("Recover with LoRA after pruning", value=False,
                                 help="A short peft LoRA fine-tune, on the data's next tokens (sft) or distilling the "
                                      "original model (kd), evaluated the same way.")
        with st.expander("LoRA settings"):
            recovery = config_widgets(runs.RecoveryConfig, "run.lora", only=LORA_OPTIONS, columns=3)
        st.caption(time_estimate(st.session_state[state.MODEL]))
        if not st.form_submit_button("Start", type="primary"):
            return None
    data_dir = os.environ.get("MINILLM_DATA_DIR")
    try:
        return runs.RunSpec(
            model=st.session_state[state.MODEL], plan=plan, name=name, evaluate_original=original, llamacpp=llamacpp,
            evaluation=runs.eval_config(**{k: v for k, v in evaluation.items() if k != "speed"},
                                        measure_speed=evaluation["speed"], data_dir=data_dir,
                                        prompts=prompts if original else None),
            recovery=runs.RecoveryConfig(**recovery, alpha=2.0 * recovery["rank"], data_dir=data_dir)
            if recover_on else None,
            reconstruct=runs.ReconstructConfig(**recon),
            calibration=runs.CalibrationConfig(**st.session_state[state.CALIBRATION]),
            dtype=st.session_state[state.DTYPE], device=st.session_state[state.DEVICE])
    except MiniLLMError as exc:
        st.error(str(exc))
        return None


def time_estimate(model: str) -> str:
    """What a run of this model costs here, from the runs that finished before (no guess before the first)."""
    typical = runs.typical_seconds(model)
    if typical is None:
        return ("Time: no run of this model has finished here yet. On a 2-core CPU a SmolLM2-135M run with the "
                "default settings takes a few minutes; the progress bar shows each step.")
    median, low, high, n = typical
    return (f"Time: earlier runs of this model here took a median of {median / 60:.1f} min ({n} run"
            f"{'s' if n > 1 else ''}, {low / 60:.1f}-{high / 60:.1f} min); zero-shot tasks, llama.cpp and LoRA add "
            "to it.")


def attached_run() -> tuple[str, runs.RunStatus] | None:
    """The run this page follows: the URL's first (a refresh or a second tab re-attaches), else this session's last."""
    mine = st.session_state[state.JOBS]
    run_id = st.query_params.get("job") or (mine[-1] if mine else None)
    if run_id is None:
        return None
    try:
        first = runs.status(run_id)
    except MiniLLMError as exc:
        st.error(str(exc))
        return None
    if run_id not in mine:
        mine.append(run_id)  # re-attached from the URL: this session now follows it
    if len(mine) > 1:
        newest = list(reversed(mine))
        picked = st.selectbox("Jobs of this session", newest, index=newest.index(run_id))
        if picked != run_id:
            st.query_params["job"] = picked
            st.rerun()
    return run_id, first


def loss_chart(run_id: str) -> None:
    """The LoRA loss curve, live while training (from the run's log) and final afterwards."""
    rows = runs.loss_curve(run_id)
    if rows:
        st.line_chart(pd.DataFrame(rows), x="step", y="loss", height=220)


def perplexity_chart(points: list[dict], live: bool = False) -> None:
    """Perplexity against training tokens: the points measured so far (live) or the whole curve (done)."""
    curve = pd.DataFrame(points)
    measured = [c for c in curve.columns if c.startswith("ppl/")]
    if len(curve) >= (2 if live else 3) and measured:
        st.markdown("**Perplexity against training tokens**" + (" (so far)" if live else ""))
        st.line_chart(curve, x="tokens", y=measured, height=240)


def _time_boxed(run_id: str) -> bool:
    """Whether the run's recovery has a time budget (its progress then counts to an estimate)."""
    try:
        recovery = runs.read_spec(run_id).recovery
    except MiniLLMError:
        return False
    return bool(recovery and recovery.max_minutes)


def progress_panel(run_id: str, status: runs.RunStatus) -> None:
    label = f"step {status.step_index}/{status.steps}: {status.step}" if status.step else status.state
    if status.total:
        timed = status.step == runs.RECOVER_STEP and _time_boxed(run_id)
        label += f" ({status.done}/{'~' if timed else ''}{status.total}" + (
            ", the updates its time budget allows at this pace)" if timed else ")")
    st.progress(status.fraction, text=label)
    if status.step == runs.RECOVER_STEP:
        loss_chart(run_id)
        perplexity_chart(runs.perplexity_curve(run_id), live=True)
    if st.button("Cancel", key="cancel"):
        runs.cancel(run_id)
        st.rerun(scope="app")


def done_panel(run: runs.Run) -> None:
    st.success(f"Done in {run.metrics.get('seconds', 0):.1f} s: {run.params_before:,} -> "
               f"{run.params_after:,} parameters. See **Compare** and **Runs & report**.")
    reconstruction_metrics(run.metrics)
    if run.metrics.get("recovered"):
        before, after = run.metrics["pruned"], run.metrics["recovered"]
        keys = [k for k in after if k.startswith(("ppl/", "acc/"))]
        for col, key in zip(st.columns(max(1, len(keys))), keys, strict=False):
            col.metric(f"{key} after LoRA", f"{after[key]:.4g}", f"{after[key] - before.get(key, 0):+.4g}",
                       delta_color="inverse" if key.startswith("ppl/") else "normal")
        trained = run.metrics.get("recovery") or {}
        st.caption(training_summary(trained))
        loss_chart(run.id)
        perplexity_chart(trained.get("curve") or [])
    st.page_link("pages/5_compare.py", label="Compare original and pruned", icon=":material/compare_arrows:")


def training_summary(trained: dict) -> str:
    """How much training the recovery had: updates, tokens, minutes, and whether its time budget ended it."""
    total = trained.get("total_steps")
    line = (f"Recovery: {trained.get('steps', 0)}{f' of {total}' if total else ''} updates, "
            f"{trained.get('tokens', 0):,} training tokens, {trained.get('train_seconds', 0) / 60:.1f} min of training")
    return line + (" (stopped by its time budget)." if trained.get("time_budget_spent") else ".")


def reconstruction_metrics(metrics: dict) -> None:
    """Perplexity of the pruned model as cut and after the re-fit, side by side."""
    before, after = metrics.get("before_reconstruction") or {}, metrics.get("pruned") or {}
    keys = [k for k in before if k.startswith("ppl/") and k in after]
    for col, key in zip(st.columns(max(1, len(keys))), keys, strict=False):
        col.metric(f"{runs.metric_label(key)} after re-fit", f"{after[key]:.4g}",
                   f"{after[key] - before[key]:+.4g} vs {before[key]:.4g} as cut", delta_color="inverse")


def job_panel(run_id: str, was_running: bool) -> None:
    """Progress and Cancel while the run runs (polled once a second), then its outcome."""
    status = runs.status(run_id)
    if not status.terminal:
        progress_panel(run_id, status)
        return
    if was_running:  # just finished: refresh the whole page once (stops the polling)
        st.rerun(scope="app")
    if st.session_state.get(state.DEMO_JOB) == run_id and status.state == "done":  # the quick demo ends on Compare
        st.session_state[state.DEMO_JOB] = None
        st.switch_page("pages/5_compare.py", query_params={"job": run_id})
    try:
        run = runs.get(run_id)
    except MiniLLMError as exc:
        st.error(str(exc))
        return
    if run.state == "done":
        done_panel(run)
    elif run.state == "cancelled":
        st.warning("Cancelled. Earlier runs are kept.")
    else:
        st.error(f"Failed: {run.error}")


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Prune & evaluate")
plan = st.session_state.get(state.PLAN)
if plan is None:
    st.info("Make a plan first (page **Plan**); its pruning and evaluations run here in the background.")
elif (spec := spec_form(plan)) is not None:
    try:
        new_id = runs.submit(spec)
    except MiniLLMError as exc:
        st.error(str(exc))
    else:
        st.session_state[state.JOBS].append(new_id)
        st.query_params["job"] = new_id

attached = attached_run()
if attached is None:
    st.stop()
job_id, first = attached
st.subheader(f"Job `{job_id}`")
st.fragment(job_panel, run_every=None if first.terminal else 1.0)(job_id, not first.terminal)

"""Sweep: prune at several ratios with one or more scorers (one score pass each) in the background; the size-vs-quality
curves grow as points finish, with each scorer's largest ratio that passes a quality gate.

Every point is an ordinary run (Runs & report, Compare); `minillm sweep` runs the same grid headless, or on Ray.
"""

from __future__ import annotations

import os
import statistics

import pandas as pd
import streamlit as st

from minillm_core import runs, workflow
from ui import figures, state

RATIO_CHOICES = [round(0.05 * i, 2) for i in range(1, 15)]
REFIT = {"on": (True,), "off": (False,), "both": (True, False)}
CURRENT = "sweep_key"  # the sweep this session started or picked


def sweep_form() -> runs.sweep.SweepSpec | None:
    """The grid and its settings; the spec when submitted (errors shown), else None."""
    names = workflow.scorer_names()
    with st.form("sweep_form"):
        c1, c2 = st.columns(2)
        scorers = c1.multiselect("Scorers (one score pass each)", names, key="sweep_scorers",
                                 default=[s for s in ("flap", "wanda-sp", "magnitude") if s in names])
        ratios = c2.multiselect("Share of all parameters to remove", RATIO_CHOICES, default=[0.1, 0.2, 0.3, 0.4],
                                format_func=lambda r: f"{r:.0%}", key="sweep_ratios")
        c3, c4, c5 = st.columns(3)
        refit = c3.radio("Re-fit the kept weights", list(REFIT), horizontal=True, key="sweep_refit",
                         help="Least-squares re-fit of each pruned layer's output projections on the calibration "
                              "rows (better quality, slower); both adds each point without it as its own curve.")
        limit = c4.number_input("Evaluation windows (128 tokens each)", 1, 100_000, 16, key="sweep_limit",
                                help="WikiText-2 windows per point; KL and agreement use up to 16 of them.")
        rows = c5.number_input("Calibration sequences", 1, 4096, 32, key="sweep_rows",
                               help="For the scorers that need data and for the re-fit (the source is the one "
                                    "set on the Model & data page).")
        if not st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:"):
            return None
    with state.user_errors():
        calib = {**st.session_state[state.CALIBRATION], "n_samples": int(rows)}
        return runs.sweep.SweepSpec(
            model=st.session_state[state.MODEL], scorers=tuple(scorers), ratios=tuple(sorted(ratios)),
            reconstruct=REFIT[refit], calibration=workflow.CalibrationConfig(**calib),
            evaluation=runs.eval_config(limit=int(limit), data_dir=os.environ.get("MINILLM_DATA_DIR")),
            dtype=st.session_state[state.DTYPE], device=st.session_state[state.DEVICE])


def gate_file(max_ratio: float) -> str:
    """A quality contract for the gate: pruned perplexity at most `max_ratio` x the original's (in this session's
    folder), checked on every finished point by the contract code the CLI uses."""
    path = state.upload_dir() / f"sweep-gate-{max_ratio:g}.yaml"
    path.write_text(f"name: perplexity within {max_ratio:g}x\nclauses:\n  - metric: retained/ppl/wikitext2\n"
                    f"    max: {max_ratio:g}\n", encoding="utf-8")
    return str(path)


def largest_passing(pairs: list, contract: str) -> dict[str, float]:
    """Each series' largest ratio whose run meets `contract`."""
    best: dict[str, float] = {}
    for point, run in pairs:
        if run is None or run.state != "done":
            continue
        _, results, _ = runs.check_contract(run.id, contract)
        if all(r.passed for r in results):
            name = series_name(point)
            best[name] = max(best.get(name, 0.0), point.ratio)
    return best


def sweep_label(spec: runs.sweep.SweepSpec) -> str:
    refit = {(True,): "", (False,): ", no re-fit"}.get(spec.reconstruct, ", re-fit on and off")
    ratios = ", ".join(f"{r:.0%}" for r in spec.ratios)
    return f"{', '.join(spec.scorers)} at {ratios}{refit} on {spec.model} [{spec.key}]"


def series_name(point) -> str:
    return point.scorer + ("" if point.reconstruct else " (no re-fit)")


def sweep_panel(spec: runs.sweep.SweepSpec, gate: float) -> None:
    """Progress, the curves and the point table of one sweep (polled while its driver runs)."""
    pairs = runs.sweep.points_of(spec)
    alive = runs.sweep.driver_alive(spec.key)
    finished = [(p, r) for p, r in pairs if r is not None and r.terminal]
    done = [(p, r) for p, r in finished if r.state == "done"]
    total = len(pairs)
    seconds = [r.metrics.get("seconds", 0.0) for _, r in done]
    left = total - len(finished)
    eta = f", about {statistics.mean(seconds) * left / 60:.0f} min left" if alive and seconds and left else ""
    label = "running" if alive else ("finished" if not left else "stopped")
    st.progress(len(finished) / max(total, 1), text=f"{label}: {len(finished)} of {total} points{eta}")
    if alive and st.button("Stop the sweep", icon=":material/stop:", key="sweep_stop"):
        runs.sweep.cancel(spec.key)
        st.rerun(scope="app")
    if not alive and left:
        st.caption("Start the same sweep again to resume it: finished points are kept, the rest run.")
    dataset = "wikitext2"
    shown = [(series_name(p), p.ratio, r.metrics["pruned"]["size_mb"], r.metrics["pruned"][f"ppl/{dataset}"])
             for p, r in done if f"ppl/{dataset}" in (r.metrics.get("pruned") or {})]
    contract = gate_file(gate)
    best = largest_passing(pairs, contract)
    dense = runs.dense_points([r for _, r in done], dataset)
    if shown:
        st.plotly_chart(figures.sweep_figure(shown, dense, dataset, best), key=f"sweep_chart_{spec.key}")
        verdicts = [f"**{name}** {ratio:.0%}" for name, ratio in sorted(best.items(), key=lambda kv: -kv[1])]
        st.markdown(f"Largest share removed with perplexity within {gate:g}x the original's: "
                    + (", ".join(verdicts) if verdicts else "none of the finished points"))
    table = []
    for p, r in pairs:
        pruned, comparison = (r.metrics.get("pruned") or {}, r.metrics.get("comparison") or {}) if r else ({}, {})
        table.append({"scorer": p.scorer, "removed": f"{p.ratio:.0%}", "re-fit": "yes" if p.reconstruct else "no",
                      "state": r.state if r else "waiting", "parameters": pruned.get("params"),
                      "size (MB)": pruned.get("size_mb"), f"perplexity ({dataset})": pruned.get(f"ppl/{dataset}"),
                      "KL to original": comparison.get(f"kl/{dataset}"),
                      "run": r.id if r else "", "error": (r.error if r else "")[:120]})
    st.dataframe(pd.DataFrame(table), hide_index=True, column_config={
        "parameters": st.column_config.NumberColumn(format="localized"),
        "size (MB)": st.column_config.NumberColumn(format="%.1f"),
        f"perplexity ({dataset})": st.column_config.NumberColumn(format="%.2f"),
        "KL to original": st.column_config.NumberColumn(format="%.3f")})
    if not alive and not done and left == 0 and finished:
        st.error("No point finished: see the errors above, or the sweep's log below.")
    log = runs.sweep.sweep_dir(spec.key) / runs.sweep.DRIVER_LOG
    if log.is_file():
        with st.expander("Sweep log"):
            st.code("\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]) or "(empty)")
    if spec.key == st.session_state.get(CURRENT) and st.session_state.get("sweep_was_alive") and not alive:
        st.session_state["sweep_was_alive"] = False
        st.rerun(scope="app")  # finished: one full refresh stops the polling
    st.session_state["sweep_was_alive"] = alive


state.init()  # a deep link on a cold server runs this page before the router (app.py)
st.title("Sweep ratios")
st.caption("Prune the model at several ratios with one or more scorers (one score pass per scorer) and watch the "
           "size-vs-quality curves grow. Every point is a run (Runs & report, Compare). Headless: `minillm sweep "
           "--scorers flap,wanda-sp --ratios 0.1,0.2,0.3 [--backend ray]`.")
spec = sweep_form()
model = st.session_state[state.MODEL]
known_pace = runs.typical_seconds(model)
typical = known_pace[0] if known_pace else None
st.caption(f"Each point prunes, re-fits if asked, and evaluates the pruned model and the original on **{model}**. "
           + (f"Finished runs of this model took a median of {typical:.0f} s each here." if typical else
              "No run of this model has finished here yet: the first point sets the pace."))
if spec is not None:
    with state.user_errors():
        st.session_state[CURRENT] = runs.sweep.start(spec)
        st.session_state["sweep_was_alive"] = True
        st.toast(f"Sweep started: {len(spec.points())} points"
                 + (f", about {len(spec.points()) * typical / 60:.0f} min" if typical else ""))

known = runs.sweep.list_sweeps()
if not known:
    st.info("No sweep yet: choose scorers and ratios above and start one.")
    st.stop()
keys = [s.key for s, _ in known]
specs = {s.key: s for s, _ in known}
current = st.session_state.get(CURRENT)
pick = st.selectbox("Sweep", keys, index=keys.index(current) if current in keys else 0, key="sweep_pick",
                    format_func=lambda k: sweep_label(specs[k]))
st.session_state[CURRENT] = pick
gate = st.number_input("Quality gate: pruned perplexity at most this many times the original's", 1.01, 1000.0, 2.0,
                       step=0.25, key="sweep_gate")
running = runs.sweep.driver_alive(pick)
st.fragment(sweep_panel, run_every=2.0 if running else None)(specs[pick], gate)

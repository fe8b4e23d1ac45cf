"""AppTest of every dashboard page on a tiny random Llama saved to a directory (no downloads, real core calls).

One module-scoped app session walks model -> importance -> plan -> run (a real background job) -> compare -> runs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from minillm_core import runs
from tests.helpers import spec_for, tiny_plan
from ui import state

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def new_app(model_dir: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.MODEL] = str(model_dir)
    at.session_state[state.DEVICE] = "cpu"
    return ok(at.run())


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.switch_page(f"pages/{page}").run())


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def frame(at: AppTest, column: str):
    """The first table with `column` (st.dataframe keys are not exposed for read-only tables)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


@pytest.fixture
def app(tiny_model_dir, runs_dir):
    state.forget_server_scores()  # every test starts as on a cold server (no scores kept from another test)
    return new_app(tiny_model_dir)


def with_scores(at: AppTest, scorer: str = "magnitude") -> AppTest:
    goto(at, "2_importance.py")
    at.selectbox[0].set_value(scorer)
    return ok(at.button[0].click().run())


def test_model_page_shows_the_architecture(app, tiny_model_dir):
    assert any("Loaded" in s.value for s in app.success)
    arch = frame(app, "property")
    values = dict(zip(arch["property"], arch["value"], strict=True))
    assert values["layers"] == "4" and values["attention heads"] == "6" and values["KV heads"] == "2"
    assert app.sidebar.caption[0].value.startswith("Device: **CPU")
    assert str(tiny_model_dir) in app.sidebar.caption[1].value


def test_model_page_bad_path_shows_an_error(tiny_model_dir, runs_dir):
    at = new_app(tiny_model_dir.parent / "missing")
    assert at.error and "does not exist" in at.error[0].value


def test_calibration_upload_is_validated_and_private(app):
    app.selectbox(key="calib.source").set_value("file")
    ok(app.run())
    up = app.file_uploader(key="calib_file")
    up.set_value(("notes.jsonl", b'{"nope": 1}\n', "application/json"))
    ok(app.run())
    assert app.error and "no 'text' field" in app.error[0].value
    up = app.file_uploader(key="calib_file")
    up.set_value(("../../evil.txt", b"first paragraph\n\nsecond paragraph\n", "text/plain"))
    ok(app.run())
    assert any("2 documents" in s.value for s in app.success)
    path = Path(app.session_state[state.CALIBRATION]["path"])
    assert path.name == "calibration.txt" and path.parent == app.session_state[state.UPLOAD_DIR].path


def test_a_sessions_upload_folder_goes_with_the_session():
    import gc

    folder = state.SessionFolder()
    (folder.path / "upload.txt").write_text("x")
    path = folder.path
    del folder
    gc.collect()
    assert not path.exists()


def test_importance_page_computes_and_compares_scorers(app):
    goto(app, "2_importance.py")
    assert app.info and "No scores yet" in app.info[0].value
    with_scores(app, "magnitude")
    assert len(charts(app)) == 3  # heads, channels, per-layer bars
    with_scores(app, "random")
    assert len(app.radio[0].options) == 2
    assert frame(app, "heads ρ").shape == (4, 3)
    app.radio[1].set_value("sorted")
    ok(app.run())


def test_plan_page_slider_updates_the_preview(app):
    goto(app, "3_plan.py")
    assert "Compute importance scores first" in app.info[0].value
    with_scores(app)
    goto(app, "3_plan.py")
    before = metric(app, "Parameters after")
    assert frame(app, "heads_after").shape[0] == 4
    architecture = next(c for c in charts(app) if "what each layer keeps" in c.proto.spec)
    assert all(f"layer {i}" in architecture.proto.spec for i in range(4))  # the tiny model's 4 layers as blocks
    app.slider(key="plan.ratio").set_value(0.4)
    ok(app.run())
    after = metric(app, "Parameters after")
    assert int(after.replace(",", "")) < int(before.replace(",", ""))
    plan = app.session_state[state.PLAN]
    assert 0.35 < plan.removed_fraction < 0.45
    assert len(app.get("download_button")) == 1
    app.slider(key="plan.ratio").set_value(0.2)
    app.multiselect(key="plan.protected_layers").set_value([0, 1])
    app.selectbox(key="plan.allocation").set_value("global")
    ok(app.run())
    assert not app.error
    assert app.session_state[state.PLAN].config.protected_layers == (0, 1)
    goto(app, "4_run.py")
    goto(app, "3_plan.py")  # the options survive a visit to another page
    assert app.slider(key="plan.ratio").value == 0.2 and app.multiselect(key="plan.protected_layers").value == [0, 1]
    assert app.session_state[state.PLAN].config.allocation == "global"


def test_plan_page_draws_the_risk_band_from_this_models_runs(app, runs_dir, tiny_model_dir):
    with_scores(app)
    goto(app, "3_plan.py")
    assert not [c for c in charts(app) if "perplexity x original" in c.proto.spec]  # nothing measured yet: no band
    assert not any("expect perplexity" in c.value for c in app.caption)
    done = [runs.submit(spec_for(tiny_model_dir, plan=tiny_plan(tiny_model_dir, r)), runs_dir) for r in (0.2, 0.4)]
    assert all(wait_done(j, runs_dir).state == "done" for j in done)
    ok(app.run())
    band = next(c for c in charts(app) if "perplexity x original" in c.proto.spec)
    assert "your runs" in band.proto.spec
    sentence = next(c.value for c in app.caption if "expect perplexity" in c.value)
    assert re.match(r"At \d+% removed, expect perplexity about x", sentence)  # the plan's ratio
    assert "from 2 finished run(s) of this model" in sentence


def test_plan_page_reports_an_impossible_ratio(app):
    with_scores(app)
    goto(app, "3_plan.py")
    app.slider(key="plan.ratio").set_value(0.9)
    ok(app.run())
    assert app.error and "allowed ratio range" in app.error[0].value


def test_sessions_do_not_share_jobs_uploads_or_scores_of_private_data(app, tiny_model_dir):
    """Separate st.session_state per session. Scores are offered to another session only for the same model and
    calibration (they follow from those alone: a refresh finds them); scores on an uploaded file never are."""
    with_scores(app)
    other = new_app(tiny_model_dir)
    assert any(app.session_state[state.SCORES].values())  # same process, separate st.session_state
    assert other.session_state[state.SCORES] is not app.session_state[state.SCORES]
    assert other.session_state[state.JOBS] == [] and other.session_state[state.PLAN] is None
    private = AppTest.from_file(APP, default_timeout=120)  # a session calibrating on its own uploaded file
    private.session_state[state.MODEL] = str(tiny_model_dir)
    private.session_state[state.DEVICE] = "cpu"
    private.session_state[state.CALIBRATION] = {"source": "file", "n_samples": 2, "seq_len": 16, "seed": 0,
                                                "path": "/tmp/minillm-session-xyz/calibration.txt"}
    goto(ok(private.run()), "2_importance.py")
    assert not any(private.session_state[state.SCORES].values())


def test_plan_upload_validates(app):
    with_scores(app)
    goto(app, "3_plan.py")
    good = app.session_state[state.PLAN].to_json()
    app.file_uploader(key="plan_upload").set_value(("plan.json", b"{not json", "application/json"))
    ok(app.run())
    ok(app.button[0].click().run())
    assert app.error and "not valid JSON" in app.error[0].value
    data = json.loads(good)
    data["config"]["ratio"] = 0.5
    data["config"]["round_to"] = 4
    app.file_uploader(key="plan_upload").set_value(("plan.json", json.dumps(data).encode(), "application/json"))
    ok(app.run())
    ok(app.button[0].click().run())
    assert app.session_state[state.UPLOADED_PLAN].config.round_to == 4


def wait_done(job_id: str, root: Path, timeout: float = 120) -> runs.RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = runs.status(job_id, root)
        if st.terminal:
            return st
        time.sleep(0.3)
    raise AssertionError("job did not finish")


def test_full_path_run_compare_runs(app, runs_dir, tiny_model_dir):
    goto(app, "4_run.py")
    assert "Make a plan first" in app.info[0].value
    with_scores(app)
    goto(app, "3_plan.py")
    goto(app, "4_run.py")
    app.number_input[0].set_value(2)  # windows
    app.number_input[1].set_value(16)  # window length
    ok(app.get("form_submit_button")[0].click().run())
    job_id = app.query_params["job"]
    assert app.session_state[state.JOBS] == [job_id]
    assert wait_done(job_id, runs_dir).state == "done"
    ok(app.run())
    assert any("Done in" in s.value for s in app.success)
    assert "perplexity wikitext2 after re-fit" in [m.label for m in app.metric]  # the re-fit is on by default

    # a second tab with the URL re-attaches to the same job
    other = new_app(tiny_model_dir)
    other.query_params["job"] = job_id
    goto(other, "4_run.py")
    assert any("Done in" in s.value for s in other.success)

    goto(app, "5_compare.py")
    table = frame(app, "metric")
    assert {"parameters", "perplexity wikitext2"} <= set(table["metric"])
    assert table.loc[table["metric"] == "parameters", "change"].iloc[0].endswith("better")  # fewer parameters
    assert any("smaller" in m.value and "perplexity (wikitext2)" in m.value for m in app.markdown)  # the headline
    assert len(charts(app)) == 3  # original vs pruned, what each layer keeps, size vs quality
    assert any("what each layer keeps" in c.proto.spec for c in charts(app))
    app.selectbox(key="gen_example").set_value("What is the capital of France?")
    ok(app.run())
    assert app.text_area(key="gen_prompt").value == "What is the capital of France?"  # an example fills the prompt
    app.text_area(key="gen_prompt").set_value("the cat")
    app.number_input[0].set_value(4)
    ok(app.get("form_submit_button")[0].click().run())
    spoken = [c.value for c in app.caption if "new tokens" in c.value]
    assert len(spoken) == 2 and all(1 <= int(c.split()[0]) <= 4 for c in spoken)  # both answered, streamed

    goto(app, "6_runs.py")
    assert frame(app, "state").shape[0] == 1
    assert len(app.get("download_button")) == 4
    assert any("load_pruned" in c.value for c in app.code)
    ok(app.button(key="gguf_write").click().run())  # the tiny model has no GGUF vocabulary: said, not a crash
    assert any("no GGUF tokenizer is known" in e.value for e in app.error)
    app.text_input[0].set_value("renamed run")
    ok(app.get("form_submit_button")[0].click().run())
    assert runs.get(job_id, runs_dir).name == "renamed run"
    app.checkbox(key="confirm_delete").check()
    ok(app.run())
    ok(app.button(key="delete_run").click().run())
    assert runs.list(root=runs_dir) == [] and not (runs_dir / job_id).exists()
    assert "No runs recorded yet" in app.info[0].value


def test_a_run_with_recovery_draws_perplexity_against_training_tokens(app, runs_dir):
    with_scores(app)
    goto(app, "3_plan.py")
    goto(app, "4_run.py")
    app.number_input[0].set_value(2)  # windows
    app.number_input[1].set_value(16)  # window length
    next(c for c in app.checkbox if c.label.startswith("Recover with LoRA")).check()
    app.number_input(key="run.lora.n_samples").set_value(24)
    app.number_input(key="run.lora.eval_every").set_value(2)
    assert app.number_input(key="run.lora.eval_every").label == "Perplexity every N updates (0 = before/after only)"
    assert app.number_input(key="run.lora.max_minutes").label == "Budget: minutes (0 = no limit)"
    app.number_input(key="run.lora.max_tokens").set_value(3000)  # the budget: about half a pass of 24 records
    ok(app.get("form_submit_button")[0].click().run())
    job_id = app.query_params["job"]
    assert wait_done(job_id, runs_dir).state == "done"
    ok(app.run())
    assert any("after LoRA" in m.label for m in app.metric)
    recovery = runs.get(job_id, runs_dir).metrics["recovery"]
    assert "**Perplexity against training tokens**" in [m.value for m in app.markdown]
    assert recovery["settings"]["max_tokens"] == 3000 and recovery["tokens"] >= 3000
    assert recovery["steps"] == recovery["total_steps"] < 24 // 4  # the budget, not the pass, set the updates
    assert (f"Recovery: {recovery['steps']} of {recovery['steps']} updates, {recovery['tokens']:,} training tokens"
            in " ".join(c.value for c in app.caption))
    steps = [c["step"] for c in recovery["curve"]]  # as pruned, every 2 updates, recovered
    assert steps == [0, *range(2, recovery["steps"], 2), recovery["steps"]] and len(steps) >= 3
    assert [c["step"] for c in runs.perplexity_curve(job_id, runs_dir)] == steps[1:-1]  # what the live chart read


@pytest.mark.parametrize("minutes", [0.0, 20.0])
def test_recovery_progress_says_when_a_time_budget_sets_its_total(app, runs_dir, tiny_model_dir, minutes):
    from minillm_core.recovery import RecoveryConfig
    from minillm_core.runs import store

    job_id = runs.submit(spec_for(tiny_model_dir, recovery=RecoveryConfig(max_minutes=minutes or None)), runs_dir,
                         start=False)
    folder = store.run_dir(job_id, runs_dir)
    status = store.read_status(folder)  # queued (no worker yet) but already recovering: the panel reads only this
    status.step, status.step_index, status.steps, status.done, status.total = runs.RECOVER_STEP, 3, 5, 12, 340
    store.write_status(folder, status)
    app.query_params["job"] = job_id
    goto(app, "4_run.py")
    text = app.get("progress")[0].proto.text
    if minutes:
        assert text.endswith("(12/~340, the updates its time budget allows at this pace)")
    else:
        assert text.endswith("(12/340)")


def test_compare_puts_two_runs_side_by_side_with_the_settings_that_differ(app, runs_dir, tiny_model_dir):
    first = runs.submit(spec_for(tiny_model_dir, name="a"), runs_dir)
    second = runs.submit(spec_for(tiny_model_dir, name="b", seq_len=8), runs_dir)
    assert wait_done(first, runs_dir).state == wait_done(second, runs_dir).state == "done"
    goto(app, "5_compare.py")
    assert "Two runs side by side" in [h.value for h in app.subheader]
    assert {app.selectbox(key="vs_a").value, app.selectbox(key="vs_b").value} == {first, second}
    metrics = frame(app, "B vs A")
    assert "perplexity wikitext2" in set(metrics["metric"])
    settings = frame(app, "setting")
    assert list(settings["setting"]) == ["evaluation.seq_len"]  # not the name nor the time: nothing else differs
    assert sorted(settings[["A", "B"]].iloc[0]) == ["16", "8"]
    app.selectbox(key="vs_b").set_value(app.selectbox(key="vs_a").value)
    ok(app.run())
    assert any("the same settings" in c.value for c in app.caption)


def test_failed_job_shows_its_error(app, runs_dir, tiny_model_dir):
    job_id = runs.submit(spec_for(tiny_model_dir, model=str(tiny_model_dir.parent / "gone")), runs_dir)
    wait_done(job_id, runs_dir)
    app.query_params["job"] = job_id
    goto(app, "4_run.py")
    assert app.error and "does not exist" in app.error[0].value
    goto(app, "5_compare.py")
    assert "No finished run yet" in app.info[0].value


def test_ab_page_runs_a_suite_saves_it_and_shows_the_worst_prompt(app, runs_dir, tiny_model_dir):
    goto(app, "7_ab.py")
    assert "No finished run with a saved model yet" in app.info[0].value
    job_id = runs.submit(spec_for(tiny_model_dir), runs_dir)
    assert wait_done(job_id, runs_dir).state == "done"
    app.query_params["job"] = job_id
    goto(app, "7_ab.py")
    assert "No A/B result for this run yet" in app.info[0].value
    app.selectbox(key="ab_suite").set_value("facts")
    app.number_input(key="ab_tokens").set_value(6)
    app.number_input(key="ab_limit").set_value(4)
    ok(app.get("form_submit_button")[0].click().run())
    saved = runs.ab_results(job_id, runs_dir)
    assert len(saved) == 1 and len(saved[0].records) == 4 and saved[0].config.max_new_tokens == 6
    assert any("4 facts prompts" in m.value for m in app.markdown)  # the headline
    assert {"identical answers", "token agreement", "KL per token"} <= {m.label for m in app.metric}
    table = frame(app, "agreement")
    assert list(table["agreement"]) == sorted(table["agreement"])  # the prompts that differ most first
    assert app.selectbox(key="ab_prompt").value == table["id"].iloc[0]
    assert len(charts(app)) == 1 and len(app.get("download_button")) == 2
    assert "<mark>" in app.get("html")[0].proto.body
    app.number_input(key="ab_tokens").set_value(3)  # a second result is kept beside the first, newest shown
    ok(app.get("form_submit_button")[0].click().run())
    assert [r.config.max_new_tokens for r in runs.ab_results(job_id, runs_dir)] == [3, 6]
    picker = app.selectbox(key="ab_result")
    assert len(picker.options) == 2 and picker.value == 0 and "3 tokens" in picker.options[0]
    goto(app, "5_compare.py")
    assert any("A/B test of the answers" in m.value for m in app.markdown)
    app.selectbox(key="contract_choice").set_value("size-first")  # reads the facts suite: the result above
    ok(app.run())
    clauses = frame(app, "clause")
    assert list(clauses["clause"]) == ["param_ratio >= 1.25", "retained/ppl/wikitext2 <= 2",
                                       "retained/ab/ref_match >= 0.7"]
    assert any("A/B metrics from: facts · 4 prompts" in c.value for c in app.caption)
    assert any("Contract **size-first**" in e.value for e in [*app.success, *app.error])
    app.selectbox(key="contract_choice").set_value("chat-assistant")  # no chat-suite result yet: said, with a link
    ok(app.run())
    assert any("A/B test on the **chat** suite" in i.value for i in app.info)
    assert "not measured" in set(frame(app, "clause")["measured"])


def test_importance_with_a_calibration_scorer_and_the_fidelity_sweep(app, data_dir):
    app.session_state[state.CALIBRATION] = {"source": "wikitext2", "n_samples": 2, "seq_len": 32, "seed": 0,
                                            "path": None}
    with_scores(app, "wanda-sp")
    assert app.session_state[state.ACTIVE_SCORER].startswith("wanda-sp")
    assert any("Forward-only (activations). Estimate: about" in c.value for c in app.caption)
    assert len(charts(app)) == 3
    app.multiselect[-1].set_value([1, 2])  # probe counts
    ok(next(b for b in app.button if b.label == "Run fidelity sweep").click().run())
    rows = app.session_state[state.FIDELITY]
    assert [(r["estimator"], r["n_probes"]) for r in rows] == [("spsa", 1), ("spsa", 2)]
    assert all(-1 <= r["cosine"] <= 1 for r in rows)
    assert len(charts(app)) == 4


@pytest.mark.parametrize("page", ["1_model.py", "2_importance.py", "3_plan.py", "4_run.py", "5_compare.py",
                                  "6_runs.py", "7_ab.py", "8_sweep.py"])
def test_every_page_runs_on_its_own_as_a_deep_link_does(page, tiny_model_dir, runs_dir, monkeypatch):
    """A deep link opened first on a cold server runs the page file without the router: no KeyError."""
    monkeypatch.chdir(Path(APP).parent)
    at = AppTest.from_file(str(Path(APP).parent / "pages" / page), default_timeout=120)
    at.session_state[state.MODEL] = str(tiny_model_dir)  # only the model: everything else from the page's init
    ok(at.run())


def test_no_data_at_all_offers_the_models_own_text_and_ends_in_heatmaps(app, tmp_path, monkeypatch):
    """No data mirror and no Hub (a new user's machine here): the error offers self calibration as a button."""
    monkeypatch.setenv("MINILLM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app.session_state[state.CALIBRATION] = {"source": "c4", "n_samples": 2, "seq_len": 16, "seed": 0, "path": None}
    with_scores(app, "wanda-sp")
    assert app.error and app.session_state[state.ACTIVE_SCORER] is None
    ok(app.button(key="use_own_text").click().run())  # one click: own text, then the scores
    assert app.session_state[state.CALIBRATION]["source"] == "self"
    assert app.session_state[state.ACTIVE_SCORER].startswith("wanda-sp") and len(charts(app)) == 3


def test_sweep_page_runs_a_sweep_in_the_background_and_draws_its_curves(app, fixture_mirror, monkeypatch):
    """Start a 2-point sweep (magnitude, re-fit off), wait for its background driver, then the curves, the table,
    the gate's verdict; the points are runs the Runs page lists."""
    monkeypatch.setenv("MINILLM_DATA_DIR", str(fixture_mirror))
    app.session_state[state.CALIBRATION] = {"source": "c4", "n_samples": 2, "seq_len": 16, "seed": 0, "path": None}
    goto(app, "8_sweep.py")
    assert any("No sweep yet" in i.value for i in app.info)
    app.multiselect(key="sweep_scorers").set_value(["magnitude"])
    app.multiselect(key="sweep_ratios").set_value([0.2, 0.4])
    app.radio(key="sweep_refit").set_value("off")
    app.number_input(key="sweep_limit").set_value(2)
    ok(app.button[0].click().run())
    key = app.session_state["sweep_key"]
    deadline = time.time() + 180
    while runs.sweep.driver_alive(key) and time.time() < deadline:
        time.sleep(0.5)
    assert not runs.sweep.driver_alive(key)
    ok(app.run())
    table = frame(app, "scorer")
    assert list(table["state"]) == ["done", "done"], table
    assert table["parameters"].iloc[1] < table["parameters"].iloc[0]
    fig = charts(app)[-1]
    names = [t.get("name") for t in json.loads(fig.proto.spec)["data"]]
    assert "magnitude (no re-fit)" in names and "original" in names
    assert any("Largest share removed with perplexity within 2x" in m.value for m in app.markdown)
    assert len(runs.list()) == 2


def test_scores_survive_a_refresh(tiny_model_dir, runs_dir):
    """A browser refresh is a new session: the scores computed before come back from the server's cache (same model
    and calibration), without computing again; another calibration does not see them."""
    state.forget_server_scores()
    first = new_app(tiny_model_dir)
    with_scores(first, "magnitude")
    again = new_app(tiny_model_dir)  # the refreshed tab
    goto(again, "2_importance.py")
    assert not any("No scores yet" in i.value for i in again.info)
    assert len(charts(again)) >= 2
    assert next(iter(again.session_state[state.SCORES].values())).keys() >= {"magnitude"}
    other = AppTest.from_file(APP, default_timeout=120)
    other.session_state[state.MODEL] = str(tiny_model_dir)
    other.session_state[state.DEVICE] = "cpu"
    other.session_state[state.CALIBRATION] = {"source": "c4", "n_samples": 3, "seq_len": 16, "seed": 1, "path": None}
    goto(ok(other.run()), "2_importance.py")
    assert any("No scores yet" in i.value for i in other.info)


def test_quick_demo_goes_from_the_model_page_to_compare(app):
    """One click: FLAP scores, a 20% plan, a background run followed on the Run page, which opens Compare when done."""
    ok(app.button(key="quick_demo").click().run())
    assert app.session_state[state.ACTIVE_SCORER] == "flap"
    plan = app.session_state[state.PLAN]
    assert plan is not None and abs(plan.removed_fraction - 0.2) < 0.03
    run_id = app.session_state[state.DEMO_JOB]
    assert app.query_params["job"] in (run_id, [run_id])
    deadline = time.time() + 180
    while not runs.status(run_id).terminal and time.time() < deadline:
        time.sleep(0.5)
    assert runs.status(run_id).state == "done", runs.status(run_id).error
    ok(app.run())  # the Run page sees the finished demo run and switches to Compare
    assert any(h.value == "Compare" for h in app.title), [t.value for t in app.title]
    assert app.session_state[state.DEMO_JOB] is None
    assert runs.get(run_id).name == "quick demo: flap 20%"


def test_importance_marks_what_the_current_plan_removes(app):
    with_scores(app, "magnitude")
    assert not any("Crosses" in c.value for c in app.caption)
    goto(app, "3_plan.py")  # builds the plan from the slider
    goto(app, "2_importance.py")
    assert any(c.value.startswith("Crosses: the heads the current plan removes") for c in app.caption)
    heads = json.loads(charts(app)[0].proto.spec)["data"]
    assert [t.get("name") for t in heads] == ["score", "removed by the plan"]

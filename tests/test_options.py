"""The one options model: CLI flags and dashboard widgets are generated from the config dataclasses, same defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from minillm_core.cli import evaluate, prune, recover
from minillm_core.cli.options import _convert, offered_options
from minillm_core.options import describe, option
from minillm_core.recovery import DEFAULT_EVAL, RecoveryConfig
from minillm_core.workflow import (
    CalibrationConfig,
    EvalConfig,
    LoadConfig,
    PlanConfig,
    ReconstructConfig,
    ScoreConfig,
)
from ui import state

APP = str(Path(__file__).resolve().parents[1] / "app.py")

COMMANDS = [prune.info, prune.plan_cmd, prune.prune, prune.score_cmd, evaluate.eval_cmd, evaluate.check,
            evaluate.search, recover.recover_cmd]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.__name__ for c in COMMANDS])
def test_cli_defaults_are_the_dataclass_defaults(command):
    offered = offered_options(command)
    assert offered
    for cls, instance, spec, flag_default in offered:
        # repeatable flags default to "not given"; what that converts to must be the dataclass default
        assert _convert(spec, flag_default) == getattr(instance, spec.name), (cls.__name__, spec.name)


def test_command_defaults_that_differ_from_the_class_are_declared_instances():
    """Where a command's default differs (score defaults to minillm, recover measures 40 windows), it is one
    declared instance, not a second literal."""
    by_name = {c.__name__: {(cls, s.name): inst for cls, inst, s, _ in offered_options(c)} for c in COMMANDS}
    assert by_name["score_cmd"][(ScoreConfig, "scorer")] == ScoreConfig("minillm")
    assert by_name["recover_cmd"][(EvalConfig, "limit")] is DEFAULT_EVAL
    assert by_name["check"][(EvalConfig, "limit")] is evaluate.CONTRACT_EVAL


def test_every_declared_option_is_offered_by_some_command():
    offered = {(cls, s.name) for c in COMMANDS for cls, _, s, _ in offered_options(c)}
    for cls in (PlanConfig, CalibrationConfig, ScoreConfig, LoadConfig, RecoveryConfig, EvalConfig,
                ReconstructConfig):
        missing = [s.name for s in describe(cls) if (cls, s.name) not in offered]
        assert not missing, f"{cls.__name__}: {missing}"


def test_choices_help_and_types_come_from_the_field():
    spec = {s.name: s for s in describe(PlanConfig)}
    assert spec["allocation"].choices == ("uniform", "global", "schedule", "search")
    assert "uniform" in spec["allocation"].help
    protect = spec["protected_layers"]
    assert protect.multiple and protect.optional and protect.type is int
    assert spec["ratio"].type is float and spec["ratio"].default == 0.2


def test_converting_flags():
    spec = {s.name: s for s in describe(EvalConfig)}
    assert _convert(spec["tasks"], ["all"]) == spec["tasks"].choices and len(spec["tasks"].choices) == 7
    assert _convert(spec["perplexity"], ["wikitext2,ptb"]) == ("wikitext2", "ptb")
    assert _convert(spec["limit"], 0) is None and _convert(spec["limit"], 5) == 5
    protect = {s.name: s for s in describe(PlanConfig)}["protected_layers"]
    assert _convert(protect, [""]) == () and _convert(protect, None) is None


def test_a_field_without_option_metadata_is_not_offered():
    @dataclasses.dataclass(frozen=True)
    class Config:
        shown: int = option(3, "a number", min=1)
        internal: str = "x"

    assert [s.name for s in describe(Config)] == ["shown"]


@pytest.fixture
def app(tiny_model_dir, runs_dir):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.MODEL] = str(tiny_model_dir)
    at.session_state[state.DEVICE] = "cpu"
    at.run()
    assert not at.exception
    return at


def test_widget_defaults_are_the_dataclass_defaults(app):
    calib = CalibrationConfig()
    assert app.selectbox(key="calib.source").value == calib.source
    assert app.number_input(key="calib.n_samples").value == calib.n_samples
    assert app.number_input(key="calib.seq_len").value == calib.seq_len
    assert app.selectbox(key="load.dtype").value == LoadConfig().dtype
    app.switch_page("pages/2_importance.py").run()
    app.selectbox[0].set_value("magnitude")
    app.button[0].click().run()
    app.switch_page("pages/3_plan.py").run()
    assert not app.exception
    plan = PlanConfig()
    assert app.slider(key="plan.ratio").value == plan.ratio
    for name in ("allocation", "target", "head_granularity"):
        assert app.selectbox(key=f"plan.{name}").value == getattr(plan, name)  # choices render as select boxes
    assert app.number_input(key="plan.round_to").value == plan.round_to
    from minillm_core import runs

    app.switch_page("pages/4_run.py").run()
    assert not app.exception
    run_eval = runs.eval_config()  # the Run page's declared default evaluation (quick: 16 windows)
    assert app.number_input(key="run.eval.limit").value == run_eval.limit
    assert app.number_input(key="run.eval.seq_len").value == run_eval.seq_len
    assert app.multiselect(key="run.eval.perplexity").value == list(run_eval.perplexity)
    assert app.number_input(key="run.lora.n_samples").value == RecoveryConfig().n_samples
    recon = runs.ReconstructConfig()
    assert app.checkbox(key="run.recon.enabled").value is recon.enabled
    assert app.selectbox(key="run.recon.target").value == recon.target
    assert app.selectbox(key="run.recon.select").value == recon.select == "obs"
    assert app.number_input(key="run.recon.damping").value == recon.damping

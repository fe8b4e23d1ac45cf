"""Compressed-model metrics, speed, generation A/B, quality gates and threshold search on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from minillm_core.cli import app
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.compare import compare_models, kl_and_agreement_from_logits, retained
from minillm_core.evaluation.gates import Contract, ContractError
from minillm_core.evaluation.generation import generate_ab
from minillm_core.evaluation.speed import SpeedConfig, measure_speed
from minillm_core.evaluation.suite import EvalConfig, RunMetrics, compare_metrics, evaluate, evaluate_pair
from minillm_core.io import save_pruned
from minillm_core.planning import PlanConfig
from minillm_core.search import search
from minillm_core.workflow import count_params, geometry_of, prune_and_evaluate, score
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan
from tests.helpers import save_tiny, tiny_model, tiny_tokenizer

NO_DATA = EvalConfig(perplexity=())


def test_kl_and_agreement_match_a_manual_computation():
    original, pruned_src = tiny_model("llama-gqa"), tiny_model("llama-gqa")
    pruned = apply_plan(pruned_src, plan(pruned_src, score(pruned_src, "magnitude"), PlanConfig(protected_layers=())))
    windows = torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(0))
    got = compare_models(original, pruned, windows, batch_size=2)
    with torch.no_grad():
        p, q = original(windows).logits.double(), pruned(windows).logits.double()
    manual_kl = (F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(q, -1))).sum(-1).mean()
    manual_agree = (p.argmax(-1) == q.argmax(-1)).double().mean()
    assert got.kl == pytest.approx(float(manual_kl), rel=1e-6)
    assert got.agreement == pytest.approx(float(manual_agree))
    assert got.n_tokens == 30


def test_kl_is_zero_for_identical_models_and_positive_otherwise():
    logits = torch.randn(4, 7)
    kl, same = kl_and_agreement_from_logits(logits, logits)
    assert torch.allclose(kl, torch.zeros(4, dtype=kl.dtype), atol=1e-12) and bool(same.all())
    kl2, _ = kl_and_agreement_from_logits(logits, torch.randn(4, 7))
    assert bool((kl2 > 0).all())


def test_retained_is_ratio_of_shared_metrics():
    assert retained({"ppl/wikitext2": 10.0, "acc/average": 0.5, "only": 1.0},
                    {"ppl/wikitext2": 15.0, "acc/average": 0.45}) == {"ppl/wikitext2": 1.5, "acc/average": 0.9}


def test_speed_metrics_are_measured_per_batch_size():
    out = measure_speed(tiny_model("opt"), SpeedConfig(batch_sizes=(1, 2), prompt_len=8, new_tokens=3, repeats=2))
    for key in ("speed/prefill_ms/bs1", "speed/decode_tps/bs1", "speed/prefill_ms/bs2", "speed/decode_tps/bs2",
                "memory/peak_inference_mb"):
        assert out[key] > 0


def test_generation_ab_is_deterministic_and_side_by_side():
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    rows = generate_ab({"a": model, "b": model}, tok, ["w1 w2 w3"], max_new_tokens=4)
    assert [r.model for r in rows] == ["a", "b"]
    assert rows[0].text == rows[1].text and rows[0].new_tokens <= 4 and rows[0].tokens_per_s > 0


@pytest.fixture
def pair():
    model = tiny_model("llama-gqa")
    p = plan(model, score(model, "magnitude"), PlanConfig(ratio=0.3, protected_layers=()))
    return model, apply_plan(model, p), p


def test_run_metrics_schema_and_files(pair, tmp_path):
    original, pruned, _ = pair
    run = evaluate_pair(original, pruned, tiny_tokenizer(), NO_DATA, model_name="tiny")
    run.write(tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["schema"] == "minillm.run/1"
    assert data["retained"]["params"] == pytest.approx(count_params(pruned) / count_params(original))
    assert data["comparison"]["param_ratio"] == pytest.approx(count_params(original) / count_params(pruned))
    assert (tmp_path / "metrics.csv").read_text().startswith("metric,original,pruned,retained")


def test_kl_and_perplexities_from_the_paired_pass_equal_separate_measurements(pair, data_dir):
    original, _, p = pair
    config = EvalConfig(perplexity=("wikitext2",), limit=3, compare_windows=2, batch_size=2, data_dir=str(data_dir))
    tok = tiny_tokenizer()
    outcome = prune_and_evaluate(original, tok, p, config)
    run = outcome.run
    assert run.original["ppl/wikitext2"] == pytest.approx(evaluate(original, tok, config)[0]["ppl/wikitext2"])
    assert run.pruned["ppl/wikitext2"] == pytest.approx(evaluate(outcome.pruned, tok, config)[0]["ppl/wikitext2"])
    assert run.details["original"]["perplexity"]["wikitext2"]["n_windows"] == 3
    separate = compare_metrics(original, outcome.pruned, tok, config)
    assert run.comparison["kl/wikitext2"] == pytest.approx(separate["kl/wikitext2"], rel=1e-6)
    assert run.comparison["agreement/wikitext2"] == separate["agreement/wikitext2"]
    reused = prune_and_evaluate(original, tok, p, config, original_metrics=(run.original, run.details["original"]))
    assert reused.run.comparison["kl/wikitext2"] == pytest.approx(separate["kl/wikitext2"], rel=1e-6)
    assert reused.run.original == run.original


def test_eval_config_round_trips_through_json():
    config = EvalConfig(perplexity=("wikitext2", "ptb"), tasks=("piqa",), limit=4, speed=True,
                        speed_config=SpeedConfig(batch_sizes=(1, 2), repeats=3), data_dir="/data")
    assert EvalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(MiniLLMError, match="unknown evaluation setting"):
        EvalConfig.from_dict({"perplexity": [], "windows": 3})


def _contract(**clause) -> Contract:
    return Contract.from_dict({"name": "t", "clauses": [clause]})


def test_a_passing_and_a_failing_contract():
    run = RunMetrics("tiny", NO_DATA, {"params": 100.0, "ppl/wikitext2": 10.0},
                     {"params": 70.0, "ppl/wikitext2": 12.0}, {}, {})
    assert _contract(metric="retained/ppl/wikitext2", max=1.3).check(run.flat())[0].passed
    failed = _contract(metric="retained/ppl/wikitext2", max=1.1).check(run.flat())[0]
    assert not failed.passed and failed.value == pytest.approx(1.2)
    missing = _contract(metric="acc/average", min=0.5).check(run.flat())[0]
    assert not missing.passed and missing.value is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"clauses": []}, "non-empty 'clauses' list"),
        ({"clauses": [{"min": 1}]}, "clause 1 needs a 'metric' name"),
        ({"clauses": [{"metric": "params"}]}, "needs 'min' or 'max'"),
        ({"clauses": [{"metric": "params", "mx": 3}]}, "unknown keys ['mx']; allowed: metric, min, max"),
        ({"clauses": [{"metric": "params", "max": "big"}]}, "clause 1 max must be a finite number, got 'big'"),
        ({"clauses": [{"metric": "params", "max": True}]}, "max must be a finite number, got True"),
        ({"clauses": [{"metric": "params", "min": float("nan")}]}, "min must be a finite number, got nan"),
        ({"clauses": [{"metric": "params", "min": 3, "max": 2}]}, "min 3 is above max 2; no value could pass"),
        ({"clauses": [{"metric": "perplexity", "max": 2}]}, "unknown metric 'perplexity'; metrics: params, size_mb"),
        ({"clauses": [{"metric": "retained/ppl/wikitext2/", "max": 2}]}, "unknown metric"),
    ],
)
def test_malformed_contracts(data, message):
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Contract.from_dict(data)


def test_contract_file_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("clauses: [unclosed")
    with pytest.raises(ContractError, match="is not valid YAML"):
        Contract.load(bad)
    with pytest.raises(ContractError, match="cannot read contract"):
        Contract.load(tmp_path / "missing.yaml")


def test_contract_files_are_bounded(tmp_path):
    """Issue 14: 403 bytes of nested YAML aliases once expanded to 4 GB; aliases, huge and binary files are refused."""
    bomb = tmp_path / "bomb.yaml"
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
                                                      for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    bomb.write_text("\n".join(levels) + "\nname: *h\nclauses: [{metric: params, max: 1}]\n")
    with pytest.raises(ContractError, match=r"aliases \(\*name\) are not allowed in a contract"):
        Contract.load(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("clauses: [{metric: params, max: 1}]\n" + "#" * 70_000)
    with pytest.raises(ContractError, match="is over 64 KB"):
        Contract.load(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ContractError, match="is not UTF-8 text"):
        Contract.load(binary)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 30_000 + "]" * 30_000)
    with pytest.raises(ContractError, match="is nested too deeply"):
        Contract.load(deep)
    example = tmp_path / "ok.yaml"
    example.write_text((Path(__file__).parents[1] / "assets" / "contract-example.yaml").read_text())
    assert len(Contract.load(example).clauses) == 3


def test_required_eval_covers_every_clause():
    c = Contract.from_dict({"clauses": [{"metric": "retained/ppl/ptb", "max": 1.3},
                                        {"metric": "retained/acc/average", "min": 0.9},
                                        {"metric": "speedup/decode/bs1", "min": 1.1}]})
    config = c.required_eval(EvalConfig(perplexity=(), tasks=("piqa", "boolq")))
    assert config.perplexity == ("ptb",) and config.tasks == ("piqa", "boolq") and config.speed


def test_search_finds_the_known_threshold():
    """Synthetic contract: keep at least 75% of the parameters; the answer is known from the geometry."""
    model = tiny_model("llama-gqa")
    total = geometry_of(model).total_params
    contract = _contract(metric="retained/params", min=0.75)
    base = PlanConfig(protected_layers=(), round_to=1)
    result = search(model, tiny_tokenizer(), score(model, "magnitude"), contract, base, NO_DATA,
                    low=0.05, high=0.6, tolerance=0.01)
    assert result.best_ratio is not None
    best = max((p for p in result.points if p["passed"]), key=lambda p: p["ratio"])
    assert best["params"] >= 0.75 * total
    failing_above = [p for p in result.points if p["ratio"] > result.best_ratio]
    assert failing_above and all(not p["passed"] for p in failing_above)
    assert min(p["ratio"] for p in failing_above) - result.best_ratio <= 0.01 + 1e-9
    assert 0.2 < result.best_ratio < 0.3  # removing ~25% of parameters, within rounding of whole heads


def test_search_sweep_records_the_curve():
    model = tiny_model("opt")
    result = search(model, tiny_tokenizer(), score(model, "magnitude"), _contract(metric="retained/params", min=0.5),
                    PlanConfig(protected_layers=()), NO_DATA, ratios=[0.1, 0.3, 0.6])
    assert [p["ratio"] for p in result.points] == [0.1, 0.3, 0.6]
    assert [p["passed"] for p in result.points] == [True, True, False]
    assert result.best_ratio == 0.3


runner = CliRunner()


def test_cli_check_exits_non_zero_on_failure(tmp_path):
    original = save_tiny("llama-gqa", tmp_path / "orig")
    model = tiny_model("llama-gqa")
    p = plan(model, score(model, "magnitude"), PlanConfig(ratio=0.3, protected_layers=()))
    pruned = save_pruned(apply_plan(model, p), tiny_tokenizer(), tmp_path / "pruned", p)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.json"
    good.write_text("clauses:\n  - metric: retained/params\n    max: 0.9\n")
    bad.write_text(json.dumps({"clauses": [{"metric": "retained/params", "max": 0.5}]}))
    ok = runner.invoke(app, ["check", "--contract", str(good), "--model", str(pruned), "--compare-to", str(original)])
    assert ok.exit_code == 0, ok.output
    assert "PASS  retained/params <= 0.9" in ok.stdout and "passed" in ok.stdout
    fail = runner.invoke(app, ["check", "--contract", str(bad), "--model", str(pruned), "--compare-to", str(original),
                               "--json"])
    assert fail.exit_code == 1
    assert json.loads(fail.stdout)["clauses"][0]["passed"] is False
    malformed = tmp_path / "m.yaml"
    malformed.write_text("clauses: 3")
    r = runner.invoke(app, ["check", "--contract", str(malformed), "--model", str(pruned)])
    assert r.exit_code == 2 and "non-empty 'clauses' list" in r.stderr


def test_saved_search_loads_and_plots(tmp_path):
    from minillm_core.search import load_search
    from ui.figures import search_figure

    model = tiny_model("opt")
    result = search(model, tiny_tokenizer(), score(model, "magnitude"), _contract(metric="retained/params", min=0.5),
                    PlanConfig(protected_layers=()), NO_DATA, ratios=[0.1, 0.6])
    curve = load_search(json.dumps(result.to_dict(), default=str))
    fig = search_figure(curve, "retained/params")
    assert [len(t.x) for t in fig.data] == [2, 1, 1]  # the line, one passing point, one failing point
    with pytest.raises(MiniLLMError, match="not a search result"):
        load_search('{"points": [{"x": 1}]}')


def test_search_ratios_and_seq_len_out_of_range_are_refused(tmp_path):
    """Issue 14: `search --ratios 1.5,-1` exited 0 and `eval --seq-len` beyond the context ran for minutes."""
    from typer.testing import CliRunner

    from minillm_core.cli import app
    from tests.helpers import save_tiny_model_dir

    model_dir = save_tiny_model_dir(tmp_path / "m", "opt")  # OPT: 64 positions
    contract = tmp_path / "c.yaml"
    contract.write_text("clauses: [{metric: params, max: 1.0e12}]\n")
    runner = CliRunner()
    r = runner.invoke(app, ["search", "--model", str(model_dir), "--scorer", "magnitude", "--contract", str(contract),
                            "--ratios", "1.5,-1"])
    assert r.exit_code == 2 and "ratios must be fractions of parameters in (0, 1), got [1.5, -1.0]" in r.stderr
    r = runner.invoke(app, ["eval", "--model", str(model_dir), "--seq-len", "128", "--limit", "1"])
    assert r.exit_code == 2 and "seq_len 128 is longer than the model's context (64 positions)" in r.stderr

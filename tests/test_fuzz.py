"""Fault campaign (hypothesis): every parser of user input either succeeds or raises the project's own error.

Random JSON, random text and valid documents with one field replaced at random go through plans, run specs,
evaluation settings, contracts, prompt suites, A/B results, calibration files and `-o key=value` options. An
`AttributeError`, `KeyError`, `TypeError` or any other exception escaping is a traceback a user would see.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm_core import workflow
from minillm_core.cli.options import parse_key_values
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation import ab
from minillm_core.evaluation.gates import Contract
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.planning import PruningPlan
from minillm_core.prompts import load_suite
from minillm_core.runs import RunSpec

#: Examples per parser: 120 in the suite; `MINILLM_FUZZ_EXAMPLES=2000` for a longer campaign.
CAMPAIGN = settings(max_examples=int(os.environ.get("MINILLM_FUZZ_EXAMPLES", "120")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@st.composite
def mutated(draw, valid: dict) -> Any:
    """`valid` with one field (anywhere in it) replaced by random JSON, or a field deleted."""
    path = draw(st.sampled_from(_paths(valid)))
    if draw(st.booleans()) and isinstance(path[-1], str):
        doc = json.loads(json.dumps(valid))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        return doc
    return _replace(valid, path, draw(JSON))


def survives(parse, data) -> None:
    """`parse(data)` returns, or raises MiniLLMError: nothing else."""
    with contextlib.suppress(MiniLLMError):
        parse(data)


@pytest.fixture(scope="module")
def plan_dict(tiny_model_dir) -> dict:
    from tests.helpers import tiny_plan

    return tiny_plan(tiny_model_dir).to_dict()


@pytest.fixture(scope="module")
def spec_dict(tiny_model_dir) -> dict:
    from tests.helpers import spec_for

    return spec_for(tiny_model_dir, evaluation=workflow.EvalConfig(ab=ab.ABConfig())).to_dict()


def test_plans_from_random_and_mutated_json(plan_dict):
    @CAMPAIGN
    @given(st.one_of(JSON, mutated(plan_dict)))
    def check(doc):
        survives(PruningPlan.from_dict, doc)
        survives(PruningPlan.from_json, json.dumps(doc))

    check()


def test_run_specs_and_eval_settings_from_random_and_mutated_json(spec_dict):
    @CAMPAIGN
    @given(st.one_of(JSON, mutated(spec_dict)))
    def check(doc):
        survives(RunSpec.from_dict, doc)
        if isinstance(doc, dict) and isinstance(doc.get("evaluation"), dict):
            survives(EvalConfig.from_dict, doc["evaluation"])

    check()


VALID_CONTRACT = {"name": "c", "prompts": "facts", "clauses": [{"metric": "ab/agreement", "min": 0.5},
                                                               {"metric": "retained/ppl/wikitext2", "max": 1.3}]}


@CAMPAIGN
@given(st.one_of(JSON, mutated(VALID_CONTRACT)))
def test_contracts_from_random_and_mutated_documents(doc):
    survives(Contract.from_dict, doc)


@CAMPAIGN
@given(text=st.text(max_size=300), suffix=st.sampled_from([".yaml", ".json"]))
def test_contract_files_of_random_text(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("contract") / f"c{suffix}"
    path.write_text(text, encoding="utf-8")
    survives(Contract.load, path)


SUITE_LINES = st.one_of(st.text(max_size=60), JSON.map(json.dumps), st.just('{"prompt": "hi", "reference": ["a"]}'),
                        st.just('{"messages": [{"role": "user", "content": "x"}]}'))


@CAMPAIGN
@given(lines=st.lists(SUITE_LINES, max_size=6), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_prompt_suite_files_of_random_lines(tmp_path_factory, lines, suffix):
    path = tmp_path_factory.mktemp("suite") / f"s{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    survives(load_suite, path)


@CAMPAIGN
@given(data=st.binary(max_size=200))
def test_prompt_suites_and_calibration_files_of_random_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("bytes")
    for name in ("s.jsonl", "s.csv", "s.txt"):
        (folder / name).write_bytes(data)
        survives(load_suite, folder / name)
    for name in ("c.txt", "c.jsonl"):
        (folder / name).write_bytes(data)
        survives(workflow.read_calibration_file, folder / name)


def _valid_ab() -> dict:
    record = ab.ABRecord(id="p1", tag="", prompt="hi", references=["a"], original="a b", pruned="a c",
                         original_tokens=2, pruned_tokens=2, exact_match=False, first_divergence=1, prefix=0.5,
                         agreement=0.5, kl=0.1, kl_max=0.2, rougeL=0.5, chrf=40.0,
                         ref_match={"original": True, "pruned": True}, ref_rougeL={"original": 1.0, "pruned": 1.0})
    return ab.ABResult("s", "bundled", ab.ABConfig(), [record], 1.0).to_dict()


@CAMPAIGN
@given(st.one_of(JSON, mutated(_valid_ab())))
def test_saved_ab_results_from_random_and_mutated_json(doc):
    def parse(d):
        result = ab.result_from_dict(d)
        result.comparison(), result.model_metrics("pruned"), result.headline(), result.to_csv()

    survives(parse, doc)


@CAMPAIGN
@given(st.lists(st.text(max_size=20), max_size=5))
def test_key_value_options(items):
    survives(parse_key_values, items)


def test_the_campaign_finds_a_planted_bug(plan_dict):
    """The harness itself can fail: a parser that leaks a KeyError on a missing field is caught."""
    def leaky(doc):  # trusts every kept channel index to be an int (most of a plan's fields are such indices)
        return sum(c + 1 for layer in doc["layers"] for c in layer["channels"])

    @settings(max_examples=200, deadline=None, database=None, report_multiple_bugs=False)
    @given(mutated(plan_dict))
    def check(doc):
        survives(leaky, doc)

    with pytest.raises((KeyError, TypeError, IndexError)):
        check()


def test_paths_helper_sees_nested_fields():
    assert ("a", "b", 0) in _paths({"a": {"b": [1]}}) and _replace({"a": [1, 2]}, ("a", 1), 9) == {"a": [1, 9]}


@pytest.fixture(scope="module")
def pruned_dir(tiny_model_dir, tmp_path_factory):
    from minillm_core.io import save_pruned
    from tests.helpers import tiny_plan

    loaded = workflow.load(str(tiny_model_dir), device="cpu")
    plan = tiny_plan(tiny_model_dir, ratio=0.3)
    return save_pruned(workflow.prune(loaded.model, plan), loaded.tokenizer, tmp_path_factory.mktemp("p") / "m", plan)


def test_pruned_model_manifests_mutated(pruned_dir):
    from minillm_core.io import MANIFEST, load_pruned

    good = json.loads((pruned_dir / MANIFEST).read_text())

    @CAMPAIGN
    @given(mutated(good))
    def check(doc):
        (pruned_dir / MANIFEST).write_text(json.dumps(doc))
        survives(lambda p: load_pruned(p, device="cpu"), pruned_dir)

    try:
        check()
    finally:
        (pruned_dir / MANIFEST).write_text(json.dumps(good))


def test_run_store_files_mutated(tiny_model_dir, tmp_path_factory):
    """A damaged status.json, spec.json or metrics.json shows that one run as failed; listing never raises."""
    from minillm_core import runs
    from minillm_core.runs import files
    from minillm_core.runs.worker import run as work
    from tests.helpers import spec_for

    root = tmp_path_factory.mktemp("store")
    job = runs.submit(spec_for(tiny_model_dir, evaluation=runs.eval_config(perplexity=(), measure_speed=False)),
                      root, start=False)
    assert work(root / job) == 0
    originals = {name: json.loads((root / job / name).read_text())
                 for name in (files.STATUS_FILE, files.SPEC_FILE, files.METRICS_FILE)}

    @CAMPAIGN
    @given(name=st.sampled_from(sorted(originals)), data=st.data())
    def check(name, data):
        doc = data.draw(st.one_of(JSON, mutated(originals[name])))
        (root / job / name).write_text(json.dumps(doc))
        try:
            listed = runs.list(root=root)
            assert [r.id for r in listed] == [job]
            survives(lambda i: (runs.get(i, root), runs.ab_results(i, root), runs.trend_rows(listed)), job)
        finally:
            (root / job / name).write_text(json.dumps(originals[name]))

    check()

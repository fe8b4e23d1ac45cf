"""A/B testing of responses: metrics on hand-made inputs, prompt suites, runs on tiny models, contracts, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minillm_core import workflow
from minillm_core.cli import app
from minillm_core.errors import DataError, MiniLLMError
from minillm_core.evaluation import ab
from minillm_core.evaluation.gates import Contract, ContractError, passed
from minillm_core.evaluation.suite import EvalConfig, evaluate_pair
from minillm_core.prompts import BUNDLED, MAX_SUITE_BYTES, load_suite
from tests.helpers import save_tiny, tiny_model, tiny_tokenizer

runner = CliRunner()
WORDS = " ".join(f"w{i}" for i in range(3, 40))


# --- metric functions --------------------------------------------------------------------------------------------

def test_divergence_and_prefix():
    assert ab.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert ab.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert ab.first_divergence([1, 2, 3], [1, 2]) == 2  # a shorter response diverges where it stops
    assert ab.prefix_fraction([1, 2, 3, 4], [1, 2, 9, 9]) == 0.5
    assert ab.prefix_fraction([], []) == 1.0


def test_reference_match_normalizes_and_needs_whole_words():
    assert ab.reference_match("The capital of France is PARIS.", ["Paris"])
    assert ab.reference_match("It is carbon  dioxide!", ["carbon dioxide", "CO2"])
    assert not ab.reference_match("Parisian food is great", ["Paris"])
    assert not ab.reference_match("anything", ["..."])  # a reference that normalizes to nothing never matches


def test_rouge_and_chrf_by_hand():
    # LCS("the cat sat", "the cat") = 2 tokens: precision 2/2, recall 2/3 -> F1 0.8
    assert ab.rouge_l("the cat", "the cat sat") == pytest.approx(0.8)
    assert ab.rouge_l("", "") == 1.0 and ab.rouge_l("dog", "cat") == 0.0
    assert ab.chrf("same text", "same text") == 100.0
    assert 0 < ab.chrf("the cat sat", "the cat sat down") < 100
    assert ab.chrf("xyz", "abc") == 0.0


def test_distribution():
    d = ab.distribution([0.0, 1.0, 2.0, 3.0, 4.0])
    assert (d["mean"], d["median"], d["min"], d["max"]) == (2.0, 2.0, 0.0, 4.0)
    assert d["p10"] == pytest.approx(0.4) and d["p90"] == pytest.approx(3.6)


def test_config_refuses_bad_values():
    for bad in ({"max_new_tokens": 0}, {"limit": 0}, {"temperature": 0.0}, {"prompts": ""}, {"batch_size": True}):
        with pytest.raises(MiniLLMError):
            ab.ABConfig(**bad)


# --- prompt suites -----------------------------------------------------------------------------------------------

def test_bundled_suites_load_with_unique_ids_and_references():
    for name in BUNDLED:
        suite = load_suite(name)
        assert suite.prompts and suite.source == "bundled"
        assert all(p.messages[-1][0] == "user" for p in suite.prompts)
    assert all(p.references for p in load_suite("facts").prompts)
    assert len(load_suite("chat").prompts[0].messages) == 3
    assert len(load_suite("facts", limit=3).prompts) == 3


def test_alpaca_suite_from_the_data_mirror(data_dir):
    suite = load_suite("alpaca", limit=3, data_dir=data_dir)
    assert suite.source == "dataset:alpaca" and len(suite.prompts) == 3
    assert all(p.text.endswith("### Response:") and p.references for p in suite.prompts)


def test_suite_files_jsonl_csv_txt(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"prompt": "hi", "reference": "hello", "tag": "greet"}\n\n'
                                      '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
                                      '"content": "b"}, {"role": "user", "content": "c"}]}\n')
    (tmp_path / "s.csv").write_text("prompt,reference,tag\nwhat is 2+2,4,math\nsay hi,,\n")
    (tmp_path / "s.txt").write_text("first prompt\n\n  second prompt  \n")
    j = load_suite(tmp_path / "s.jsonl")
    assert j.prompts[0].references == ("hello",) and j.prompts[0].tag == "greet"
    assert j.prompts[1].text == "user: a\nassistant: b\nuser: c"
    c = load_suite(str(tmp_path / "s.csv"))
    assert [p.references for p in c.prompts] == [("4",), ()]
    assert [p.text for p in load_suite(tmp_path / "s.txt").prompts] == ["first prompt", "second prompt"]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.jsonl", '{"prompt": "ok"}\n{not json}\n', "line 2 is not a JSON object"),
    ("extra.jsonl", '{"prompt": "ok", "answer": "x"}\n', "unknown field(s) ['answer']"),
    ("both.jsonl", '{"prompt": "a", "messages": []}\n', "exactly one of 'prompt'"),
    ("last.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
     "last turn must be the user's"),
    ("role.jsonl", '{"messages": [{"role": "robot", "content": "a"}]}\n', "one of system, user, assistant"),
    ("dup.jsonl", '{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n', "'x' is used twice"),
    ("ref.jsonl", '{"prompt": "a", "reference": 3}\n', "'reference' must be"),
    ("empty.txt", "\n\n", "has no prompts"),
    ("nocol.csv", "question\nwhat\n", "needs a 'prompt' column"),
    ("notes.md", "hello", "give a bundled suite (facts, instructions, code, chat, alpaca)"),
])
def test_bad_suite_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=None) as err:
        load_suite(tmp_path / name)
    assert message in str(err.value)


def test_suite_file_bounds(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * (MAX_SUITE_BYTES + 1))
    with pytest.raises(DataError, match="over 4 MB"):
        load_suite(big)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_suite(latin)
    with pytest.raises(DataError, match="cannot read prompt file"):
        load_suite(tmp_path / "missing.jsonl")


# --- A/B runs on tiny models -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    """A tiny llama, a pruned copy (30% of parameters, magnitude) and a word-level tokenizer."""
    model = tiny_model("llama-gqa")
    scores = workflow.score(model, "magnitude")
    plan = workflow.make_plan(model, scores, workflow.PlanConfig(ratio=0.3, protected_layers=()), "tiny")
    return model, workflow.prune(model, plan), tiny_tokenizer()


@pytest.fixture
def word_suite(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(" ".join(f"w{(i * 7 + j) % 90 + 3}" for j in range(4 + i % 5)) for i in range(10)))
    return load_suite(path)


def test_identical_models_agree_completely(pair, word_suite):
    model, _, tok = pair
    result = ab.run_ab(model, model, tok, word_suite, ab.ABConfig(max_new_tokens=8, batch_size=4))
    c = result.comparison()
    assert c["ab/exact_match"] == 1.0 and c["ab/agreement"] == 1.0 and c["ab/prefix"] == 1.0
    assert c["ab/kl"] == pytest.approx(0.0, abs=1e-9) and c["ab/worst_kl"] == pytest.approx(0.0, abs=1e-9)
    assert c["ab/rougeL"] == 1.0 and c["ab/chrf"] == 100.0
    assert all(r.first_divergence is None for r in result.records) and len(result.records) == 10


def test_pruned_model_agrees_less_and_run_is_deterministic(pair, word_suite):
    model, pruned, tok = pair
    side, pad = tok.padding_side, tok.pad_token
    config = ab.ABConfig(max_new_tokens=8, batch_size=3)
    first = ab.run_ab(model, pruned, tok, word_suite, config)
    c = first.comparison()
    assert c["ab/agreement"] < 1.0 and c["ab/kl"] > 0 and c["ab/worst_kl"] >= c["ab/kl"]
    assert c["ab/min_agreement"] <= c["ab/agreement"]
    assert any(r.first_divergence is not None for r in first.records)
    assert ab.run_ab(model, pruned, tok, word_suite, config).comparison() == c  # greedy: reproducible
    assert (tok.padding_side, tok.pad_token) == (side, pad)  # a shared tokenizer is left as it was
    worst = first.worst(3)
    assert [w.agreement for w in worst] == sorted(w.agreement for w in worst)
    assert worst[0].agreement == c["ab/min_agreement"]


def test_batching_does_not_change_results(pair, word_suite):
    model, pruned, tok = pair
    one = ab.run_ab(model, pruned, tok, word_suite, ab.ABConfig(max_new_tokens=6, batch_size=1))
    many = ab.run_ab(model, pruned, tok, word_suite, ab.ABConfig(max_new_tokens=6, batch_size=10))
    assert [r.original for r in one.records] == [r.original for r in many.records]
    for a, b in zip(one.records, many.records, strict=True):
        assert a.kl == pytest.approx(b.kl, abs=1e-4) and a.agreement == b.agreement


def test_seeded_sampling_is_reproducible(pair, word_suite):
    model, pruned, tok = pair
    config = ab.ABConfig(max_new_tokens=8, sample=True, temperature=1.0, seed=3)
    a = ab.run_ab(model, pruned, tok, word_suite, config)
    b = ab.run_ab(model, pruned, tok, word_suite, config)
    assert [r.pruned for r in a.records] == [r.pruned for r in b.records]
    greedy = ab.run_ab(model, pruned, tok, word_suite, ab.ABConfig(max_new_tokens=8))
    assert [r.original for r in a.records] != [r.original for r in greedy.records]


def test_prompts_longer_than_the_context_are_refused_and_logits_are_chunked(pair, tmp_path, monkeypatch):
    model, pruned, tok = pair
    opt = tiny_model("opt")  # 64 positions
    (tmp_path / "long.txt").write_text(" ".join(["w5"] * 60) + "\n")
    with pytest.raises(MiniLLMError, match="exceeds the model's context of 64 positions"):
        ab.run_ab(opt, opt, tok, load_suite(tmp_path / "long.txt"), ab.ABConfig(max_new_tokens=8))
    (tmp_path / "short.txt").write_text("w5 w6\nw7 w8 w9\nw10\n")
    suite = load_suite(tmp_path / "short.txt")
    whole = ab.run_ab(model, pruned, tok, suite, ab.ABConfig(max_new_tokens=6))
    monkeypatch.setattr(ab, "LOGITS_BUDGET_BYTES", 1)  # one row per teacher-forced pass
    chunked = ab.run_ab(model, pruned, tok, suite, ab.ABConfig(max_new_tokens=6))
    for a, b in zip(whole.records, chunked.records, strict=True):
        assert a.agreement == b.agreement and a.kl == pytest.approx(b.kl, abs=1e-5)


def test_chat_template_is_applied_to_conversations(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}w3 {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}w4{% endif %}")
    (tmp_path / "c.jsonl").write_text('{"messages": [{"role": "user", "content": "w5"}, {"role": "assistant", '
                                      '"content": "w6"}, {"role": "user", "content": "w7"}]}\n')
    prompt = load_suite(tmp_path / "c.jsonl").prompts[0]
    assert ab.render(prompt, tok, chat=True) == ("w3 w5 w3 w6 w3 w7 w4", True)
    assert ab.render(prompt, tok, chat=False) == ("User: w5\nAssistant: w6\nUser: w7\nAssistant:", False)


def test_references_score_each_model(pair, tmp_path):
    model, pruned, tok = pair
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}", "reference": [f"w{i + 2}"]})
                                              + "\n" for i in range(3, 9)))
    result = ab.run_ab(model, pruned, tok, load_suite(tmp_path / "r.jsonl"), ab.ABConfig(max_new_tokens=6))
    for which in ("original", "pruned"):
        m = result.model_metrics(which)
        expected = sum(ab.reference_match(getattr(r, which), r.references) for r in result.records) / 6
        assert m["ab/ref_match"] == expected and 0 <= m["ab/ref_rougeL"] <= 1
    assert "ref_match_original" in result.to_csv().splitlines()[0]
    again = ab.result_from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.comparison() == result.comparison()


def test_different_vocabularies_are_refused(tmp_path):
    a = workflow.load(str(save_tiny("llama-gqa", tmp_path / "a")))
    b = workflow.load(str(save_tiny("opt", tmp_path / "b")))
    b.tokenizer.add_tokens(["extra"])
    with pytest.raises(MiniLLMError, match="different vocabularies"):
        workflow.ab_test(a, b, "facts")
    from transformers import AutoModelForCausalLM

    from tests.helpers import tiny_config

    config = tiny_config("llama-gqa")
    config.vocab_size = 120
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wide")
    tiny_tokenizer(120).save_pretrained(tmp_path / "wide")
    for command in (["eval", "--ppl", "wikitext2"], ["ab"]):  # refused before any data is read or text generated
        result = runner.invoke(app, [*command, "--model", str(tmp_path / "a"), "--compare-to", str(tmp_path / "wide")])
        assert result.exit_code == 2 and "different vocabularies (120 vs 96 output tokens" in result.stderr


# --- contracts and the evaluation suite --------------------------------------------------------------------------

def test_contract_ab_clauses_pass_and_fail_as_they_should(pair, word_suite, tmp_path):
    model, pruned, tok = pair
    path = tmp_path / "words.txt"
    path.write_text("\n".join(p.text for p in word_suite.prompts))
    contract = Contract.from_dict({"name": "ab", "prompts": str(path), "clauses": [
        {"metric": "ab/agreement", "min": 0.99}, {"metric": "ab/worst_kl", "max": 4}]})
    config = contract.required_eval(EvalConfig(perplexity=()))
    assert config.ab is not None and config.ab.prompts == str(path)
    same = evaluate_pair(model, model, tok, config)
    assert passed(contract.check(same.flat()))
    cut = evaluate_pair(model, pruned, tok, config)
    results = contract.check(cut.flat())
    assert not results[0].passed and results[0].value < 0.99
    assert cut.details["ab"]["n_prompts"] == 10 and "ab.json" in cut.side_files()


def test_contract_templates_and_relative_prompts(tmp_path):
    for name in workflow.contract_templates():
        c = Contract.load(name)
        assert c.name == name and c.needs_ab and c.prompts in BUNDLED
    (tmp_path / "mine.txt").write_text("hello\n")
    (tmp_path / "c.yaml").write_text("name: c\nprompts: mine.txt\nclauses:\n  - metric: retained/ab/ref_match\n"
                                     "    min: 0.5\n")
    assert Contract.load(tmp_path / "c.yaml").prompts == str(tmp_path / "mine.txt")
    with pytest.raises(ContractError, match="unknown metric 'ab/nonsense'"):
        Contract.from_dict({"clauses": [{"metric": "ab/nonsense", "min": 1}]})
    with pytest.raises(ContractError, match="unknown key"):
        Contract.from_dict({"clauses": [{"metric": "ab/kl", "max": 1}], "prompt": "facts"})
    with pytest.raises(ContractError, match="bundled templates: chat-assistant"):
        Contract.load("no-such-template")


def test_eval_config_with_ab_round_trips():
    config = EvalConfig(ab=ab.ABConfig(prompts="chat", max_new_tokens=16))
    assert EvalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- CLI -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab-cli")
    original = save_tiny("llama-gqa", root / "original")
    result = runner.invoke(app, ["prune", "--model", str(original), "--scorer", "magnitude", "--ratio", "0.3",
                                 "--protect", "", "--out", str(root / "pruned"), "--no-reconstruct", "--json"])
    assert result.exit_code == 0, result.output
    (root / "p.txt").write_text("\n".join(f"w{i} w{i + 3} w{i + 5}" for i in range(3, 15)))
    return original, root / "pruned", root / "p.txt"


def test_cli_ab_writes_json_and_csv(cli_models, tmp_path):
    original, pruned, prompts = cli_models
    result = runner.invoke(app, ["ab", "--model", str(pruned), "--compare-to", str(original), "--prompts",
                                 str(prompts), "--max-new-tokens", "6", "--out", str(tmp_path / "ab.json"), "--csv",
                                 str(tmp_path / "out" / "ab.csv"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_prompts"] == 12 and payload["comparison"]["ab/agreement"] < 1
    assert json.loads((tmp_path / "ab.json").read_text())["comparison"] == payload["comparison"]
    assert len((tmp_path / "out" / "ab.csv").read_text().strip().splitlines()) == 13
    text = runner.invoke(app, ["ab", "--model", str(pruned), "--compare-to", str(original), "--prompts", str(prompts),
                               "--max-new-tokens", "4", "--show", "2"])
    assert text.exit_code == 0 and text.stdout.count("\n[") == 2 and "agreement" in text.stdout


def test_cli_ab_bad_input_is_one_line(cli_models, tmp_path):
    original, pruned, _ = cli_models
    for args, message in ((["--prompts", "nosuch"], "unknown prompt suite 'nosuch'"),
                          (["--prompts", str(tmp_path / "none.txt")], "cannot read prompt file"),
                          (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
                          (["--out", str(tmp_path)], "is a directory"),
                          (["--csv", str(tmp_path / "afile" / "x.csv")], "afile is a file, not a directory")):
        (tmp_path / "afile").write_text("mine")  # never replaced, never deleted
        result = runner.invoke(app, ["ab", "--model", str(pruned), "--compare-to", str(original), *args])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "mine"
    result = runner.invoke(app, ["eval", "--model", str(pruned), "--out", str(tmp_path / "afile" / "m.json")])
    assert result.exit_code == 2 and "loading" not in result.stderr  # refused before the model is loaded


def test_cli_check_with_ab_contract(cli_models, tmp_path):
    original, pruned, prompts = cli_models
    contract = tmp_path / "c.yaml"
    contract.write_text("name: words\nclauses:\n  - metric: ab/agreement\n    min: 0.999\n")
    args = ["check", "--contract", str(contract), "--model", str(pruned), "--compare-to", str(original),
            "--prompts", str(prompts), "--json"]
    failing = runner.invoke(app, args)
    assert failing.exit_code == 1 and json.loads(failing.stdout)["passed"] is False
    same = runner.invoke(app, [*args[:4], str(original), *args[5:]])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["clauses"][0]["value"] == 1.0
    listing = runner.invoke(app, ["suites", "--json"])
    assert set(json.loads(listing.stdout)["contract_templates"]) == {"chat-assistant", "extraction", "size-first"}


# --- runs and the report ---------------------------------------------------------------------------------------------

def test_run_with_an_ab_suite_records_it_and_the_report_shows_it(tiny_model_dir, runs_dir, tmp_path):
    from minillm_core import runs
    from tests.helpers import spec_for
    from ui.report import report_html

    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\na dog\nsome text\n")
    spec = spec_for(tiny_model_dir, evaluation=runs.eval_config(perplexity=(), limit=2, seq_len=16,
                                                                  measure_speed=False, prompts=str(prompts)))
    assert runs.RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    job = runs.submit(spec, runs_dir, start=False)
    from minillm_core.runs.worker import run as work

    assert work(runs_dir / job) == 0
    run = runs.get(job, runs_dir)
    assert 0 <= run.metrics["comparison"]["ab/agreement"] <= 1 and (runs_dir / job / "ab.json").is_file()
    measured = runs.ab_results(job, runs_dir)
    assert len(measured) == 1 and measured[0].suite == "p"
    saved = runs.save_ab(job, measured[0], runs_dir)
    (saved.parent / "broken.json").write_text("{")  # an unreadable result is skipped, the others still show
    assert len(runs.ab_results(job, runs_dir)) == 2
    page = report_html([run])
    assert "A/B: p · 3 prompts" in page and "<mark>" in page

"""Zero-shot tasks: prompts exactly as lm-eval builds them, log-likelihood math, metrics, result layout, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minillm_core.errors import DataError, RegistryError
from minillm_core.evaluation import zeroshot
from minillm_core.evaluation.tasks import ALL_TASKS, TASKS, Item, build_items, load_docs
from minillm_core.evaluation.zeroshot import (
    average_accuracy,
    encode_pair,
    evaluate_tasks,
    loglikelihoods,
    score_items,
    select_items,
    to_lm_eval_json,
)
from tests.helpers import tiny_model, tiny_tokenizer

HAND_MADE = {
    "boolq": ({"passage": "Cats purr.", "question": "do cats purr", "label": 1},
              ("Cats purr.\nQuestion: do cats purr?\nAnswer:", [" no", " yes"], 1)),
    "piqa": ({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
             ("Question: Open a jar\nAnswer:", [" twist the lid", " eat the lid"], 0)),
    "hellaswag": ({"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he",
                   "endings": ["bakes [title] bread.", "sings."], "label": "0"},
                  ("Baking: A man mixes flour. He", [" bakes. bread.", " sings."], 0)),
    "arc_easy": ({"question": "2+2?", "answerKey": "B", "choices": {"text": ["3", "4"], "label": ["A", "B"]}},
                 ("Question: 2+2?\nAnswer:", [" 3", " 4"], 1)),
    "openbookqa": ({"question_stem": "Fog forms near", "answerKey": " A",
                    "choices": {"text": ["a marsh", "a desert"], "label": ["A", "B"]}},
                   ("Fog forms near", [" a marsh", " a desert"], 0)),
}


@pytest.mark.parametrize("task", list(HAND_MADE))
def test_prompt_construction_matches_lm_eval_templates(task):
    doc, (context, continuations, gold) = HAND_MADE[task]
    (item,) = build_items(task, [doc])
    assert item.requests == tuple((context, c) for c in continuations)
    assert item.gold == gold


def test_winogrande_scores_the_fixed_continuation_after_each_option():
    doc = {"sentence": "The trophy did not fit in the case because _ was too big.", "option1": "the trophy",
           "option2": "the case", "answer": "1"}
    (item,) = build_items("winogrande", [doc])
    assert item.requests == (("The trophy did not fit in the case because the trophy", " was too big."),
                             ("The trophy did not fit in the case because the case", " was too big."))
    assert item.gold == 0


def test_encode_pair_moves_trailing_space_to_continuation():
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "w1 w2 ", "w3")
    assert ctx == tok("w1 w2", add_special_tokens=False).input_ids
    assert cont == tok("w3", add_special_tokens=False).input_ids


def test_loglikelihood_equals_manual_computation():
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    requests = [("w1 w2 w3", " w4 w5"), ("w7", " w8"), ("w9 w10 w11 w12", " w13")]
    got = loglikelihoods(model, tok, requests, batch_size=2)
    for (context, continuation), (ll, _greedy) in zip(requests, got, strict=True):
        ctx = tok(context, add_special_tokens=False).input_ids
        cont = tok(context + continuation, add_special_tokens=False).input_ids[len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0], dim=-1)
        manual = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert ll == pytest.approx(manual, abs=1e-4)


def test_acc_and_acc_norm_from_known_loglikelihoods(monkeypatch):
    items = [Item(0, (("q", " a"), ("q", " bbbb")), 1, ("a", "bbbb")),  # acc wrong (-1 > -2), norm right (-0.5 < -1)
             Item(1, (("q", " a"), ("q", " b")), 0, ("a", "b"))]
    fake = [(-1.0, False), (-2.0, False), (-0.5, True), (-3.0, False)]
    monkeypatch.setattr(zeroshot, "loglikelihoods", lambda *a, **k: fake)
    r = score_items(None, None, "piqa", items)
    assert r.metrics == {"acc": 0.5, "acc_norm": 1.0}
    assert [p["pred"] for p in r.predictions] == [0, 0] and [p["pred_norm"] for p in r.predictions] == [1, 0]


def test_subsets_are_first_n_or_seeded():
    items = [Item(i, (("c", " x"),), 0, ("x",)) for i in range(20)]
    assert [i.doc_id for i in select_items(items, 3, None)] == [0, 1, 2]
    a, b = select_items(items, 5, 7), select_items(items, 5, 7)
    assert [i.doc_id for i in a] == [i.doc_id for i in b] != [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="limit must be at least 1"):
        select_items(items, 0, None)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_reads_the_mirror(task, data_dir):
    items = build_items(task, load_docs(task))
    lines = (data_dir / TASKS.get(task).local).read_text(encoding="utf-8").splitlines()
    assert len(items) == sum(1 for line in lines if line.strip()) > 0  # one item per doc line, none dropped
    assert all(0 <= it.gold < len(it.requests) == len(it.choices) for it in items)
    assert len({it.gold for it in items}) > 1  # labels are read per doc, not defaulted


def test_the_real_mirror_has_every_task_in_full(real_data_dir):
    expected = {"boolq": 3270, "piqa": 1838, "hellaswag": 1000, "winogrande": 1267, "arc_easy": 2376,
                "arc_challenge": 1172, "openbookqa": 500}
    assert {task: len(build_items(task, load_docs(task))) for task in ALL_TASKS} == expected


def test_results_in_lm_eval_layout(data_dir):
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    results = evaluate_tasks(model, tok, ["arc_easy", "boolq"], limit=3)
    out = to_lm_eval_json(results, "tiny", limit=3, seed=None)
    assert set(out["results"]["arc_easy"]) == {"alias", "acc,none", "acc_stderr,none", "acc_norm,none",
                                               "acc_norm_stderr,none"}
    assert "acc_norm,none" not in out["results"]["boolq"]
    assert out["n-samples"]["arc_easy"] == {"original": len(load_docs("arc_easy")), "effective": 3}
    assert 0 <= average_accuracy(results) <= 1


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="unknown task 'mmlu'; supported: arc_challenge, arc_easy, boolq"):
        evaluate_tasks(None, None, ["mmlu"])
    with pytest.raises(DataError, match=r"task piqa needs .*piqa/valid\.jsonl, which does not exist"):
        load_docs("piqa", tmp_path)
    assert set(TASKS.names()) == set(ALL_TASKS)

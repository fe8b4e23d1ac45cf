"""Planning: config validation, allocation arithmetic, GQA rules, plan JSON round-trips and previews."""

from __future__ import annotations

import pytest
import torch

from minillm_core.allocation import SCHEDULE_SPAN, _spread, build_plan, round_channels, schedule_weights
from minillm_core.errors import PlanError
from minillm_core.groups import heads_to_keep, validate_heads
from minillm_core.modeling import LayerShape
from minillm_core.planning import ModelGeometry, PlanConfig, PruningPlan, default_protected_layers, summarize
from minillm_core.scoring import GroupScores
from minillm_core.workflow import geometry_of, score
from minillm_core.workflow import make_plan as plan
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def gqa():
    return tiny_model("llama-gqa")


def test_default_protection_scales_llm_pruner_rule():
    assert default_protected_layers(32) == (0, 1, 2, 3, 30, 31)
    assert default_protected_layers(30) == (0, 1, 2, 3, 28, 29)
    assert default_protected_layers(4) == (0,)
    assert default_protected_layers(2) == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.0}, "ratio must be a fraction of parameters in (0, 1)"),
        ({"ratio": 1.2}, "ratio must be a fraction of parameters in (0, 1)"),
        ({"allocation": "greedy"}, "unknown allocation 'greedy'; allowed: uniform, global"),
        ({"target": "layers"}, "unknown target 'layers'; allowed: auto, heads, channels, both, channels-first"),
        ({"head_granularity": "x"}, "unknown head granularity 'x'; allowed: q-heads, kv-groups"),
        ({"round_to": 0}, "round_to must be a positive integer"),
    ],
)
def test_plan_config_rejects_bad_values_naming_the_allowed_ones(kwargs, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PlanConfig(**kwargs)


def test_protected_layer_out_of_range(gqa):
    with pytest.raises(PlanError, match=r"protected layers \[7\] out of range; the model has layers 0..3"):
        plan(gqa, score(gqa, "magnitude"), PlanConfig(protected_layers=(7,)))


def test_ratio_that_would_remove_whole_layers_is_refused_with_the_reachable_maximum(gqa):
    with pytest.raises(PlanError, match=r"cannot remove 95.0% of parameters.*allowed ratio range: \(0, 0\.\d+\]"):
        plan(gqa, score(gqa, "magnitude"), PlanConfig(ratio=0.95, protected_layers=()))


def test_all_layers_protected(gqa):
    with pytest.raises(PlanError, match="every layer is protected"):
        plan(gqa, score(gqa, "magnitude"), PlanConfig(protected_layers=(0, 1, 2, 3)))


@pytest.mark.parametrize("allocation", ["uniform", "global", "schedule"])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3])
def test_achieved_ratio_is_close_to_target(gqa, allocation, ratio):
    p = plan(gqa, score(gqa, "random"), PlanConfig(ratio=ratio, allocation=allocation, protected_layers=(), round_to=1))
    assert abs(p.removed_fraction - ratio) < 0.03


def test_uniform_gives_unprotected_layers_equal_widths(gqa):
    p = plan(gqa, score(gqa, "magnitude"), PlanConfig(ratio=0.2, protected_layers=(0, 3)))
    shapes = p.shapes()
    assert shapes[0] == shapes[3] == geometry_of(gqa).layers[0]
    assert shapes[1] == shapes[2] != shapes[0]
    assert shapes[1].intermediate % 8 == 0


def test_schedule_takes_more_from_deeper_layers_and_spares_protected_ones(gqa):
    p = plan(gqa, score(gqa, "magnitude"), PlanConfig(ratio=0.15, allocation="schedule", protected_layers=(0,),
                                                     round_to=1))
    g = geometry_of(gqa)
    kept = [g.layer_params(s) for s in p.shapes()]
    assert p.shapes()[0] == g.layers[0]
    assert kept[1] > kept[2] >= kept[3]  # the fraction removed rises with depth
    assert abs(p.removed_fraction - 0.15) < 0.03


def test_schedule_weights_and_capped_spread():
    w = schedule_weights([2, 3, 4, 5])
    assert w[2] == 1.0 and w[5] == pytest.approx(SCHEDULE_SPAN) and w[3] < w[4] < w[5]
    share = _spread({0: 1.0, 1: 1.0, 2: 2.0}, {0: 10.0, 1: 10.0, 2: 3.0}, 12.0)
    assert share == pytest.approx({0: 4.5, 1: 4.5, 2: 3.0})  # the capped layer's excess goes to the others
    assert sum(_spread({0: 1.0, 1: 3.0}, {0: 5.0, 1: 5.0}, 4.0).values()) == pytest.approx(4.0)


def test_global_allocation_follows_scores():
    """A few channels far below their layer's distribution are the globally least important: they go first."""
    model = tiny_model("llama-gqa")
    g = geometry_of(model)
    heads = [torch.ones(6) for _ in range(4)]
    channels = [torch.linspace(1, 2, 80) for _ in range(4)]
    channels[2] = torch.cat([torch.full((6,), -100.0), torch.linspace(1, 2, 74)])
    p = build_plan(g, GroupScores("hand", heads, channels),
                   PlanConfig(ratio=0.02, allocation="global", target="channels", protected_layers=(), round_to=1))
    widths = [s.intermediate for s in p.shapes()]
    assert set(p.layers[2].channels).isdisjoint(range(6))
    assert widths[2] == min(widths) <= 80 - 6


def test_round_channels():
    shape = LayerShape(4, 2, 100)
    assert round_channels(61, shape, 8) == 64
    assert round_channels(3, shape, 8) == 8
    assert round_channels(1000, shape, 8) == 100


def test_q_head_granularity_removes_equally_from_every_kv_group():
    shape = LayerShape(num_heads=6, num_kv_heads=2, intermediate=8)
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 6.0])
    heads, kv = heads_to_keep(scores, shape, 1, "q-heads")
    assert heads == [0, 2, 4, 5] and kv == [0, 1]


def test_kv_group_granularity_removes_whole_groups():
    shape = LayerShape(num_heads=6, num_kv_heads=3, intermediate=8)
    scores = torch.tensor([5.0, 1.0, 0.1, 0.2, 4.0, 6.0])
    heads, kv = heads_to_keep(scores, shape, 1, "kv-groups")
    assert kv == [0, 2] and heads == [0, 1, 4, 5]


def test_never_the_last_head():
    shape = LayerShape(num_heads=6, num_kv_heads=2, intermediate=8)
    with pytest.raises(PlanError, match=r"can remove 0\.\.2 query heads per KV group, not 3"):
        heads_to_keep(torch.arange(6.0), shape, 3, "q-heads")


def test_gqa_validation_messages():
    shape = LayerShape(num_heads=6, num_kv_heads=2, intermediate=8)
    with pytest.raises(PlanError, match="KV head 1 is removed"):
        validate_heads([0, 3], [0], shape, tied=False)
    with pytest.raises(PlanError, match="same number of query heads"):
        validate_heads([0, 1, 3], [0, 1], shape, tied=False)
    with pytest.raises(PlanError, match="at least one attention head"):
        validate_heads([], [], shape, tied=False)


def test_plan_json_round_trip(gqa, tmp_path):
    p = plan(gqa, score(gqa, "magnitude"), PlanConfig(ratio=0.2, allocation="global", protected_layers=(0,)),
             model_name="tiny")
    p.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == p.to_dict()
    assert again.provenance["versions"]["torch"] == torch.__version__
    assert again.config.protected_layers == (0,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "plan is not valid JSON"),
        ("[]", "plan JSON must be an object"),
        ('{"format": 99}', "unsupported plan format 99"),
        ('{"format": 1, "model": "x"}', "malformed pruning plan"),
    ],
)
def test_malformed_plans_are_refused(text, message):
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_json(text)


def test_plan_for_another_model_is_refused(gqa):
    p = plan(gqa, score(gqa, "magnitude"), PlanConfig(protected_layers=()))
    from minillm_core.workflow import prune as apply_plan

    with pytest.raises(PlanError, match="plan is for a 'llama' model, this model is 'opt'"):
        apply_plan(tiny_model("opt"), p)


def test_summary_matches_pruned_model_and_geometry_serialises(gqa):
    from minillm_core.workflow import count_params
    from minillm_core.workflow import prune as apply_plan

    g = geometry_of(gqa)
    assert ModelGeometry.from_dict(g.to_dict()) == g
    p = plan(gqa, score(gqa, "magnitude"), PlanConfig(ratio=0.25, protected_layers=()))
    s = summarize(p, g)
    assert s.params_after == count_params(apply_plan(gqa, p))
    assert s.removed_fraction_non_embedding > s.removed_fraction
    assert s.size_mb_after["float16"] == pytest.approx(s.params_after * 2 / 2**20)
    assert [r["heads_after"] for r in s.rows] == [sh.num_heads for sh in p.shapes()]


def test_preview_does_not_touch_weights(gqa):
    g = geometry_of(gqa)
    scores = score(gqa, "magnitude")
    before = {k: v.clone() for k, v in gqa.state_dict().items()}
    summarize(build_plan(g, scores, PlanConfig(ratio=0.3, allocation="global", protected_layers=())), g)
    assert all(torch.equal(before[k], v) for k, v in gqa.state_dict().items())


def test_heavy_plans_come_with_a_warning(tiny_model_dir):
    from minillm_core import workflow

    loaded = workflow.load(str(tiny_model_dir), device="cpu")
    scores = workflow.score(loaded.model, "magnitude")
    mild = workflow.summary_of(workflow.make_plan(loaded, scores, PlanConfig(ratio=0.1, protected_layers=())),
                               loaded.model)
    heavy = workflow.summary_of(workflow.make_plan(loaded, scores, PlanConfig(ratio=0.45, protected_layers=(0,))),
                                loaded.model)
    assert workflow.plan_risks(mild) == []
    risks = workflow.plan_risks(heavy)
    assert any("keep under a quarter of their MLP channels (layers 1-3)" in r for r in risks)
    assert any("of the decoder blocks go: expect a much worse model" in r for r in risks)


def test_damaged_plans_and_scores_are_refused_with_a_reason(tiny_model_dir):
    """Issue 14: silently wrong results and tracebacks on damaged plans."""
    import json

    from minillm_core import workflow

    loaded = workflow.load(str(tiny_model_dir), device="cpu")
    scores = workflow.score(loaded.model, "magnitude")
    plan = workflow.make_plan(loaded, scores, PlanConfig(ratio=0.2, protected_layers=()))
    data = json.loads(plan.to_json())
    for value in (2.5, True, "1"):
        bad = json.loads(plan.to_json())
        bad["layers"][0]["heads"][0] = value
        with pytest.raises(PlanError, match="layer 0: heads must be integer indices"):
            PruningPlan.from_dict(bad)
    edited = dict(data, predicted_params=data["predicted_params"] - 1)
    with pytest.raises(PlanError, match=r"predicted_params \(.*\) do not match its kept widths"):
        workflow.prune(loaded.model, PruningPlan.from_dict(edited))
    shorter = dict(data, layers=data["layers"][:-1], original=data["original"][:-1])
    with pytest.raises(PlanError, match="made for a model with 3 layers, this model has 4"):
        workflow.prune(loaded.model, PruningPlan.from_dict(shorter))
    broken = GroupScores(scores.scorer, [h.clone() for h in scores.heads], [c.clone() for c in scores.channels],
                         scores.options)
    broken.channels[1][3] = float("nan")
    with pytest.raises(PlanError, match="1 of the magnitude scores are NaN or infinite"):
        workflow.make_plan(loaded, broken, PlanConfig(ratio=0.2))
    with pytest.raises(PlanError, match="removes nothing"):
        workflow.make_plan(loaded, scores, PlanConfig(ratio=0.0001, protected_layers=()))


def test_channels_first_takes_heads_only_where_channels_cannot_give_the_cut(tiny_model_dir):
    from minillm_core import workflow

    loaded = workflow.load(str(tiny_model_dir), device="cpu")
    scores = workflow.score(loaded.model, "magnitude")

    def shapes(ratio: float, target: str):
        plan = workflow.make_plan(loaded, scores, PlanConfig(ratio=ratio, target=target, protected_layers=()))
        return plan.shapes(), plan.removed_fraction

    mild, removed = shapes(0.15, "channels-first")
    assert all(s.num_heads == 6 for s in mild) and abs(removed - 0.15) < 0.05  # channels alone suffice
    assert [s.num_heads for s in shapes(0.15, "both")[0]] != [6] * 4  # LLM-Pruner's rule cuts heads too
    heavy, removed = shapes(0.55, "channels-first")
    assert any(s.num_heads < 6 for s in heavy) and all(s.intermediate <= 24 for s in heavy)  # channels first
    assert abs(removed - 0.55) < 0.05
    assert shapes(0.15, "auto") == shapes(0.15, "channels-first")  # auto: channels first below 30%,
    assert shapes(0.35, "auto") == shapes(0.35, "both")  # both from 30% on
    assert PlanConfig().target == "auto" and PlanConfig(ratio=0.3).resolved_target == "both"

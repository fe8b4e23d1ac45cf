"""The searched allocation: same total as the target, fitness never worse than the uniform start, recorded, seeded."""

from __future__ import annotations

import pytest
import torch

from minillm_core import workflow
from minillm_core.allocation_search import SearchConfig, _mutate
from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.planning import PlanConfig
from tests.helpers import tiny_model

KINDS = ["llama-gqa", "opt", "bloom"]


def _calib(rows: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (rows, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_search_meets_the_target_improves_on_uniform_and_leaves_the_model_alone(kind):
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = workflow.score(model, "magnitude")
    config = PlanConfig(ratio=0.3, allocation="search", protected_layers=())
    plan = workflow.search_plan(model, scores, config, _calib(), SearchConfig(generations=4, offspring=4))
    info = plan.provenance["search"]
    assert abs(plan.removed_fraction - 0.3) < 0.05
    assert info["kl_history"][-1] <= info["kl_history"][0]  # the best never gets worse than the uniform start
    assert info["evaluations"] == 17 and sum(info["levels"].values()) == 4 * SearchConfig().levels
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # variants swapped back out
    pruned = workflow.prune(model, plan)
    assert workflow.count_params(pruned) == plan.predicted_params


def test_search_is_seeded():
    model = tiny_model("llama-gqa")
    scores = workflow.score(model, "magnitude")
    config = PlanConfig(ratio=0.3, allocation="search", protected_layers=())
    a, b = (workflow.search_plan(model, scores, config, _calib(), SearchConfig(generations=3, offspring=3))
            for _ in range(2))
    assert a.layers == b.layers and a.provenance["search"]["levels"] == b.provenance["search"]["levels"]


def test_mutations_keep_the_total_and_the_bounds():
    import random

    rng = random.Random(0)
    levels, top = {1: 2, 2: 2, 3: 2}, {1: 4, 2: 3, 3: 2}
    for _ in range(200):
        levels = _mutate(levels, top, rng)
        assert sum(levels.values()) == 6 and all(0 <= v <= top[i] for i, v in levels.items())


def test_bad_requests_fail_clearly():
    model = tiny_model("llama-gqa")
    scores = workflow.score(model, "magnitude")
    config = PlanConfig(ratio=0.3, allocation="search", protected_layers=())
    with pytest.raises(MiniLLMError, match="holds out 4 calibration rows"):
        workflow.search_plan(model, scores, config, _calib(rows=4))
    with pytest.raises(MiniLLMError, match="generations must be an integer >= 1"):
        SearchConfig(generations=0)
    with pytest.raises(PlanError, match=r"workflow\.search_plan"):
        workflow.make_plan(model, scores, config)  # the arithmetic planner cannot search

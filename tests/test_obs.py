"""OBS selection: the greedy math on hand-made tensors against brute force, and the scorer on every architecture."""

from __future__ import annotations

import itertools

import pytest
import torch

from minillm_core import workflow
from minillm_core.errors import MiniLLMError
from minillm_core.planning import PlanConfig
from minillm_core.scoring import SCORERS, Engine, make_scorer
from minillm_core.scoring.obs import damped_inverse, obs_scores
from tests.helpers import tiny_model

KINDS = ["llama-gqa", "llama-mha", "mistral", "qwen2", "opt", "bloom"]


def _problem(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, n, generator=g, dtype=torch.float64) * torch.logspace(-2, 0, n, dtype=torch.float64)
    w = torch.randn(4, n, generator=g, dtype=torch.float64)
    return x, w, x.T @ x


def _refit_error(x, w, h, removed: list[int]) -> float:
    """Relative output error after removing columns `removed` and re-fitting the rest by least squares."""
    kept = [j for j in range(w.shape[1]) if j not in removed]
    fitted = w @ h[:, kept] @ torch.linalg.inv(h[kept][:, kept])
    return float((x @ w.T - x[:, kept] @ fitted.T).pow(2).sum() / (x @ w.T).pow(2).sum())


def test_scores_are_the_accumulated_error_of_the_refitted_removal():
    x, w, h = _problem()
    scores = obs_scores(w, h, unit=1, damping=0.0, step=1e-6)
    order = torch.argsort(scores).tolist()
    for k in range(1, 6):
        assert float(scores[order[k - 1]]) == pytest.approx(_refit_error(x, w, h, order[:k]), rel=1e-6)
    assert float(scores[order[-1]]) > float(scores[order[-2]])  # the last unit is never removed


def test_the_first_removal_is_the_cheapest_single_unit():
    x, w, h = _problem(seed=3)
    first = int(torch.argmin(obs_scores(w, h, damping=0.0)))
    assert first == min(range(6), key=lambda j: _refit_error(x, w, h, [j]))


def test_greedy_beats_the_magnitude_choice_and_scores_never_decrease():
    x, w, h = _problem(n=10, seed=5)
    scores = obs_scores(w, h, damping=0.0, step=0.25)
    order = torch.argsort(scores)
    assert torch.all(scores[order][1:] >= scores[order][:-1])
    greedy = _refit_error(x, w, h, order[:4].tolist())
    best = min(_refit_error(x, w, h, list(c)) for c in itertools.combinations(range(10), 4))
    by_norm = _refit_error(x, w, h, torch.argsort(w.norm(dim=0))[:4].tolist())
    assert best <= greedy + 1e-12 and greedy <= by_norm


def test_blocks_are_removed_whole():
    x, w, h = _problem(n=6, seed=1)
    scores = obs_scores(w, h, unit=2, damping=0.0)
    first = int(torch.argmin(scores))
    assert scores.shape == (3,)
    assert float(scores[first]) == pytest.approx(_refit_error(x, w, h, [2 * first, 2 * first + 1]), rel=1e-6)
    assert first == min(range(3), key=lambda b: _refit_error(x, w, h, [2 * b, 2 * b + 1]))


def test_a_singular_gram_matrix_is_damped_not_fatal():
    h = torch.zeros(4, 4, dtype=torch.float64)
    h[0, 0] = 1.0
    assert torch.isfinite(damped_inverse(h, 0.0)).all()
    assert torch.isfinite(obs_scores(torch.randn(3, 4), h, damping=0.0)).all()


def test_bad_shapes_and_options_fail_clearly():
    with pytest.raises(MiniLLMError, match="do not match"):
        obs_scores(torch.randn(3, 5), torch.eye(5), unit=2)
    with pytest.raises(MiniLLMError, match="step"):
        make_scorer("obs", step=0)
    with pytest.raises(MiniLLMError, match="calibration"):
        model = tiny_model("llama-gqa")
        make_scorer("obs").score(model, workflow.get_adapter(model))


def test_registered_with_its_engine():
    assert "obs" in SCORERS.names()
    assert make_scorer("obs").workload().engine is Engine.SEQUENTIAL
    assert workflow.describe_scorers()["obs"]["forward_only"]


@pytest.mark.parametrize("kind", KINDS)
def test_obs_scores_every_architecture_deterministically_and_prunes(kind):
    model = tiny_model(kind)
    calib = torch.randint(3, 96, (8, 16), generator=torch.Generator().manual_seed(2))
    a = workflow.score(model, "obs", calibration=calib)
    b = workflow.score(model, "obs", calibration=calib)
    adapter = workflow.get_adapter(model)
    for i, shape in enumerate(adapter.layer_shapes()):
        assert a.heads[i].shape == (shape.num_heads,) and a.channels[i].shape == (shape.intermediate,)
        assert torch.isfinite(a.heads[i]).all() and torch.isfinite(a.channels[i]).all()
    assert all(torch.equal(x, y) for x, y in zip(a.channels + a.heads, b.channels + b.heads, strict=True))
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    assert hooks == 0
    plan = workflow.make_plan(model, a, PlanConfig(ratio=0.3, allocation="global", protected_layers=()))
    pruned = workflow.prune(model, plan)
    workflow.reconstruct(model, pruned, plan, calib)
    assert workflow.count_params(pruned) == plan.predicted_params

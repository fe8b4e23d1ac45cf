"""Layer-wise reconstruction: the re-fit math on hand-made tensors, and tiny models of every architecture."""

from __future__ import annotations

import pytest
import torch

from minillm_core import workflow
from minillm_core.errors import MiniLLMError
from minillm_core.modeling import get_adapter
from minillm_core.planning import PlanConfig
from minillm_core.reconstruction import Gram, ReconstructConfig, best_fit, objective, reconstruct, refit, with_ones
from minillm_core.surgery import zero_mask
from tests.helpers import tiny_model

KINDS = ["llama-gqa", "llama-mha", "mistral", "qwen2", "opt", "bloom"]


def _stats(t: torch.Tensor, s: torch.Tensor) -> Gram:
    g = Gram.empty(t.shape[1], s.shape[1], t.device)
    g.add(t, s)
    return g


def test_refit_is_the_least_squares_solution():
    torch.manual_seed(0)
    x, w = torch.randn(200, 12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    kept = torch.tensor([0, 2, 3, 7, 9, 11])
    fitted = refit(w, _stats(x, x[:, kept]), damping=0.0)
    expected = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T
    torch.testing.assert_close(fitted, expected)


def test_refit_with_a_bias_column():
    torch.manual_seed(1)
    x, w, b = torch.randn(300, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 1)
    kept = torch.tensor([1, 4, 5])
    full = torch.cat([w, b.double()], dim=1)
    fitted = refit(full, _stats(with_ones(x), with_ones(x[:, kept])), damping=0.0)
    expected = torch.linalg.lstsq(with_ones(x[:, kept]), x @ w.T + b.double().T).solution.T
    torch.testing.assert_close(fitted, expected)


def test_exact_when_the_removed_columns_carry_nothing():
    torch.manual_seed(2)
    x, w = torch.randn(100, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    kept = torch.tensor([0, 1, 2, 5, 6])
    w[:, [3, 4, 7, 8, 9]] = 0.0  # the removed units never reach the output
    fitted = refit(w, _stats(x, x[:, kept]), damping=1e-8)
    torch.testing.assert_close(x[:, kept] @ fitted.T, x @ w.T, atol=1e-6, rtol=1e-6)


def test_an_extra_target_shifts_the_least_squares_fit():
    """The residual target: min ||S W'^T - (T W^T + R)||^2, with R accumulated as R^T S beside the Gram matrix."""
    torch.manual_seed(4)
    x, w, r = torch.randn(150, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64), torch.randn(150, 4)
    kept = torch.tensor([0, 3, 4, 8])
    stats = Gram.empty(9, 4, x.device)
    for rows in (slice(0, 70), slice(70, 150)):  # accumulated over batches
        stats.add(x[rows], x[rows][:, kept], r[rows])
    expected = torch.linalg.lstsq(x[:, kept], x @ w.T + r.double()).solution.T
    torch.testing.assert_close(refit(w, stats, damping=0.0), expected)
    residual = (x[:, kept] @ expected.T - x @ w.T - r.double()).pow(2).sum()
    assert objective(expected, w, stats) == pytest.approx(float(residual - (x @ w.T + r.double()).pow(2).sum()))


def test_best_fit_never_increases_the_error():
    torch.manual_seed(3)
    for damping in (0.0, 0.01, 1.0, 100.0):
        x, w = torch.randn(50, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
        kept = torch.arange(0, 16, 2)
        stats = _stats(x, x[:, kept])
        chosen, _ = best_fit(w, w[:, kept], stats, damping)
        assert objective(chosen, w, stats) <= objective(w[:, kept], w, stats) + 1e-9


def test_a_singular_gram_matrix_gets_more_damping():
    x = torch.zeros(20, 4, dtype=torch.float64)
    x[:, 0] = 1.0  # three dead inputs
    w = torch.randn(2, 4, dtype=torch.float64)
    fitted = refit(w, _stats(x, x), damping=0.0)
    assert torch.isfinite(fitted).all()


def _pruned(kind: str, ratio: float = 0.3):
    model = tiny_model(kind)
    plan = workflow.make_plan(model, workflow.score(model, "random", seed=0),
                              PlanConfig(ratio=ratio, allocation="global", protected_layers=()))
    return model, plan


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["local", "dense", "residual"])
def test_reconstruction_brings_the_pruned_model_closer(kind, target):
    model, plan = _pruned(kind)
    calib = torch.randint(3, 96, (16, 24), generator=torch.Generator().manual_seed(8))
    held = torch.randint(3, 96, (8, 24), generator=torch.Generator().manual_seed(9))
    ref = _logits(model, held)
    naive = workflow.prune(model, plan)
    refitted = workflow.prune(model, plan)
    hooks = _hook_count(model) + _hook_count(refitted)
    report = reconstruct(model, refitted, plan.layers, calib, ReconstructConfig(target=target, select="plan"))
    assert _hook_count(model) + _hook_count(refitted) == hooks  # every hook came off
    assert report.rows and all(r["error_after"] <= r["error_before"] + 1e-6 for r in report.rows)
    assert (_logits(refitted, held) - ref).pow(2).mean() < (_logits(naive, held) - ref).pow(2).mean()
    assert workflow.count_params(refitted) == plan.predicted_params  # shapes untouched, only values


@pytest.mark.parametrize("kind", KINDS)
def test_exact_recovery_when_the_removed_units_were_zero(kind):
    model, plan = _pruned(kind)
    zero_mask(get_adapter(model), plan.layers)  # removed heads/channels now contribute nothing
    pruned = workflow.prune(model, plan)
    reconstruct(model, pruned, plan.layers, torch.randint(3, 96, (16, 24)),
                ReconstructConfig(damping=1e-9, select="plan"))
    ids = torch.randint(3, 96, (4, 24))
    torch.testing.assert_close(_logits(pruned, ids), _logits(model, ids), atol=1e-4, rtol=1e-4)


def test_reconstruction_is_deterministic_and_leaves_the_original_alone():
    model, plan = _pruned("llama-gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.randint(3, 96, (8, 16))
    a, b = workflow.prune(model, plan), workflow.prune(model, plan)
    reconstruct(model, a, plan.layers, calib)
    reconstruct(model, b, plan.layers, calib)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_an_already_pruned_model_cannot_re_choose_its_units():
    model, plan = _pruned("llama-gqa")
    with pytest.raises(MiniLLMError, match="prune_and_reconstruct"):
        reconstruct(model, workflow.prune(model, plan), plan.layers, torch.randint(3, 96, (4, 8)), ReconstructConfig())


def test_config_is_validated():
    with pytest.raises(MiniLLMError, match="allowed: local, dense"):
        ReconstructConfig(target="global")
    with pytest.raises(MiniLLMError, match="damping"):
        ReconstructConfig(damping=-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["local", "dense", "residual"])
def test_pruning_in_place_layer_by_layer_gives_the_same_model(kind, target):
    model, plan = _pruned(kind)
    calib = torch.randint(3, 96, (8, 16), generator=torch.Generator().manual_seed(3))
    config = ReconstructConfig(target=target, select="plan")  # the two-model path keeps the plan's units
    copied = workflow.prune(model, plan)
    reconstruct(model, copied, plan.layers, calib, config)
    inplace, after, report = workflow.prune_and_reconstruct(model, plan, calib, config, inplace=True)
    assert after.layers == plan.layers and after.provenance["reconstruction"]["target"] == target
    assert inplace is model and workflow.count_params(model) == plan.predicted_params
    assert report["projections"] and report["calibration_rows"] == 8
    ids = torch.randint(3, 96, (4, 16))
    torch.testing.assert_close(_logits(inplace, ids), _logits(copied, ids), atol=1e-5, rtol=1e-4)
    assert _hook_count(inplace) == _hook_count(copied)  # ours came off (BLOOM's pruned layers keep their ALiBi one)


def test_prune_and_reconstruct_on_a_copy_leaves_the_model_alone():
    model, plan = _pruned("llama-gqa")
    before = workflow.count_params(model)
    pruned, _, _ = workflow.prune_and_reconstruct(model, plan, torch.randint(3, 96, (4, 16)))
    assert pruned is not model and workflow.count_params(model) == before


@pytest.mark.parametrize("kind", KINDS)
def test_obs_reselection_keeps_the_widths_and_fits_at_least_as_well(kind):
    model, plan = _pruned(kind, ratio=0.4)
    calib = torch.randint(3, 96, (16, 24), generator=torch.Generator().manual_seed(4))
    held = torch.randint(3, 96, (8, 24), generator=torch.Generator().manual_seed(5))
    ref = _logits(model, held)
    fixed, _, _ = workflow.prune_and_reconstruct(model, plan, calib, ReconstructConfig(select="plan"))
    chosen, after, report = workflow.prune_and_reconstruct(model, plan, calib, ReconstructConfig(select="obs"))
    # the plan's units were chosen at random (`_pruned`): units chosen on the data fit the original better
    assert (_logits(chosen, held) - ref).pow(2).mean() < (_logits(fixed, held) - ref).pow(2).mean()
    assert after.shapes() == plan.shapes() and after.layers != plan.layers  # new units, same widths
    assert after.provenance["reconstruction"]["select"] == "obs"
    assert workflow.count_params(chosen) == plan.predicted_params
    replayed = workflow.prune(model, after)  # the returned plan describes the pruned model
    assert [tuple(p.shape) for p in replayed.parameters()] == [tuple(p.shape) for p in chosen.parameters()]
    assert report["projections"]

"""The math of the importance criteria on hand-made tensors: Wanda-sp, WIFV, bias compensation, Taylor, FMS, SPSA.

Every expected value here is computed by hand or by a slower obvious formula, never by the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from minillm_core.scoring.base import GroupScores
from minillm_core.scoring.engine.forward import ColumnStats, merge_moments
from minillm_core.scoring.engine.probes import normal, probe_rounds, probe_seed, spsa_coefficient, spsa_gradient
from minillm_core.scoring.fidelity import cosine, fidelity, spearman
from minillm_core.scoring.flap import bias_compensation, per_unit, standardize, wifv
from minillm_core.scoring.fms import fms_weight_term
from minillm_core.scoring.taylor import taylor_element, taylor_vector
from minillm_core.scoring.terms import wanda_bias_term, wanda_weight_term

W = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.0, 4.0]])  # [out=2, in=3]


def test_merge_moments_matches_direct_mean_and_variance():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3 + 7
    count, mean, m2 = 0, torch.zeros(4), torch.zeros(4)
    for part in x.split([7, 20, 23]):
        count, mean, m2 = merge_moments(count, mean, m2, part)
    assert count == 50
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    assert torch.allclose(m2 / (count - 1), x.var(0), rtol=1e-4)


def test_column_stats_accumulate_over_batches_of_any_leading_shape():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)  # [batch, seq, in]
    stats = ColumnStats.empty(3, ("sq_norm", "mean", "var"), torch.device("cpu"))
    stats.update(x[:1])
    stats.update(x[1:])
    flat = x.reshape(-1, 3)
    assert stats.count == 8
    assert torch.allclose(stats.norm, flat.pow(2).sum(0).sqrt())
    assert torch.allclose(stats.mean, flat.mean(0))
    assert torch.allclose(stats.var, flat.var(0))
    mean_only = ColumnStats.empty(3, ("mean",), torch.device("cpu"))
    mean_only.update(x[:1])
    mean_only.update(x[1:])
    assert torch.allclose(mean_only.mean, flat.mean(0)) and mean_only.m2 is None


def test_wanda_weight_and_bias_terms():
    norm = torch.tensor([1.0, 10.0, 2.0])
    expected = torch.tensor([[1.0, 20.0, 1.0], [3.0, 0.0, 8.0]])
    assert torch.equal(wanda_weight_term(W, norm), expected)
    assert torch.allclose(wanda_bias_term(torch.tensor([-1.0, 2.0]), n_tokens=16), torch.tensor([4.0, 8.0]))


def test_wifv_is_variance_times_squared_column_norm_and_sums_per_unit():
    var = torch.tensor([2.0, 1.0, 0.5])
    cols = wifv(W, var)  # column norms^2: 10, 4, 16.25
    assert torch.allclose(cols, torch.tensor([20.0, 4.0, 8.125]))
    assert torch.allclose(per_unit(torch.arange(6.0), 2), torch.tensor([1.0, 5.0, 9.0]))


def test_standardize_gives_zero_mean_unit_std_over_all_layers():
    out = standardize([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 10.0])])
    flat = torch.cat(out)
    assert abs(float(flat.mean())) < 1e-6 and abs(float(flat.std()) - 1) < 1e-6
    assert torch.equal(flat.argsort(), torch.arange(4))


def test_bias_compensation_is_exact_when_removed_columns_are_constant():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    x[:, 1] = 0.7  # the removed column never fluctuates: its mean replaces it exactly
    removed = torch.tensor([1])
    bias = bias_compensation(W, x.mean(0), removed)
    assert torch.allclose(bias, torch.tensor([-1.4, 0.0]))
    kept = torch.tensor([0, 2])
    assert torch.allclose(x[:, kept] @ W[:, kept].T + bias, x @ W.T, atol=1e-6)


def test_taylor_element_and_vector():
    g = torch.tensor([[1.0, 1.0, -2.0], [1.0, 5.0, 0.5]])
    assert torch.equal(taylor_element(W, g), torch.tensor([[1.0, 2.0, 1.0], [3.0, 0.0, 2.0]]))
    signed = (W * g).sum(dim=0)  # per input column, as for an out-projection unit of width 1: [-2, -2, 1]
    assert torch.equal(taylor_vector(signed), torch.tensor([2.0, 2.0, 1.0]))


def test_fms_weight_term_is_abs_product_with_column_norm():
    g = torch.tensor([[1.0, -1.0, 2.0], [0.5, 3.0, -1.0]])
    x = torch.tensor([2.0, 1.0, 3.0])
    assert torch.equal(fms_weight_term(W, g, x), torch.tensor([[2.0, 2.0, 3.0], [3.0, 0.0, 12.0]]))


def test_spsa_coefficient_is_exact_for_a_linear_loss():
    g, w, z = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 1.0, -1.0])
    eps = 1e-2
    coef = spsa_coefficient(g @ (w + eps * z), g @ (w - eps * z), eps)
    assert math.isclose(float(coef), float(g @ z), rel_tol=1e-4)


def test_probe_seeds_are_distinct_and_noise_is_reproducible():
    seeds = {probe_seed(s, k, i) for s in range(3) for k in range(5) for i in range(7)}
    assert len(seeds) == 3 * 5 * 7
    cpu = torch.device("cpu")
    assert torch.equal(normal((4, 3), 11, cpu), normal((4, 3), 11, cpu))
    assert not torch.equal(normal((4, 3), 11, cpu), normal((4, 3), 12, cpu))


def test_probe_rounds_all_or_layer_by_layer():
    assert probe_rounds(3, 2, "all") == [(0, frozenset({0, 1, 2})), (1, frozenset({0, 1, 2}))]
    assert [r[1] for r in probe_rounds(2, 2, "layer")] == [frozenset({0})] * 2 + [frozenset({1})] * 2


def test_spsa_on_a_quadratic_converges_to_the_true_gradient():
    a = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.5])
    theta = torch.tensor([0.4, -0.3, 1.0, 0.2, -0.8])
    true = a * theta  # gradient of 0.5 * sum a theta^2
    loss = lambda t: 0.5 * (a * t * t).sum()  # noqa: E731
    errors = [float((spsa_gradient(loss, theta, n, eps=1e-3, seed=0) - true).norm() / true.norm())
              for n in (4, 64, 4096)]
    assert errors[2] < errors[0] and errors[2] < 0.1
    assert cosine(spsa_gradient(loss, theta, 4096, eps=1e-3), true) > 0.99
    assert torch.equal(spsa_gradient(loss, theta, 8, 1e-3, seed=3), spsa_gradient(loss, theta, 8, 1e-3, seed=3))


def test_cosine_and_spearman_on_known_vectors():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])) == pytest.approx(0.0)
    assert cosine(torch.zeros(3), a[:3]) == 0.0
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(4), a))


def test_fidelity_reports_cosine_and_per_layer_spearman():
    ref = GroupScores("ref", [torch.tensor([1.0, 2.0, 3.0])] * 2, [torch.tensor([4.0, 1.0, 2.0, 3.0])] * 2)
    flipped = GroupScores("est", [torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])], ref.channels)
    f = fidelity(flipped, ref)
    assert f["spearman_heads"] == pytest.approx([-1.0, 1.0])
    assert f["mean_spearman_heads"] == pytest.approx(0.0)
    assert f["mean_spearman_channels"] == pytest.approx(1.0)
    assert 0 < f["cosine"] < 1
    assert fidelity(ref, ref)["cosine"] == pytest.approx(1.0)

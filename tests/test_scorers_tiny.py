"""Every calibration scorer end-to-end on tiny random models of each family: shapes, determinism, no trace left.

Also checks the estimators against autograd: hook-perturbed losses, gate gradients, checkpointed backprop.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.modeling import get_adapter
from minillm_core.pipeline import apply_plan, plan, score
from minillm_core.planning import PlanConfig
from minillm_core.scoring import Need, make_scorer
from minillm_core.scoring.activations import collect_activations, sequence_losses
from minillm_core.scoring.fidelity import fidelity, probe_sweep
from minillm_core.scoring.flap import bias_compensation, compensate
from minillm_core.scoring.fms import (
    ProbeState,
    exact_gate_gradients,
    layer_linears,
    normal,
    probe_seed,
    spsa_gate_gradients,
    weight_probes,
)
from minillm_core.scoring.taylor import accumulate_gradients, gradients_only_for, prunable_linears
from tests.conftest import tiny_model

KINDS = ["llama-gqa", "llama-mha", "mistral", "qwen2", "opt", "bloom"]
CASES = {
    "wanda-sp": ("wanda-sp", {}),
    "flap": ("flap", {}),
    "flap-std": ("flap", {"standardize": True}),
    "taylor-element": ("taylor", {}),
    "taylor-vector-ckpt": ("taylor", {"variant": "vector", "checkpoint": True}),
    "minillm-spsa": ("minillm", {"estimator": "spsa", "n_probes": 2, "seed": 5}),
    "minillm-spsa-layer": ("minillm", {"estimator": "spsa", "n_probes": 1, "perturb": "layer"}),
    "minillm-gates": ("minillm", {"estimator": "gates", "n_probes": 2}),
    "minillm-gates-batch-layer": ("minillm", {"estimator": "gates", "gate_probes": "batch", "perturb": "layer",
                                              "combine": "taylor", "n_probes": 1}),
    "minillm-exact": ("minillm", {"estimator": "exact-layerwise"}),
    "minillm-exact-gates": ("minillm", {"estimator": "exact-gates"}),
}
FORWARD_ONLY = {"wanda-sp", "flap", "flap-std", "minillm-spsa", "minillm-spsa-layer", "minillm-gates",
                "minillm-gates-batch-layer"}
PLAN = PlanConfig(ratio=0.2, protected_layers=())


def _calibration(vocab: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(seed))


def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_scorer_end_to_end_leaves_no_trace(kind, case):
    name, options = CASES[case]
    model = tiny_model(kind)
    adapter = get_adapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    hooks = _hook_counts(model)
    cal = _calibration()

    first = score(model, name, cal, batch_size=3, **options)
    second = score(model, name, cal, batch_size=3, **options)

    shapes = adapter.layer_shapes()
    assert [h.shape[0] for h in first.heads] == [s.num_heads for s in shapes]
    assert [c.shape[0] for c in first.channels] == [s.intermediate for s in shapes]
    assert all(torch.isfinite(t).all() for t in first.heads + first.channels)
    assert any(t.abs().sum() > 0 for t in first.channels)
    # same seed -> same scores -> same plan
    assert all(torch.equal(a, b) for a, b in zip(first.heads + first.channels, second.heads + second.channels,
                                                 strict=True))
    assert plan(model, first, PLAN).layers == plan(model, second, PLAN).layers
    # bit-identical weights, hooks off, no gradients, flags and mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _hook_counts(model) == hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules() if isinstance(m, nn.Linear))
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all("forward" not in layer.__dict__ for layer in adapter.layers())
    assert not model.training
    scorer = make_scorer(name, batch_size=3, **options)
    assert (Need.BACKWARD not in scorer.needs) == (case in FORWARD_ONLY)
    assert first.options == scorer.options() and "needs" not in first.options


@pytest.mark.parametrize("estimator", ["spsa", "gates"])
def test_forward_only_estimates_change_with_the_seed(estimator):
    model, cal = tiny_model("llama-gqa"), _calibration()
    a = score(model, "minillm", cal, estimator=estimator, n_probes=1, seed=0)
    b = score(model, "minillm", cal, estimator=estimator, n_probes=1, seed=1)
    assert not torch.equal(torch.cat(a.channels), torch.cat(b.channels))


def test_declared_needs():
    assert make_scorer("wanda-sp").needs == {Need.ACTIVATIONS}
    assert make_scorer("flap").needs == {Need.ACTIVATIONS}
    assert make_scorer("taylor").needs == {Need.BACKWARD}
    assert make_scorer("minillm").needs == {Need.ACTIVATIONS, Need.FORWARD_PROBES}
    assert make_scorer("minillm", estimator="spsa").needs == {Need.ACTIVATIONS, Need.FORWARD_PROBES}
    assert make_scorer("minillm", estimator="gates", combine="taylor").needs == {Need.FORWARD_PROBES}
    assert make_scorer("minillm", estimator="exact-layerwise").needs == {Need.ACTIVATIONS, Need.BACKWARD}
    assert make_scorer("minillm", estimator="exact-gates").needs == {Need.ACTIVATIONS, Need.BACKWARD}


@pytest.mark.parametrize("options, allowed", [
    ({"estimator": "magic"}, "spsa, gates, exact-layerwise, exact-gates"),
    ({"perturb": "some"}, "all, layer"),
    ({"combine": "max"}, "fms, taylor"),
    ({"gate_probes": "token"}, "sequence, batch"),
])
def test_bad_options_name_the_allowed_values(options, allowed):
    with pytest.raises(MiniLLMError, match=allowed):
        make_scorer("minillm", **options)
    with pytest.raises(MiniLLMError, match="element, vector"):
        make_scorer("taylor", variant="second")


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_weight_probe_hooks_equal_really_perturbed_weights(kind):
    model, ids, eps = tiny_model(kind), _calibration()[:2], 1e-2
    adapter = get_adapter(model)
    state = ProbeState(sign=-1.0, probe=3, layers=frozenset(range(len(adapter.layers()))))
    with weight_probes(adapter, state, eps, seed=7), torch.inference_mode():
        hooked = sequence_losses(model, ids)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for index, lin in enumerate(lin for ls in layer_linears(get_adapter(moved)) for lin in ls):
            lin.weight -= eps * normal(tuple(lin.weight.shape), probe_seed(7, 3, index), lin.weight.device)
        direct = sequence_losses(moved, ids)
    assert torch.allclose(hooked, direct, atol=1e-5)


def _weight_grads(model, cal):
    adapter = get_adapter(model)
    params = [lin.weight for lin in prunable_linears(adapter)]
    with gradients_only_for(model, params):
        accumulate_gradients(model, cal, batch_size=3)
        return {id(p): p.grad.clone() for p in params}


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_exact_gate_gradient_is_the_vector_taylor_sum_of_the_out_projection(kind):
    model, cal = tiny_model(kind), _calibration()
    adapter = get_adapter(model)
    grads = _weight_grads(model, cal)
    gates = exact_gate_gradients(model, adapter, cal, batch_size=3, progress=lambda *a: None)
    for i, layer in enumerate(adapter.layers()):
        for site, slices in (("attn_out", adapter.attention_slices(layer)), ("mlp_out", adapter.mlp_slices(layer))):
            s = next(x for x in slices if x.dim == 1)
            wg = (s.linear.weight * grads[id(s.linear.weight)]).reshape(s.linear.weight.shape[0], s.n_units, -1)
            assert torch.allclose(gates[(i, site)], wg.sum(dim=(0, 2)), rtol=1e-3, atol=1e-6)


def test_checkpointed_backprop_gives_the_same_taylor_scores():
    model, cal = tiny_model("llama-gqa"), _calibration()
    plain = score(model, "taylor", cal, variant="vector")
    ckpt = score(model, "taylor", cal, variant="vector", checkpoint=True)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(plain.heads, ckpt.heads, strict=True))


@pytest.mark.parametrize("kind", ["llama-gqa", "opt"])
def test_one_gate_probe_is_the_exact_directional_derivative_times_the_probe(kind):
    """SPSA with one shared probe u estimates (g . u) u; compare with autograd's g (plumbing, not convergence)."""
    model, cal, eps = tiny_model(kind), _calibration(), 1e-2
    adapter = get_adapter(model)
    exact = exact_gate_gradients(model, adapter, cal, 4, lambda *a: None)
    est = spsa_gate_gradients(model, adapter, cal, 1, eps, "all", 3, 4, False, lambda *a: None)
    u = {key: normal((1, g.numel()), probe_seed(3, 0, 2 * key[0] + ("attn_out", "mlp_out").index(key[1])),
                     torch.device("cpu"))[0] for key, g in exact.items()}
    directional = sum(float(exact[key] @ u[key]) for key in exact)
    for key in exact:
        assert torch.allclose(est[key], directional * u[key], rtol=0.02, atol=1e-4 * abs(directional))


def test_probe_sweep_rows_and_fidelity_of_the_reference_with_itself():
    model, cal = tiny_model("qwen2"), _calibration()
    adapter = get_adapter(model)
    reference = score(model, "minillm", cal, estimator="exact-gates")
    assert fidelity(reference, reference)["cosine"] == pytest.approx(1.0)
    rows = probe_sweep(model, adapter, cal, reference, probes=(1, 2), estimator="gates")
    assert [r["n_probes"] for r in rows] == [1, 2]
    assert {"cosine", "mean_spearman_heads", "mean_spearman_channels", "seconds", "estimator"} <= set(rows[0])


def test_flap_bias_compensation_on_opt_updates_out_projection_biases():
    model, cal = tiny_model("opt"), _calibration()
    adapter = get_adapter(model)
    p = plan(model, score(model, "flap", cal), PLAN)
    pruned = apply_plan(model, p)
    old = get_adapter(pruned).mlp_out_proj(get_adapter(pruned).layers()[1]).bias.clone()
    stats = collect_activations(model, adapter, cal, sites=("attn_out", "mlp_out"), moments=("mean",))
    summary = compensate(model, pruned, p, stats=stats)
    assert summary["created_biases"] == 0
    removed = sorted(set(range(80)) - set(p.layers[1].channels))
    expected = old + bias_compensation(adapter.mlp_out_proj(adapter.layers()[1]).weight, stats[(1, "mlp_out")].mean,
                                       torch.tensor(removed))
    assert torch.allclose(get_adapter(pruned).mlp_out_proj(get_adapter(pruned).layers()[1]).bias, expected)


def test_flap_bias_compensation_needs_consent_where_no_bias_exists():
    model, cal = tiny_model("llama-gqa"), _calibration()
    p = plan(model, score(model, "flap", cal), PLAN)
    pruned = apply_plan(model, p)
    with pytest.raises(PlanError, match="allow_new_bias"):
        compensate(model, pruned, p, calibration=cal)
    pruned = apply_plan(model, p)
    summary = compensate(model, pruned, p, calibration=cal, allow_new_bias=True)
    assert summary["created_biases"] > 0
    assert get_adapter(pruned).attention_out_proj(get_adapter(pruned).layers()[0]).bias is not None
    with torch.no_grad():
        assert torch.isfinite(pruned(_calibration()).logits).all()

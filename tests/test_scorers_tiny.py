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
from minillm_core.planning import PlanConfig
from minillm_core.scoring import Need, make_scorer
from minillm_core.scoring.engine.backprop import accumulate_gradients, gradients_only_for
from minillm_core.scoring.engine.forward import collect_activations, sequence_losses
from minillm_core.scoring.engine.hooks import layer_linears, prunable_linears
from minillm_core.scoring.engine.layerwise import stream_layer_scores
from minillm_core.scoring.engine.probes import (
    ProbeState,
    exact_gate_gradients,
    normal,
    probe_seed,
    spsa_gate_gradients,
    spsa_weight_gradient,
    spsa_weight_rounds,
    weight_probes,
)
from minillm_core.scoring.fidelity import fidelity, probe_sweep
from minillm_core.scoring.flap import bias_compensation, compensate
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan
from minillm_core.workflow import score
from tests.helpers import tiny_model

KINDS = ["llama-gqa", "llama-mha", "mistral", "qwen2", "opt", "bloom"]
CASES = {
    "wanda-sp": ("wanda-sp", {}),
    "flap": ("flap", {}),
    "flap-std": ("flap", {"standardize": True}),
    "taylor-element": ("taylor", {}),
    "taylor-vector-ckpt": ("taylor", {"variant": "vector", "checkpoint": True}),
    "taylor-stream": ("taylor", {"stream": True}),
    "minillm-spsa": ("minillm", {"estimator": "spsa", "n_probes": 2, "seed": 5}),
    "minillm-spsa-layer": ("minillm", {"estimator": "spsa", "n_probes": 1, "perturb": "layer"}),
    "minillm-gates": ("minillm", {"estimator": "gates", "n_probes": 2}),
    "minillm-gates-batch-layer": ("minillm", {"estimator": "gates", "gate_probes": "batch", "perturb": "layer",
                                              "combine": "taylor", "n_probes": 1}),
    "minillm-exact": ("minillm", {"estimator": "exact-layerwise"}),
    "minillm-exact-backprop": ("minillm", {"estimator": "exact-backprop"}),
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
    assert make_scorer("minillm").needs == {Need.ACTIVATIONS, Need.BACKWARD}  # default: exact-layerwise
    assert make_scorer("minillm", estimator="spsa").needs == {Need.ACTIVATIONS, Need.FORWARD_PROBES}
    assert make_scorer("minillm", estimator="gates", combine="taylor").needs == {Need.FORWARD_PROBES}
    assert make_scorer("minillm", estimator="exact-layerwise").needs == {Need.ACTIVATIONS, Need.BACKWARD}
    assert make_scorer("minillm", estimator="exact-backprop").needs == {Need.ACTIVATIONS, Need.BACKWARD}
    assert make_scorer("minillm", estimator="exact-gates").needs == {Need.ACTIVATIONS, Need.BACKWARD}


def test_estimator_registry_declares_needs_and_engine_and_the_listing_reads_it():
    from minillm_core.scoring import SCORERS, describe_scorers
    from minillm_core.scoring.estimators import ESTIMATORS, forward_only_estimators

    assert ESTIMATORS.registered() == ["spsa", "gates", "exact-layerwise", "exact-backprop", "exact-gates"]
    assert forward_only_estimators() == ["spsa", "gates"]
    listed = describe_scorers()
    assert list(listed) == SCORERS.names() and "estimators" not in listed["flap"]
    assert list(listed["minillm"]["estimators"]) == ESTIMATORS.registered()
    for name in ESTIMATORS.registered():
        entry, scorer = ESTIMATORS.get(name), make_scorer("minillm", estimator=name, combine="taylor")
        assert scorer.needs == entry.needs and scorer.workload().engine is entry.engine
        assert listed["minillm"]["estimators"][name]["engine"] == entry.engine.value
        assert entry.forward_only == (Need.BACKWARD not in entry.needs)


@pytest.mark.parametrize("options, allowed", [
    ({"estimator": "magic"}, "spsa, gates, exact-layerwise, exact-backprop, exact-gates"),
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


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_spsa_gradient_rebuilt_from_seeds_equals_really_perturbed_weights(kind):
    """G_hat = mean_k (L(w + eps z_k) - L(w - eps z_k)) / (2 eps) z_k, with the weights really moved, per weight."""
    model, cal, eps, seed = tiny_model(kind), _calibration(), 1e-2, 4
    adapter = get_adapter(model)
    rounds = spsa_weight_rounds(model, adapter, cal, 2, eps, "all", seed, 3, lambda *a: None)
    linears = [lin for ls in layer_linears(adapter) for lin in ls]
    coefs = []
    for k in range(2):
        losses = []
        for sign in (1.0, -1.0):
            moved = copy.deepcopy(model)
            with torch.no_grad():
                for index, lin in enumerate(lin for ls in layer_linears(get_adapter(moved)) for lin in ls):
                    lin.weight += sign * eps * normal(tuple(lin.weight.shape), probe_seed(seed, k, index), "cpu")
                losses.append(float(sequence_losses(moved, cal).double().mean()))
        coefs.append((losses[0] - losses[1]) / (2 * eps))
    assert [r.coefficient for r in rounds] == pytest.approx(coefs, rel=1e-3, abs=1e-6)
    layer_of = [i for i, ls in enumerate(layer_linears(adapter)) for _ in ls]
    for index in (0, len(linears) - 1):
        lin = linears[index]
        want = sum(r.coefficient * normal(tuple(lin.weight.shape), probe_seed(seed, r.probe, index), "cpu")
                   for r in rounds) / 2
        got = spsa_weight_gradient(rounds, layer_of[index], index, lin.weight, 2, seed)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2", "opt", "bloom"])
def test_layerwise_streaming_gives_full_backprop_scores(kind):
    """exact-layerwise (one layer at a time from cached inputs) == exact-backprop; same for Taylor's stream engine."""
    model, cal = tiny_model(kind), torch.randint(0, 96, (5, 16), generator=torch.Generator().manual_seed(1))
    pairs = [("minillm", {"estimator": "exact-layerwise"}, {"estimator": "exact-backprop"}),
             ("taylor", {"stream": True}, {}), ("taylor", {"stream": True, "variant": "vector"}, {"variant": "vector"})]
    for name, streamed, full in pairs:
        a, b = score(model, name, cal, batch_size=2, **streamed), score(model, name, cal, batch_size=2, **full)
        for x, y in zip(a.heads + a.channels, b.heads + b.channels, strict=True):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7 * float(y.abs().max())), (name, streamed)


def test_layerwise_streaming_holds_one_layer_of_gradients_at_a_time():
    model, cal = tiny_model("llama-gqa"), _calibration()
    adapter = get_adapter(model)
    seen, flags = [], [p.requires_grad for p in model.parameters()]

    def reduce(i, stats):
        holders = [j for j, ls in enumerate(layer_linears(adapter)) if any(lin.weight.grad is not None for lin in ls)]
        seen.append((i, holders, sorted({key[1] for key in stats})))
        return torch.zeros(1), torch.zeros(1)

    stream_layer_scores(model, adapter, cal, lambda i: [lin.weight for lin in layer_linears(adapter)[i]], reduce,
                        batch_size=3)
    n = len(adapter.layers())
    assert seen == [(i, [i], ["attn_in", "attn_out", "mlp_in", "mlp_out"]) for i in reversed(range(n))]
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["llama-gqa", "opt", "bloom"])
def test_chunked_sequence_losses_match_the_models_own_loss_and_gradient(kind, monkeypatch):
    from minillm_core.scoring.engine import forward

    model, cal = tiny_model(kind), _calibration()
    monkeypatch.setattr(forward, "LOSS_CHUNK_TOKENS", 7)  # several chunks, one splitting a row
    own = model(input_ids=cal, labels=cal)
    own.loss.backward()
    want = model.get_output_embeddings().weight.grad.clone()
    model.zero_grad()
    ours = sequence_losses(model, cal)
    ours.mean().backward()
    assert float(ours.detach().mean()) == pytest.approx(float(own.loss.detach()), rel=1e-5)
    assert torch.allclose(model.get_output_embeddings().weight.grad, want, rtol=1e-4, atol=1e-7)


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
    both = PlanConfig(ratio=0.2, protected_layers=(), target="both")  # heads go too: the attention gets a bias
    p = plan(model, score(model, "flap", cal), both)
    pruned = apply_plan(model, p)
    with pytest.raises(PlanError, match="allow_new_bias"):
        compensate(model, pruned, p, calibration=cal)
    pruned = apply_plan(model, p)
    summary = compensate(model, pruned, p, calibration=cal, allow_new_bias=True)
    assert summary["created_biases"] > 0
    assert get_adapter(pruned).attention_out_proj(get_adapter(pruned).layers()[0]).bias is not None
    with torch.no_grad():
        assert torch.isfinite(pruned(_calibration()).logits).all()


def test_cost_estimate_tracks_each_engine():
    from minillm_core.scoring.cost import estimate_cost
    from minillm_core.workflow import geometry_of

    g = geometry_of(tiny_model("llama-gqa"))
    cost = lambda name, **o: estimate_cost(make_scorer(name, **o), g, n_samples=64, seq_len=128)  # noqa: E731
    assert cost("magnitude").engine == "weights" and cost("magnitude").extra_mb == 0
    assert (cost("flap").engine, cost("flap").forward_only, cost("flap").passes) == ("activations", True, 1.0)
    spsa2, spsa8 = cost("minillm", estimator="spsa", n_probes=2), cost("minillm", estimator="spsa", n_probes=8)
    assert spsa2.engine == "forward probes" and spsa2.forward_only and spsa8.passes == 17.0 > spsa2.passes
    assert cost("minillm", estimator="spsa", perturb="layer").passes == 1 + 2 * 2 * len(g.layers)
    full, streamed = cost("taylor"), cost("taylor", stream=True)
    assert (full.engine, streamed.engine) == ("full backprop", "layer streaming")
    assert not full.forward_only and not cost("minillm", estimator="exact-layerwise").forward_only
    assert cost("minillm", estimator="exact-layerwise").engine == "layer streaming"
    assert cost("minillm", estimator="exact-gates").extra_mb < cost("minillm", estimator="exact-backprop").extra_mb
    assert cost("taylor", checkpoint=True).extra_mb < full.extra_mb


@pytest.mark.parametrize("keep_every", [1, 3, 4])
def test_layerwise_streaming_segments_do_not_change_the_scores(keep_every):
    from minillm_core.scoring.engine.backprop import slice_grads
    from minillm_core.scoring.fms import fms_per_weight
    from minillm_core.scoring.terms import layer_group_scores

    model, cal = tiny_model("qwen2"), _calibration()
    adapter = get_adapter(model)

    def run(every):
        return stream_layer_scores(
            model, adapter, cal, lambda i: [lin.weight for lin in layer_linears(adapter)[i]],
            lambda i, st: layer_group_scores(adapter, i, fms_per_weight(st, lambda _i, s: slice_grads(s)[0])),
            batch_size=3, keep_every=every)

    want, got = run(2), run(keep_every)
    assert all(torch.equal(a, b) for a, b in zip(want[0] + want[1], got[0] + got[1], strict=True))

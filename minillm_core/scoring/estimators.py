"""The registry of FMS gradient estimators: where G comes from, what each needs, and the engine that runs it.

`MiniLLMScorer` (fms.py) dispatches through `ESTIMATORS`; `describe_scorers`, the cost model and the app read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch
from torch import nn

from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress
from minillm_core.registry import Registry
from minillm_core.scoring.base import Engine, Need
from minillm_core.scoring.engine.backprop import (
    accumulate_gradients,
    checkpointed_layers,
    gradients_only_for,
    weight_grad,
)
from minillm_core.scoring.engine.forward import Stats
from minillm_core.scoring.engine.hooks import linears_of_layer, prunable_linears
from minillm_core.scoring.engine.layerwise import LayerScores, stream_layer_scores
from minillm_core.scoring.engine.probes import (
    GateGrads,
    exact_gate_gradients,
    spsa_gate_gradients,
    spsa_weight_gradient,
    spsa_weight_rounds,
)

GradOf = Callable[[int, Slice], torch.Tensor]  # G of a slice's weight [out, in], given the slice's layer index
Scores = tuple[list[torch.Tensor], list[torch.Tensor]]  # (heads [num_heads], channels [intermediate]) per layer

#: Exact FMS, one decoder layer at a time: what `fidelity` compares the forward-only estimators against.
FIDELITY_REFERENCE = "exact-layerwise"


class Target(StrEnum):
    """What an estimator differentiates the loss with respect to, which decides how FMS reduces it."""

    WEIGHTS = "weights"  # G per weight; FMS = |W * G * X| summed per group (needs the input norms ||X||)
    GATES = "gates"  # dL/dgate of one multiplicative gate per head/channel; FMS = |dL/dgate| (x a prior)


class EstimatorOptions(Protocol):
    """The scorer options estimators read (`MiniLLMScorer` provides them)."""

    n_probes: int
    eps: float
    perturb: str
    seed: int
    gate_probes: str
    batch_size: int


@dataclass(frozen=True)
class EstimatorRun:
    """One estimator call: model, data, options, and FMS's reductions (fms.py) of what the estimator measures."""

    model: nn.Module
    adapter: ArchAdapter
    calibration: torch.Tensor  # [n_samples, seq_len] token ids
    options: EstimatorOptions
    stats: Stats | None  # statistics of the separate activation pass; None when none ran
    progress: Progress
    layer_scores: Callable[[int, Stats, GradOf], LayerScores]  # FMS of layer i from per-weight G
    gate_scores: Callable[[GateGrads], Scores]  # FMS of every group from dL/dgate

    def weight_scores(self, grad: GradOf) -> Scores:
        """`layer_scores` of every layer from `grad`, with the statistics of the separate activation pass."""
        pairs = [self.layer_scores(i, self.stats, grad) for i in range(len(self.adapter.layers()))]
        return [h for h, _ in pairs], [c for _, c in pairs]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its declared needs and engine, and `run`, which returns FMS group scores."""

    name: str
    target: Target
    needs: frozenset[Need]  # of the estimator itself; the scorer adds its prior's (see `MiniLLMScorer.needs`)
    engine: Engine
    records_stats: bool  # its engine records the activation statistics in its own forward: no separate pass
    description: str
    run: Callable[[EstimatorRun], Scores]

    @property
    def forward_only(self) -> bool:
        return Need.BACKWARD not in self.needs

    def describe(self) -> dict[str, Any]:
        return {"needs": sorted(n.value for n in self.needs), "engine": self.engine.value,
                "forward_only": self.forward_only, "target": self.target.value, "description": self.description}


ESTIMATORS: Registry[Estimator] = Registry("minillm estimator")


def estimator(
    name: str, target: Target, needs: Iterable[Need], engine: Engine, description: str, records_stats: bool = False,
) -> Callable[[Callable[[EstimatorRun], Scores]], Callable[[EstimatorRun], Scores]]:
    """Register the decorated function as estimator `name` with its declared needs and engine."""

    def decorator(run: Callable[[EstimatorRun], Scores]) -> Callable[[EstimatorRun], Scores]:
        ESTIMATORS.register(name)(Estimator(name, target, frozenset(needs), engine, records_stats, description, run))
        return run

    return decorator


def forward_only_estimators() -> list[str]:
    """The estimators that run no backward pass, in registration order."""
    return [n for n in ESTIMATORS.registered() if ESTIMATORS.get(n).forward_only]


# Registration order is the order users see (simplest first); the functions below are never called directly.
@estimator("spsa", Target.WEIGHTS, {Need.FORWARD_PROBES, Need.ACTIVATIONS}, Engine.PROBES,
           "The paper's: two-sided SPSA in weight space from loss-only forward passes (forward-only).")
def spsa(run: EstimatorRun) -> Scores:
    """Two-sided SPSA in weight space, z regenerated from seeds; memory = inference + one coefficient per probe
    (G_hat is rebuilt one weight matrix at a time when scoring). Mostly noise at affordable probe counts (issue 3)."""
    o, adapter = run.options, run.adapter
    rounds = spsa_weight_rounds(run.model, adapter, run.calibration, o.n_probes, o.eps, o.perturb, o.seed,
                                o.batch_size, run.progress)
    index = {id(lin): k for k, lin in enumerate(prunable_linears(adapter))}
    return run.weight_scores(lambda i, s: spsa_weight_gradient(rounds, i, index[id(s.linear)], s.linear.weight,
                                                               o.n_probes, o.seed))


@estimator("gates", Target.GATES, {Need.FORWARD_PROBES}, Engine.PROBES,
           "SPSA on one multiplicative gate per head/channel, probes independent per calibration row (forward-only).")
def gates(run: EstimatorRun) -> Scores:
    """SPSA on one gate per head/channel; scores |dL/dgate| (x Wanda-sp with combine="fms").
    Memory = inference + one float per gate."""
    o = run.options
    return run.gate_scores(spsa_gate_gradients(run.model, run.adapter, run.calibration, o.n_probes, o.eps, o.perturb,
                                               o.seed, o.batch_size, o.gate_probes == "sequence", run.progress))


@estimator("exact-layerwise", Target.WEIGHTS, {Need.BACKWARD, Need.ACTIVATIONS}, Engine.LAYERWISE,
           "Exact G one decoder layer at a time from cached layer inputs; no model-sized gradients (backprop).",
           records_stats=True)
def exact_layerwise(run: EstimatorRun) -> Scores:
    """Exact G per layer from cached layer inputs (engine/layerwise.py), reduced to group scores before the next
    layer; the layer-wise engine records the activation statistics in its own forward pass."""
    adapter = run.adapter
    return stream_layer_scores(
        run.model, adapter, run.calibration, lambda i: [lin.weight for lin in linears_of_layer(adapter, i)],
        lambda i, stats: run.layer_scores(i, stats, weight_grad), batch_size=run.options.batch_size,
        progress=run.progress)


@estimator("exact-backprop", Target.WEIGHTS, {Need.BACKWARD, Need.ACTIVATIONS}, Engine.BACKPROP,
           "The same G from one full backward per batch, a float32 gradient per prunable weight (backprop).")
def exact_backprop(run: EstimatorRun) -> Scores:
    """One full backward per batch (layers recomputed); kept as the cross-check of exact-layerwise."""
    params = [lin.weight for lin in prunable_linears(run.adapter)]  # FMS scores weights only
    with gradients_only_for(run.model, params), checkpointed_layers(run.adapter):
        accumulate_gradients(run.model, run.calibration, run.options.batch_size, run.progress,
                             "minillm exact backward")
        return run.weight_scores(weight_grad)


@estimator("exact-gates", Target.GATES, {Need.BACKWARD}, Engine.BACKPROP,
           "Exact dL/dgate per head/channel by backprop to the gates only, no weight gradients (backprop).")
def exact_gates(run: EstimatorRun) -> Scores:
    """Backprop to the gates only: memory = inference weights, one layer's activations and one float per gate."""
    return run.gate_scores(exact_gate_gradients(run.model, run.adapter, run.calibration, run.options.batch_size,
                                                run.progress))

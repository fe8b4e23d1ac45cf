"""MINI-LLM's Feature Map Sensitivity S = |W * G * X| per weight summed per group, with several gradient estimators.

"spsa" is the paper's forward-only weight-space estimate; "gates" and the backprop references are issue 3, section 3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.activations import (
    DEFAULT_BATCH_SIZE,
    batches,
    collect_activations,
    eval_mode,
    group_scores,
    layer_group_scores,
    model_device,
    sequence_losses,
    slice_site,
)
from minillm_core.scoring.base import SCORERS, GroupScores, Need, Scorer
from minillm_core.scoring.streaming import gradients_only_for, stream_layer_scores
from minillm_core.scoring.taylor import (
    accumulate_gradients,
    checkpointed_layers,
    linears_of_layer,
    prunable_linears,
    slice_grads,
)
from minillm_core.scoring.wanda import wanda_per_weight

logger = logging.getLogger(__name__)

ESTIMATORS = ("spsa", "gates", "exact-layerwise", "exact-backprop", "exact-gates")
FORWARD_ONLY = ("spsa", "gates")
WEIGHT_GRADIENTS = ("spsa", "exact-layerwise", "exact-backprop")  # estimators of G per weight (FMS needs ||X||)
PERTURB = ("all", "layer")
COMBINE = ("fms", "taylor")
GATE_PROBES = ("sequence", "batch")
_GATE_SITES = ("attn_out", "mlp_out")


# --- pure math ------------------------------------------------------------------------------------------------
def fms_weight_term(weight: torch.Tensor, grad: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """Feature Map Sensitivity per weight |W_ij * G_ij * X_j|. weight, grad: [out, in]; col_norm: [in]."""
    return (weight.float() * grad.float() * col_norm.float()[None, :]).abs()


def spsa_coefficient(loss_plus: torch.Tensor, loss_minus: torch.Tensor, eps: float) -> torch.Tensor:
    """Two-sided directional derivative (L(w + eps z) - L(w - eps z)) / (2 eps); multiply by z for G_hat."""
    return (loss_plus - loss_minus) / (2 * eps)


def probe_seed(seed: int, probe: int, index: int) -> int:
    """A distinct, reproducible generator seed per (scorer seed, probe, perturbed tensor)."""
    return ((seed * 1_000_003 + probe) * 1_000_033 + index) % (2**63 - 1)


def normal(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """z ~ N(0, I) from a local generator seeded with `seed` (regenerated on demand instead of stored)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


def spsa_gradient(
    loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, n_probes: int, eps: float, seed: int = 0
) -> torch.Tensor:
    """Reference SPSA on a flat parameter vector: mean_k coef_k * z_k (what the scorer does with hooks). theta: [d]."""
    acc = torch.zeros_like(theta, dtype=torch.float32)
    for k in range(n_probes):
        z = normal(tuple(theta.shape), probe_seed(seed, k, 0), theta.device)
        acc += spsa_coefficient(loss(theta + eps * z), loss(theta - eps * z), eps) * z
    return acc / n_probes


# --- probe state and hooks ------------------------------------------------------------------------------------
@dataclass
class ProbeState:
    """What the hooks apply on the current forward: read by hooks, written by the estimator loops."""

    sign: float = 0.0  # 0: clean forward
    probe: int = 0
    layers: frozenset[int] = frozenset()  # layers perturbed in this round
    rows: slice = field(default_factory=lambda: slice(None))  # calibration rows of the current mini-batch
    gates: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [1 or n_rows, units] multipliers


def layer_linears(adapter: ArchAdapter) -> list[list[nn.Linear]]:
    """`linears_of_layer` of every layer: the probe seeds index this order."""
    return [linears_of_layer(adapter, i) for i in range(len(adapter.layers()))]


@contextmanager
def weight_probes(adapter: ArchAdapter, state: ProbeState, eps: float, seed: int) -> Iterator[None]:
    """Forward hooks that turn each perturbed linear's output into x (W + sign*eps*z)^T + b.

    The weights are never written: the hook adds sign*eps*x z^T, with z regenerated per call from its seed, so only
    one linear's z is alive at a time and the weights stay bit-identical.
    """
    handles = []

    def make(layer: int, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if state.sign == 0.0 or layer not in state.layers:
                return None
            z = normal(tuple(module.weight.shape), probe_seed(seed, state.probe, index), module.weight.device)
            return out + (state.sign * eps) * F.linear(args[0], z.to(args[0].dtype))

        return hook

    try:
        index = 0
        for i, linears in enumerate(layer_linears(adapter)):
            for lin in linears:
                handles.append(lin.register_forward_hook(make(i, index)))
                index += 1
        yield
    finally:
        for h in handles:
            h.remove()


def out_slices(adapter: ArchAdapter, layer: nn.Module) -> dict[str, Slice]:
    """The out-projection slice of each gate site: its input columns are the heads' outputs / the channels."""
    return {"attn_out": next(s for s in adapter.attention_slices(layer) if s.dim == 1),
            "mlp_out": next(s for s in adapter.mlp_slices(layer) if s.dim == 1)}


@contextmanager
def gate_hooks(adapter: ArchAdapter, state: ProbeState) -> Iterator[None]:
    """Forward pre-hooks scaling each head's/channel's out-projection input columns by `state.gates[(layer, site)]`."""
    handles = []

    def make(key: tuple[int, str], width: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            gate = state.gates.get(key)
            if gate is None:
                return None
            x = args[0]
            g = gate if gate.shape[0] == 1 else gate[state.rows]
            g = g.repeat_interleave(width, dim=1).to(x.dtype)
            # rows lead, batch-major; OPT flattens [batch, seq, in] to [batch * seq, in] before its MLP
            scaled = x.reshape(g.shape[0], -1, x.shape[-1]) * g[:, None, :]
            return (scaled.reshape(x.shape), *args[1:])

        return hook

    try:
        for i, layer in enumerate(adapter.layers()):
            for site, s in out_slices(adapter, layer).items():
                handles.append(s.linear.register_forward_pre_hook(make((i, site), s.width)))
        yield
    finally:
        for h in handles:
            h.remove()


# --- estimators -----------------------------------------------------------------------------------------------
def probe_rounds(n_layers: int, n_probes: int, perturb: str) -> list[tuple[int, frozenset[int]]]:
    """(probe index, perturbed layers) of every round: all layers at once, or each layer in turn."""
    if perturb == "all":
        return [(k, frozenset(range(n_layers))) for k in range(n_probes)]
    return [(k, frozenset({i})) for i in range(n_layers) for k in range(n_probes)]


def _two_sided(model: nn.Module, ids: torch.Tensor, state: ProbeState, eps: float) -> torch.Tensor:
    """Per-row directional derivatives [batch] of the current probe (hooks read `state`)."""
    state.sign = 1.0
    plus = sequence_losses(model, ids)
    state.sign = -1.0
    minus = sequence_losses(model, ids)
    state.sign = 0.0
    return spsa_coefficient(plus.double(), minus.double(), eps)


@dataclass(frozen=True)
class ProbeRound:
    """One two-sided probe: probe index k, the layers it perturbed, and its mean directional derivative."""

    probe: int
    layers: frozenset[int]
    coefficient: float


def spsa_weight_rounds(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, n_probes: int, eps: float, perturb: str,
    seed: int, batch_size: int, progress: Progress,
) -> list[ProbeRound]:
    """Run the paper's probes: per round, L(w + eps z) and L(w - eps z) over all calibration rows (hooks, weights
    untouched). Only one coefficient per round is kept; `spsa_weight_gradient` rebuilds G_hat from the seeds."""
    rounds, parts, device = probe_rounds(len(adapter.layers()), n_probes, perturb), batches(calibration, batch_size), \
        model_device(model)
    state, out = ProbeState(), []
    with weight_probes(adapter, state, eps, seed), torch.inference_mode():
        for r, (k, layers) in enumerate(rounds):
            state.probe, state.layers = k, layers
            coef = sum(float(_two_sided(model, ids.to(device), state, eps).sum()) for ids in parts)
            out.append(ProbeRound(k, layers, coef / calibration.shape[0]))
            progress(r + 1, len(rounds), "minillm probes")
    return out


def spsa_weight_gradient(
    rounds: list[ProbeRound], layer: int, index: int, weight: torch.Tensor, n_probes: int, seed: int,
) -> torch.Tensor:
    """G_hat of one perturbed weight (paper): mean over its probes of coefficient * z, z regenerated from its seed.

    `index`: the linear's position in `layer_linears` order (its probe seed). Memory: this weight's G_hat and one z;
    nothing per weight survives the probes, so scoring needs no model-sized gradient buffer.
    """
    acc = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for r in rounds:
        if layer in r.layers:
            acc.add_(normal(tuple(weight.shape), probe_seed(seed, r.probe, index), weight.device),
                     alpha=r.coefficient / n_probes)
    return acc


def _gate_shapes(adapter: ArchAdapter) -> dict[tuple[int, str], int]:
    return {(i, site): s.n_units for i, layer in enumerate(adapter.layers())
            for site, s in out_slices(adapter, layer).items()}


def spsa_gate_gradients(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, n_probes: int, eps: float, perturb: str,
    seed: int, batch_size: int, per_sequence: bool, progress: Progress,
) -> dict[tuple[int, str], torch.Tensor]:
    """Forward-only SPSA estimate of dL/dgate for one multiplicative gate per head and per channel, at gate = 1.

    per_sequence: every calibration row gets its own u (rows are independent in the batch, so one forward pair gives
    n_samples unbiased probes of the per-row gradients); otherwise one u per round as in plain SPSA.
    """
    shapes, n, device = _gate_shapes(adapter), calibration.shape[0], model_device(model)
    acc = {key: torch.zeros(units, dtype=torch.float64, device=device) for key, units in shapes.items()}
    rounds, state = probe_rounds(len(adapter.layers()), n_probes, perturb), ProbeState()
    with gate_hooks(adapter, state), torch.inference_mode():
        for r, (k, layers) in enumerate(rounds):
            keys = [key for key in shapes if key[0] in layers]
            u = {key: normal((n if per_sequence else 1, shapes[key]), probe_seed(seed, k, 2 * key[0] +
                             _GATE_SITES.index(key[1])), device) for key in keys}
            coef = torch.zeros(n, dtype=torch.float64, device=device)
            start = 0
            for ids in batches(calibration, batch_size):
                state.rows = slice(start, start + ids.shape[0])
                for sign in (1.0, -1.0):
                    state.gates = {key: 1.0 + sign * eps * v for key, v in u.items()}
                    loss = sequence_losses(model, ids.to(device)).double()
                    coef[state.rows] += sign * loss / (2 * eps)
                state.gates, start = {}, start + ids.shape[0]
            for key in keys:  # d(mean_s L_s)/dgate ~ (1/n) sum_s coef_s u_s
                acc[key] += (coef[:, None] * u[key].double()).sum(dim=0) / (n * n_probes)
            progress(r + 1, len(rounds), "minillm gate probes")
    return {key: v.float() for key, v in acc.items()}


def exact_gate_gradients(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, batch_size: int, progress: Progress,
) -> dict[tuple[int, str], torch.Tensor]:
    """dL/dgate by backprop to the gates only (no weight gradients), layers recomputed in backward. Not forward-only.

    Memory: inference weights, one decoder layer's activations plus each layer's input, and one float per gate.
    """
    device = model_device(model)
    state = ProbeState(gates={key: torch.ones(1, units, device=device, requires_grad=True)
                              for key, units in _gate_shapes(adapter).items()})
    with gradients_only_for(model, []), checkpointed_layers(adapter), gate_hooks(adapter, state):
        accumulate_gradients(model, calibration, batch_size, progress, "minillm exact gates")
    return {key: g.grad[0].detach().clone() for key, g in state.gates.items()}


def gate_group_scores(
    adapter: ArchAdapter, gate_grads: dict[tuple[int, str], torch.Tensor], prior: tuple[list, list] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """|dL/dgate| per head and channel, times the group's Wanda-sp score when `prior` is given (combine="fms").

    At gate = 1, dL/dgate_g = sum over the group's out-projection columns of W * G: the vector-wise Taylor score of
    that slice, i.e. the first-order loss change of removing the group. Multiplying by |W| x ||X|| mirrors the paper's
    |W * G * X| at group level.
    """
    heads, channels = [], []
    for i in range(len(adapter.layers())):
        h, c = gate_grads[(i, "attn_out")].abs().cpu(), gate_grads[(i, "mlp_out")].abs().cpu()
        if prior is not None:
            h, c = h * prior[0][i], c * prior[1][i]
        heads.append(h)
        channels.append(c)
    return heads, channels


def fms_per_weight(stats, grads: Callable[[int, Slice], torch.Tensor]):
    """Per-weight FMS for `group_scores`: |W * G * X| with G from `grads(layer, slice)`; biases are not scored."""

    def per_weight(i: int, family: str, s: Slice) -> tuple[torch.Tensor, None]:
        col = stats[(i, slice_site(family, s))].norm.to(s.linear.weight.device)
        return fms_weight_term(s.linear.weight.detach(), grads(i, s), col), None

    return per_weight


def _check_choice(value: Any, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise MiniLLMError(f"unknown minillm {what} {value!r}; allowed: {', '.join(allowed)}")


@SCORERS.register("minillm")
@dataclass
class MiniLLMScorer(Scorer):
    """Feature Map Sensitivity |W * G * X| summed per head/channel; `estimator` says where G comes from.

    spsa (paper, forward-only): two-sided SPSA in weight space, z regenerated from seeds; memory = inference + one
        coefficient per probe (G_hat is rebuilt one weight matrix at a time when scoring). Mostly noise at
        affordable probe counts (issue 3).
    gates (forward-only): SPSA on one multiplicative gate per head/channel, probes independent per calibration row;
        scores |dL/dgate| (x Wanda-sp with combine="fms"). Memory = inference + one float per gate.
    exact-layerwise (backprop, not forward-only): exact G computed one decoder layer at a time from cached layer
        inputs and reduced to group scores before the next layer (scoring/streaming.py); no model-sized gradients.
    exact-backprop (backprop, not forward-only): the same G from one full backward per batch (layers recomputed),
        holding a float32 gradient for every prunable weight; kept as the cross-check of exact-layerwise.
    exact-gates (backprop, not forward-only): exact dL/dgate, no weight gradients at all.
    """

    # Default decided by bench/bench_scoring.py on SmolLM2 (bench/results/scoring.md): exact-layerwise gives the
    # best FMS ranking (it is the reference the forward-only estimators are judged against) at 1.10x Wanda-sp's peak
    # scoring memory, while the paper's forward-only spsa ranks like a noisy Wanda-sp (perplexity at 20% 2.8x worse,
    # fidelity flat from 4 to 64 probes). Pick spsa or gates for a strictly forward-only run.
    estimator: str = "exact-layerwise"
    n_probes: int = 2
    eps: float = 1e-3
    perturb: str = "all"
    seed: int = 0
    combine: str = "fms"
    gate_probes: str = "sequence"
    batch_size: int = DEFAULT_BATCH_SIZE
    name = "minillm"
    needs = frozenset({Need.ACTIVATIONS, Need.BACKWARD})  # of the default estimator; per instance in __post_init__
    description = ("MINI-LLM Feature Map Sensitivity |W*G*X| per group; G exact one layer at a time (default) or "
                   "estimated from forward passes only (estimator=spsa, the paper's, or gates).")

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.estimator, ESTIMATORS, "estimator"), (self.perturb, PERTURB, "perturb"),
                                     (self.combine, COMBINE, "combine"),
                                     (self.gate_probes, GATE_PROBES, "gate_probes")):
            _check_choice(value, allowed, what)
        if isinstance(self.n_probes, bool) or not isinstance(self.n_probes, int) or self.n_probes < 1:
            raise MiniLLMError(f"n_probes must be an integer >= 1, got {self.n_probes!r}")
        if not self.eps > 0:
            raise MiniLLMError(f"eps must be > 0, got {self.eps!r}")
        probes = Need.FORWARD_PROBES if self.estimator in FORWARD_ONLY else Need.BACKWARD
        uses_stats = self.estimator in WEIGHT_GRADIENTS or self.combine == "fms"
        # per instance: what runs depends on the estimator
        self.needs = frozenset({probes, *([Need.ACTIVATIONS] if uses_stats else [])})

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in super().options().items() if k != "needs"}

    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        if calibration is None:
            raise MiniLLMError("the minillm scorer needs calibration data")
        with eval_mode(model):
            stats = None
            if self._needs_stats_pass():
                stats = collect_activations(model, adapter, calibration, batch_size=self.batch_size, progress=progress)
            heads, channels = self._scores(model, adapter, calibration, stats, progress)
        return GroupScores(self.name, heads, channels, self.options())

    def _needs_stats_pass(self) -> bool:
        """A separate activation pass: exact-layerwise records its statistics in its own forward pass."""
        gate_prior = self.estimator in ("gates", "exact-gates") and self.combine == "fms"
        return self.estimator in ("spsa", "exact-backprop") or gate_prior

    def _scores(self, model, adapter, calibration, stats, progress) -> tuple[list, list]:
        if self.estimator == "spsa":
            rounds = spsa_weight_rounds(model, adapter, calibration, self.n_probes, self.eps, self.perturb,
                                        self.seed, self.batch_size, progress)
            index = {id(lin): k for k, lin in enumerate(lin for ls in layer_linears(adapter) for lin in ls)}
            return group_scores(adapter, fms_per_weight(stats, lambda i, s: spsa_weight_gradient(
                rounds, i, index[id(s.linear)], s.linear.weight, self.n_probes, self.seed)))
        if self.estimator == "exact-layerwise":  # records its own activation statistics in its forward pass
            return stream_layer_scores(
                model, adapter, calibration, lambda i: [lin.weight for lin in linears_of_layer(adapter, i)],
                lambda i, st: layer_group_scores(adapter, i, fms_per_weight(st, lambda _i, s: slice_grads(s)[0])),
                batch_size=self.batch_size, progress=progress)
        if self.estimator == "exact-backprop":
            params = [lin.weight for lin in prunable_linears(adapter)]  # FMS scores weights only
            with gradients_only_for(model, params), checkpointed_layers(adapter):
                accumulate_gradients(model, calibration, self.batch_size, progress, "minillm exact backward")
                return group_scores(adapter, fms_per_weight(stats, lambda i, s: slice_grads(s)[0]))
        if self.estimator == "gates":
            gates = spsa_gate_gradients(model, adapter, calibration, self.n_probes, self.eps, self.perturb,
                                        self.seed, self.batch_size, self.gate_probes == "sequence", progress)
        else:
            gates = exact_gate_gradients(model, adapter, calibration, self.batch_size, progress)
        prior = group_scores(adapter, wanda_per_weight(stats)) if self.combine == "fms" else None
        return gate_group_scores(adapter, gates, prior)

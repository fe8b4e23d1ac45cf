"""The probe engine: SPSA from loss-only forward passes that perturb weights or per-group gates, by seed.

Perturbations live in hooks and are regenerated from seeds (weights stay bit-identical); the gates also take backprop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress
from minillm_core.scoring.engine.backprop import accumulate_gradients, checkpointed_layers, gradients_only_for
from minillm_core.scoring.engine.forward import batches, model_device, sequence_losses
from minillm_core.scoring.engine.hooks import attached, layer_linears

GATE_SITES = ("attn_out", "mlp_out")
GateGrads = dict[tuple[int, str], torch.Tensor]  # (layer, gate site) -> dL/dgate [units]: one per head or channel


# --- seeded SPSA math ----------------------------------------------------------------------------------------
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


@contextmanager
def weight_probes(adapter: ArchAdapter, state: ProbeState, eps: float, seed: int) -> Iterator[None]:
    """Forward hooks that turn each perturbed linear's output into x (W + sign*eps*z)^T + b.

    The weights are never written: the hook adds sign*eps*x z^T, with z regenerated per call from its seed, so only
    one linear's z is alive at a time and the weights stay bit-identical.
    """

    def make(layer: int, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if state.sign == 0.0 or layer not in state.layers:
                return None
            z = normal(tuple(module.weight.shape), probe_seed(seed, state.probe, index), module.weight.device)
            return out + (state.sign * eps) * F.linear(args[0], z.to(args[0].dtype))

        return hook

    with attached() as handles:
        index = 0
        for i, linears in enumerate(layer_linears(adapter)):
            for lin in linears:
                handles.append(lin.register_forward_hook(make(i, index)))
                index += 1
        yield


def out_slices(adapter: ArchAdapter, layer: nn.Module) -> dict[str, Slice]:
    """The out-projection slice of each gate site: its input columns are the heads' outputs / the channels."""
    return {"attn_out": next(s for s in adapter.attention_slices(layer) if s.dim == 1),
            "mlp_out": next(s for s in adapter.mlp_slices(layer) if s.dim == 1)}


@contextmanager
def gate_hooks(adapter: ArchAdapter, state: ProbeState) -> Iterator[None]:
    """Forward pre-hooks scaling each head's/channel's out-projection input columns by `state.gates[(layer, site)]`."""

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

    with attached() as handles:
        for i, layer in enumerate(adapter.layers()):
            for site, s in out_slices(adapter, layer).items():
                handles.append(s.linear.register_forward_pre_hook(make((i, site), s.width)))
        yield


# --- probe rounds -------------------------------------------------------------------------------------------
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
) -> GateGrads:
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
                             GATE_SITES.index(key[1])), device) for key in keys}
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
) -> GateGrads:
    """dL/dgate by backprop to the gates only (no weight gradients), layers recomputed in backward. Not forward-only.

    Memory: inference weights, one decoder layer's activations plus each layer's input, and one float per gate.
    """
    device = model_device(model)
    state = ProbeState(gates={key: torch.ones(1, units, device=device, requires_grad=True)
                              for key, units in _gate_shapes(adapter).items()})
    with gradients_only_for(model, []), checkpointed_layers(adapter), gate_hooks(adapter, state):
        accumulate_gradients(model, calibration, batch_size, progress, "minillm exact gates")
    return {key: g.grad[0].detach().clone() for key, g in state.gates.items()}

"""Layer-wise reconstruction after pruning: re-fit the kept columns of each output projection by least squares.

After heads/channels are removed, the attention output projection and the MLP output projection of every pruned
layer are re-fitted so that, on the pruned model's own inputs, they reproduce the original layer's projection output
(`target="local"`, SlimGPT/FLAP-style) or the dense model's activations (`target="dense"`, OSSCAR's variant, which
also corrects the error accumulated in earlier layers). Forward passes only, one layer at a time.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.groups import channels_to_keep, heads_to_keep
from minillm_core.modeling import get_adapter
from minillm_core.modeling.base import ArchAdapter, LayerPlanIndices, LayerShape
from minillm_core.options import option
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.engine.forward import eval_mode
from minillm_core.scoring.obs import layer_scores as obs_layer_scores
from minillm_core.sequential import LayerInput, capture_input, first_layer_inputs, replace_inputs
from minillm_core.surgery import prune_layer, unit_index

logger = logging.getLogger(__name__)

TARGETS = ("local", "dense", "residual")
SELECTIONS = ("plan", "obs")


@dataclass(frozen=True)
class ReconstructConfig:
    """Whether and how to re-fit the kept weights after pruning (needs calibration data, forward passes only)."""

    enabled: bool = option(True, "Re-fit each pruned layer's output projections by least squares to reproduce the "
                           "original layer's output (forward passes only).", cli="reconstruct/--no-reconstruct",
                           label="reconstruct the kept weights")
    damping: float = option(0.01, "Ridge damping of the re-fit, as a fraction of the mean diagonal of the input "
                            "Gram matrix.", min=0.0, max=10.0, cli="recon-damping", label="re-fit damping")
    target: str = option("local", "local: the original layer's output on the pruned model's inputs; dense: the dense "
                         "model's own activations (OSSCAR; also corrects earlier layers' error); residual: dense, and "
                         "the output projections also pull the residual stream back to the dense model's (error "
                         "feedback; pre-norm layers). dense and residual re-fit unpruned layers too.", choices=TARGETS,
                         cli="recon-target", label="re-fit target")
    select: str = option("obs", "obs: re-choose each layer's heads/channels (same widths) by OBS on the pruned "
                         "model's own inputs as the layers go (SlimGPT; the best measured, bench/results/quality.md); "
                         "plan: keep the units the plan's scores chose.",
                         choices=SELECTIONS, cli="recon-select", label="units kept")
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise MiniLLMError(f"unknown reconstruction target {self.target!r}; allowed: {', '.join(TARGETS)}")
        if self.select not in SELECTIONS:
            raise MiniLLMError(f"unknown unit selection {self.select!r}; allowed: {', '.join(SELECTIONS)}")
        if not isinstance(self.damping, (int, float)) or self.damping < 0:
            raise MiniLLMError(f"reconstruction damping must be >= 0, got {self.damping!r}")


# --- the math -------------------------------------------------------------------------------------------------------


@dataclass
class Gram:
    """Running second moments over rows: `cross = T^T S` (target-side x source-side) and `gram = S^T S`.

    T: [rows, n] inputs of the original projection (all columns); S: [rows, k] inputs of the pruned one (kept
    columns). With a bias both get a trailing column of ones. Accumulated in float64.
    """

    cross: torch.Tensor
    gram: torch.Tensor
    rows: int = 0
    shift: torch.Tensor | None = None  # R^T S [out, k]: an extra target R [rows, out] added to T W^T (residual drift)

    @classmethod
    def empty(cls, n: int, k: int, device: torch.device) -> Gram:
        return cls(torch.zeros(n, k, dtype=torch.float64, device=device),
                   torch.zeros(k, k, dtype=torch.float64, device=device))

    def add(self, target: torch.Tensor, source: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        t, s = target.to(torch.float64), source.to(torch.float64)
        self.cross += t.T @ s
        self.gram += s.T @ s
        self.rows += t.shape[0]
        if extra is not None:
            shift = extra.to(torch.float64).T @ s
            self.shift = shift if self.shift is None else self.shift + shift

    def rhs(self, weight: torch.Tensor) -> torch.Tensor:
        """`W C (+ R^T S)` [out, k]: the cross term of the target with the kept inputs."""
        out = weight.to(torch.float64) @ self.cross
        return out if self.shift is None else out + self.shift


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """[rows, n] -> [rows, n + 1] with a column of ones (the bias input)."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def refit(weight: torch.Tensor, stats: Gram, damping: float) -> torch.Tensor:
    """The kept-column weights W' [out, k] minimising ||S W'^T - T W^T||^2 + lam ||W'||^2 over the recorded rows.

    `weight`: [out, n] original weights (bias appended as a column when the stats carry ones). Closed form
    `W' = W C (G + lam I)^-1` with C = T^T S, G = S^T S and lam = damping x mean(diag G) (SlimGPT, FLAP).
    """
    g = stats.gram
    lam = damping * g.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    rhs = stats.rhs(weight).T  # [k, out]
    for _ in range(6):  # a singular Gram matrix (dead channels) gets more damping, never a crash
        chol, info = torch.linalg.cholesky_ex(g + lam * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol).T
        lam = lam * 10 if lam > 0 else g.diagonal().mean().clamp_min(1e-12) * 1e-6
    raise MiniLLMError("reconstruction failed: the calibration inputs' Gram matrix is not positive definite")


def objective(candidate: torch.Tensor, weight: torch.Tensor, stats: Gram) -> float:
    """||S W''^T - T W^T||^2 up to the constant ||T W^T||^2: -2 tr(W'' C^T W^T) + tr(W'' G W''^T)."""
    c = candidate.to(torch.float64)
    return float(-2 * torch.sum(stats.rhs(weight) * c) + torch.sum((c @ stats.gram) * c))


def best_fit(weight: torch.Tensor, kept_weight: torch.Tensor, stats: Gram, damping: float) -> tuple[torch.Tensor, bool]:
    """The re-fit, unless simply keeping the columns reproduces the target better (then those: never worse)."""
    fitted = refit(weight, stats, damping)
    if objective(fitted, weight, stats) <= objective(kept_weight, weight, stats):
        return fitted, True
    return kept_weight.to(torch.float64), False


# --- the driver -----------------------------------------------------------------------------------------------------


@dataclass
class ReconstructReport:
    """Per re-fitted projection: layer, which ("attention"/"mlp"), relative error before and after the re-fit."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"projections": self.rows}


def _rel_error(candidate: torch.Tensor, weight: torch.Tensor, stats: Gram, energy: float) -> float:
    return max(0.0, (energy + objective(candidate, weight, stats)) / max(energy, 1e-30)) ** 0.5


def _fit_projection(dense: nn.Linear, pruned: nn.Linear, kept: torch.Tensor, stats: Gram, energy: float,
                    damping: float) -> dict[str, float]:
    """Re-fit `pruned` (the kept columns `kept` of `dense`) in place from `stats`; returns the errors."""
    weight = dense.weight.detach()
    kept_w = weight.index_select(1, kept)
    if dense.bias is not None:  # bias as one more input column of ones
        weight = torch.cat([weight, dense.bias.detach()[:, None]], dim=1)
        kept_w = torch.cat([kept_w, dense.bias.detach()[:, None]], dim=1)
    fitted, used = best_fit(weight, kept_w, stats, damping)
    before = _rel_error(kept_w, weight, stats, energy)
    after = _rel_error(fitted, weight, stats, energy)
    with torch.no_grad():
        n = pruned.weight.shape[1]
        pruned.weight.copy_(fitted[:, :n].to(pruned.weight.dtype))
        if pruned.bias is not None:
            pruned.bias.copy_(fitted[:, n].to(pruned.bias.dtype))
    return {"error_before": before, "error_after": after, "refit": used}


class _Layer:
    """One layer's dense original, pruned version and kept indices (the adapter's accessors work on either)."""

    def __init__(self, adapter: ArchAdapter, dense: nn.Module, pruned: nn.Module, kept: LayerPlanIndices) -> None:
        self.dense, self.pruned, self.kept = dense, pruned, kept
        self.d_adapter = self.p_adapter = adapter

    def head_columns(self, device: torch.device) -> torch.Tensor:
        return unit_index(self.kept.heads, self.d_adapter.head_dim, device)

    def channel_columns(self, device: torch.device) -> torch.Tensor:
        return unit_index(self.kept.channels, 1, device)


class _Fit:
    """The re-fit statistics of one projection, accumulated batch by batch (no batch's activations are kept): the
    Gram terms of its kept columns and the target's energy ||T W^T + b (+ R)||^2 (for relative errors)."""

    def __init__(self, proj: nn.Linear, kept: torch.Tensor) -> None:
        self.proj, self.kept, self.bias = proj, kept, proj.bias is not None
        self.stats = Gram.empty(proj.weight.shape[1] + self.bias, kept.numel() + self.bias, proj.weight.device)
        self.energy = 0.0

    def add(self, target: torch.Tensor, source: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        s = source.index_select(1, self.kept)
        self.stats.add(with_ones(target) if self.bias else target, with_ones(s) if self.bias else s, extra)
        out = self.proj(target).double()
        self.energy += float((out if extra is None else out + extra).pow(2).sum())


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _attention(layer: _Layer, xs: list[LayerInput], xd: list[LayerInput] | None, damping: float,
               residual: bool = False) -> dict[str, Any]:
    """Re-fit the attention output projection: kept heads' outputs are the original layer's, on the same input.
    `residual`: the target also carries the residual stream's drift, x_dense - x_pruned."""
    o_dense = layer.d_adapter.attention_out_proj(layer.dense)
    fit = _Fit(o_dense, layer.head_columns(o_dense.weight.device))
    for b, x in enumerate(xs):
        with capture_input(o_dense) as cap:
            x.run(layer.dense)
            source = target = cap.take()
            if xd is not None:
                xd[b].run(layer.dense)
                target = cap.take()
        fit.add(target, source, _rows(xd[b].hidden - x.hidden) if residual and xd else None)
    o_pruned = layer.p_adapter.attention_out_proj(layer.pruned)
    return _fit_projection(o_dense, o_pruned, fit.kept, fit.stats, fit.energy, damping)


@torch.no_grad()
def _mlp(layer: _Layer, xs: list[LayerInput], xd: list[LayerInput] | None, damping: float,
         residual: bool = False) -> dict[str, Any]:
    """Re-fit the MLP output projection on the pruned layer's own MLP input (after its re-fitted attention).
    `residual`: the target also carries the drift of the residual stream between attention and MLP (the layer's
    output minus its MLP output, dense minus pruned), so the layer's output becomes the dense one."""
    down_dense = layer.d_adapter.mlp_out_proj(layer.dense)
    down_pruned = layer.p_adapter.mlp_out_proj(layer.pruned)
    first_in = layer.p_adapter.mlp_in_projs(layer.pruned)[0]
    fit = _Fit(down_dense, layer.channel_columns(down_dense.weight.device))
    for b, x in enumerate(xs):
        with capture_input(first_in) as mlp_in, capture_input(down_pruned) as zp:
            out_p = x.run(layer.pruned)
        u = mlp_in.values[0]
        # The original MLP on the pruned layer's MLP input: every channel, so removed ones count in the target.
        with replace_inputs(layer.d_adapter.mlp_in_projs(layer.dense), lambda u=u: u), \
                capture_input(down_dense) as z:
            x.run(layer.dense)
        source = target = z.take()
        extra = None
        if xd is not None:
            with capture_input(down_dense) as zd:
                out_d = xd[b].run(layer.dense)
            target = zd.take()
            if residual:  # mid-stream drift: (out_d - down(z_d)) - (out_p - down_p(z_p))
                mid_d = _rows(out_d) - down_dense(target)
                extra = mid_d - (_rows(out_p) - down_pruned(zp.take()))
        fit.add(target, source, extra)
    return _fit_projection(down_dense, down_pruned, fit.kept, fit.stats, fit.energy, damping)


def refit_layer(adapter: ArchAdapter, shape: LayerShape, dense: nn.Module, pruned: nn.Module, kept: LayerPlanIndices,
                xs: list[LayerInput], xd: list[LayerInput] | None, damping: float, residual: bool = False
                ) -> list[dict[str, Any]]:
    """Re-fit, in place, the output projections of `pruned` (layer `dense` of original widths `shape`, cut to
    `kept`) on its inputs `xs` (targets from `xd` when given); one row of errors per re-fitted projection.

    With dense targets an unpruned projection is re-fitted too (all its columns): its input has drifted with the
    error of the layers before it, and the dense activations say what it should produce (OSSCAR's correction).
    `dense` must then be a copy, not `pruned` itself.
    """
    layer = _Layer(adapter, dense, pruned, kept)
    rows = []
    if len(kept.heads) < shape.num_heads or (xd is not None and kept.heads):
        rows.append({"projection": "attention", **_attention(layer, xs, xd, damping, residual)})
    if len(kept.channels) < shape.intermediate or (xd is not None and kept.channels):
        rows.append({"projection": "mlp", **_mlp(layer, xs, xd, damping, residual)})
    return rows


#: `pair(i, inputs)` -> (layer i's original shape, its dense module, its pruned module, its kept units), called in
#: layer order with the layer's inputs.
LayerPair = Callable[[int, list[LayerInput]], tuple[LayerShape, nn.Module, nn.Module, LayerPlanIndices]]


def _refit_layers(adapter: ArchAdapter, pair: LayerPair, kept: list[LayerPlanIndices], xs: list[LayerInput],
                  xd: list[LayerInput] | None, config: ReconstructConfig, progress: Progress,
                  done: Callable[[int], None] | None = None) -> ReconstructReport:
    """Walk the layers in order: re-fit each pruned layer on its inputs, then advance the inputs through it
    (`done(i)` is told when layer i is finished: an out-of-core pass writes it out and frees it)."""
    report = ReconstructReport()
    for i in range(len(kept)):
        shape, dense, pruned, k = pair(i, xs)
        report.rows += [{"layer": i, **row} for row in refit_layer(adapter, shape, dense, pruned, k, xs, xd,
                                                                  config.damping, config.target == "residual")]
        with torch.no_grad():
            xs = [x.advanced(pruned) for x in xs]
            xd = [x.advanced(dense) for x in xd] if xd is not None else None
        del dense
        if done is not None:
            done(i)
        progress(i + 1, len(kept), "reconstruct")
    return report


#: Re-fit the units the plan kept (what `reconstruct` does: an already pruned model cannot re-choose them).
REFIT_PLAN_UNITS = ReconstructConfig(select="plan")


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    kept: list[LayerPlanIndices],
    calibration: torch.Tensor,
    config: ReconstructConfig = REFIT_PLAN_UNITS,
    progress: Progress = no_progress,
) -> ReconstructReport:
    """Re-fit, in place, the output projections of every pruned layer of `pruned` (a pruned copy of `original`).

    `kept[i]`: the kept indices of layer i in the original's numbering (`PruningPlan.layers`); `calibration`:
    [n, seq] token ids. `original` is only read. Returns the per-projection relative errors before/after.
    Units are the plan's (`config.select` must be "plan"); `prune_and_reconstruct` can re-choose them.
    """
    if config.select != "plan":
        raise MiniLLMError("re-fitting an already pruned model keeps the plan's units; to re-choose them by OBS "
                           "prune with prune_and_reconstruct (select='obs')")
    da, pa = get_adapter(original), get_adapter(pruned)
    with eval_mode(original), eval_mode(pruned):
        xs = first_layer_inputs(pruned, pa, calibration, config.batch_size)
        xd = first_layer_inputs(original, da, calibration, config.batch_size) if config.target != "local" else None
        return _refit_layers(da, lambda i, _x: (da.layer_shape(i), da.layers()[i], pa.layers()[i], kept[i]), kept,
                             xs, xd, config, progress)


def reselect(adapter: ArchAdapter, layer: nn.Module, xs: list[LayerInput], shape: LayerShape,
             kept: LayerPlanIndices, damping: float) -> LayerPlanIndices:
    """The same widths as `kept`, with the heads and channels chosen by OBS on this layer's inputs `xs`."""
    if len(kept.heads) == shape.num_heads and len(kept.channels) == shape.intermediate:
        return kept
    heads, channels, _ = obs_layer_scores(adapter, layer, xs, damping)
    if len(kept.kv_heads) < shape.num_kv_heads:
        kept_heads, kv = heads_to_keep(heads, shape, shape.num_kv_heads - len(kept.kv_heads), "kv-groups")
    else:
        kept_heads, kv = heads_to_keep(heads, shape, (shape.num_heads - len(kept.heads)) // shape.num_kv_heads,
                                       "q-heads")
    return LayerPlanIndices(tuple(kept_heads), tuple(kv), channels_to_keep(channels, len(kept.channels)))


def prune_and_reconstruct(
    model: nn.Module,
    kept: list[LayerPlanIndices],
    calibration: torch.Tensor,
    config: ReconstructConfig = ReconstructConfig(),  # frozen: safe as a default
    progress: Progress = no_progress,
    load: Callable[[int], None] | None = None,
    done: Callable[[int], None] | None = None,
) -> tuple[list[LayerPlanIndices], bool, ReconstructReport]:
    """Prune `model` in place one layer at a time and re-fit each layer as it goes: only the layer being processed
    exists twice (its dense copy is dropped after its re-fit), so the peak stays near one model's weights.

    With `config.select == "obs"` each layer's units are re-chosen on its actual (pruned-so-far) inputs, widths
    unchanged. Returns the kept units per layer (the plan's, or the re-chosen ones), whether plain
    `from_pretrained` can rebuild the result, and the report (same as `reconstruct`'s). `load(i)` is called before
    layer i is first used and `done(i)` after it is finished (the out-of-core pass of `streamed`: the layers are
    read from the checkpoint, written out and freed one at a time).
    """
    adapter = get_adapter(model)
    shapes: list[LayerShape] = []
    chosen = list(kept)

    def pair(i: int, xs: list[LayerInput]) -> tuple[LayerShape, nn.Module, nn.Module, LayerPlanIndices]:
        if load is not None and i > 0:  # layer 0 was loaded before its inputs were caught
            load(i)
        shape, layer = adapter.layer_shape(i), adapter.layers()[i]
        if config.select == "obs":
            chosen[i] = reselect(adapter, layer, xs, shape, kept[i], config.damping)
        full = len(chosen[i].heads) == shape.num_heads and len(chosen[i].channels) == shape.intermediate
        dense = layer if full and config.target == "local" else copy.deepcopy(layer)  # dense targets re-fit all
        shapes.append(prune_layer(adapter, i, chosen[i]))
        return shape, dense, adapter.layers()[i], chosen[i]

    with eval_mode(model):
        if load is not None:
            load(0)
        xs = first_layer_inputs(model, adapter, calibration, config.batch_size)
        xd = [LayerInput(x.hidden.clone(), x.args, x.kwargs, x.adapter) for x in xs] \
            if config.target != "local" else None
        report = _refit_layers(adapter, pair, kept, xs, xd, config, progress, done)
    return chosen, adapter.sync_config(shapes), report

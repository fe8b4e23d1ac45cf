"""OBS: structured Optimal Brain Surgeon selection from the inverse input Gram matrix (SlimGPT, ZipLM).

For an output projection W [out, n] with input Gram matrix H = X^T X (X: the calibration inputs of that projection),
removing the column block R and optimally re-fitting the others costs `tr(W_R (Hinv_RR)^-1 W_R^T)` of squared
output error (Hinv = (H + lam I)^-1). The selection is greedy: remove the cheapest unit (a head's `head_dim` columns of
the attention output projection, or one column of the MLP output projection), update W and Hinv as if the kept
columns were re-fitted, repeat. A unit's score is the accumulated relative output error at the step it goes, so the
lowest-k scores of a layer are exactly the first k removed, and layers compare (the error is relative to the layer's
own output energy). Forward passes only, one decoder layer at a time (`sequential`): only one layer's Gram matrices
are alive. Reconstruction (`reconstruction.py`) is its natural partner: it performs the re-fit the cost assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.base import SCORERS, Engine, GroupScores, Need, Scorer
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE, eval_mode
from minillm_core.sequential import LayerInput, capture_input, first_layer_inputs


def damped_inverse(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """(H + lam I)^-1 in float64 with lam = damping x mean(diag H); more damping if H is singular, never a crash."""
    g = gram.to(torch.float64)
    mean = g.diagonal().mean().clamp_min(1e-12)
    lam = damping * mean
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(g + lam * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(chol)
        lam = lam * 10 if lam > 0 else mean * 1e-6
    raise MiniLLMError("OBS selection failed: the calibration inputs' Gram matrix is not positive definite")


def _unit_costs(w: torch.Tensor, hinv: torch.Tensor, unit: int) -> torch.Tensor:
    """Cost of removing each unit alone: tr(W_u (Hinv_uu)^-1 W_u^T) for the `unit`-wide column blocks."""
    if unit == 1:
        return w.pow(2).sum(0) / hinv.diagonal()
    n = w.shape[1] // unit
    blocks = hinv.reshape(n, unit, n, unit).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [n, unit, unit]
    wb = w.reshape(w.shape[0], n, unit).permute(1, 0, 2)  # [n, out, unit]
    solved = torch.linalg.solve(blocks, wb.transpose(1, 2))  # [n, unit, out] = Hinv_uu^-1 W_u^T
    return (wb.transpose(1, 2) * solved).sum(dim=(1, 2))


def obs_scores(weight: torch.Tensor, gram: torch.Tensor, unit: int = 1, damping: float = 0.01,
               step: float = 0.02) -> torch.Tensor:
    """Greedy OBS removal order of the `unit`-wide column blocks of `weight` [out, n], as scores (higher = kept
    longer): the accumulated relative output error after each unit's removal, nondecreasing in removal order.

    Each step removes the ceil(step x alive) cheapest units together (1 at a time for small layers); the last unit
    is never removed and scores one above the others.
    """
    n_cols = weight.shape[1]
    if n_cols % unit or gram.shape != (n_cols, n_cols):
        raise MiniLLMError(f"OBS: weight {tuple(weight.shape)} and Gram {tuple(gram.shape)} do not match unit {unit}")
    w = weight.to(torch.float64)
    h = gram.to(torch.float64)
    energy = max(float(torch.sum((w @ h) * w)), 1e-30)  # ||X W^T||^2
    hinv = damped_inverse(h, damping)
    alive = torch.arange(n_cols // unit)
    scores = torch.empty(n_cols // unit, dtype=torch.float64)
    total = 0.0
    while alive.numel() > 1:
        costs = _unit_costs(w, hinv, unit)
        take = max(1, math.ceil(step * alive.numel())) if unit == 1 else 1
        take = min(take, alive.numel() - 1)
        order = torch.argsort(costs, stable=True)
        gone, stay = order[:take], torch.sort(order[take:]).values
        cols = (gone[:, None] * unit + torch.arange(unit)).reshape(-1)
        kept = (stay[:, None] * unit + torch.arange(unit)).reshape(-1)
        block = hinv[cols][:, cols]
        solve = torch.linalg.solve(block, hinv[cols][:, kept])  # Hinv_RR^-1 Hinv_RK
        joint = float(torch.sum(w[:, cols] * torch.linalg.solve(block, w[:, cols].T).T))
        # Within the batch, units rank by their own cost; the batch as a whole adds its joint cost.
        scores[alive[gone]] = total + torch.cumsum(costs[gone], 0) / energy
        total = max(total + joint / energy, float(scores[alive[gone]].max()))
        w = w[:, kept] - w[:, cols] @ solve
        hinv = hinv[kept][:, kept] - hinv[kept][:, cols] @ solve
        alive = alive[stay]
    scores[alive] = total + 1.0
    return scores


@SCORERS.register("obs")
@dataclass
class ObsScorer(Scorer):
    """Heads by the OBS cost of their attention-output-projection columns; channels by that of their MLP
    output-projection column; the inputs' Gram matrices from the dense model, one decoder layer at a time."""

    damping: float = 0.01
    step: float = 0.02
    batch_size: int = DEFAULT_BATCH_SIZE
    name = "obs"
    needs = frozenset({Need.ACTIVATIONS})
    engine = Engine.SEQUENTIAL
    description = ("Structured Optimal Brain Surgeon: greedy removal by the output error left after an optimal "
                   "re-fit, from the inverse input Gram matrix (SlimGPT, Ling et al. 2024; ZipLM). Pair with "
                   "reconstruction.")

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise MiniLLMError(f"obs step must be in (0, 1], got {self.step!r}")
        if self.damping < 0:
            raise MiniLLMError(f"obs damping must be >= 0, got {self.damping!r}")

    @torch.no_grad()
    def score(
        self, model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        if calibration is None:
            raise MiniLLMError("the obs scorer needs calibration data")
        heads, channels = [], []
        layers = adapter.layers()
        with eval_mode(model):
            xs = first_layer_inputs(model, adapter, calibration, self.batch_size)
            for i, layer in enumerate(layers):
                h, c, xs = layer_scores(adapter, layer, xs, self.damping, self.step)
                heads.append(h)
                channels.append(c)
                progress(i + 1, len(layers), "obs")
        return GroupScores(self.name, heads, channels, self.options())


@torch.no_grad()
def layer_scores(adapter: ArchAdapter, layer: nn.Module, xs: list[LayerInput], damping: float = 0.01,
                 step: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, list[LayerInput]]:
    """OBS scores of one layer's heads and channels on its inputs `xs`, and the layer's outputs (next inputs)."""
    attn_out, mlp_out = adapter.attention_out_proj(layer), adapter.mlp_out_proj(layer)
    h_attn = torch.zeros(attn_out.in_features, attn_out.in_features, dtype=torch.float64)
    h_mlp = torch.zeros(mlp_out.in_features, mlp_out.in_features, dtype=torch.float64)
    nxt = []
    for x in xs:
        with capture_input(attn_out) as a, capture_input(mlp_out) as m:
            out = x.run(layer)
        xa, xm = a.take().double().cpu(), m.take().double().cpu()
        h_attn += xa.T @ xa
        h_mlp += xm.T @ xm
        nxt.append(LayerInput(out, x.args, x.kwargs, x.adapter))
    heads = obs_scores(attn_out.weight.detach().cpu(), h_attn, adapter.head_dim, damping).float()
    channels = obs_scores(mlp_out.weight.detach().cpu(), h_mlp, 1, damping, step).float()
    return heads, channels, nxt

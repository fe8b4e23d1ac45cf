"""Back-of-the-envelope time and memory of a scorer, shown before a run: a model of what each engine keeps alive.

Memory beyond the loaded weights, per engine (b = bytes per element of the model's dtype):
- activation passes (wanda-sp, flap): one mini-batch of activations; no logits are computed;
- forward probes (minillm spsa / gates): the same plus a chunk of logits and one weight-sized z / G_hat at a time;
- full backprop (taylor, minillm exact-backprop): a float32 gradient per prunable weight plus the mini-batch's stored
  activations (every layer's, or only layer inputs when layers are recomputed);
- layer streaming (minillm exact-layerwise, taylor stream=True): every calibration row's input to ~2 sqrt(layers)
  layers, one output gradient per row, and one layer's activations and gradients;
- layer by layer (obs): every row's input to the current layer and that layer's float64 Gram matrices.
Measured figures for SmolLM2 are in bench/results/scoring.md; this is an estimate, not a promise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minillm_core.scoring.base import Engine, Need, Scorer, Workload
from minillm_core.scoring.engine.forward import LOSS_CHUNK_TOKENS

if TYPE_CHECKING:  # planning imports scoring.base
    from minillm_core.planning import ModelGeometry

# Rough sustained forward-pass throughput in FLOP/s (one CPU core of the benchmark box did ~7e10; a datacenter GPU).
FLOPS = {"cpu": 5e10, "cuda": 2e12}
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Forward-pass equivalents over the calibration tokens (a backward costs about two forwards).
_PASSES = {Engine.WEIGHTS: 0.0, Engine.FORWARD: 1.0, Engine.BACKPROP: 3.0, Engine.LAYERWISE: 4.0,
           Engine.SEQUENTIAL: 1.0}


@dataclass(frozen=True)
class ScoringCost:
    seconds: float
    extra_mb: float  # beyond the loaded weights
    passes: float  # forward-pass equivalents over the calibration tokens
    forward_only: bool
    engine: Engine  # the scorer's declared engine (a str: "weights", "activations", "forward probes", ...)


def _passes(work: Workload, n_layers: int) -> float:
    if work.engine is Engine.PROBES:
        return 1.0 + 2.0 * work.probe_rounds(n_layers)  # one statistics pass, two forwards per round
    return _PASSES[work.engine]


def _extra_bytes(work: Workload, geometry: ModelGeometry, n_samples: int, seq_len: int) -> float:
    """Peak bytes beyond the weights that `work`'s engine keeps alive (see the module docstring)."""
    b = _BYTES.get(geometry.dtype, 4)
    layers = geometry.layers
    n_layers, hidden = len(layers), geometry.hidden_size
    inter = max(s.intermediate for s in layers)
    prunable = geometry.total_params - geometry.embedding_params
    batch = min(n_samples, int(work.batch_size))
    vocab = geometry.embedding_params // max(hidden, 1)
    act = batch * seq_len * (4 * hidden + 3 * inter) * b  # one layer's live activations for one mini-batch
    logits = min(LOSS_CHUNK_TOKENS, batch * seq_len) * vocab * 4 * 3  # logits, softmax, gradient
    stored = batch * seq_len * hidden * n_layers * b + act * 3 if work.recompute_layers else act * n_layers
    gradients = prunable * 4 if work.weight_gradients else 0
    return {
        Engine.WEIGHTS: 0,
        Engine.FORWARD: act,
        Engine.PROBES: act + logits + 2 * max(hidden * inter, hidden * hidden) * 4,
        Engine.BACKPROP: gradients + stored + logits,
        Engine.LAYERWISE: (n_samples * (2 * math.isqrt(n_layers) + 1) + batch) * seq_len * hidden * b
        + prunable / n_layers * 4 + act * 3 + logits,
        # every row's input to the current layer, plus that layer's Gram matrices, inverses and updates in float64
        Engine.SEQUENTIAL: 2 * n_samples * seq_len * hidden * b + act + 3 * 8 * (inter**2 + hidden**2),
    }[work.engine]


def estimate_cost(
    scorer: Scorer, geometry: ModelGeometry, n_samples: int, seq_len: int, device: str = "cpu",
) -> ScoringCost:
    """Estimated wall time and peak memory beyond the weights of `scorer` on a model of `geometry`."""
    work = scorer.workload()
    extra = _extra_bytes(work, geometry, n_samples, seq_len)
    passes = _passes(work, len(geometry.layers))
    flops = FLOPS["cuda" if device.startswith("cuda") else "cpu"]
    seconds = 0.5 + passes * 2 * geometry.total_params * n_samples * seq_len / flops
    forward_only = Need.BACKWARD not in scorer.needs
    return ScoringCost(seconds, extra / 2**20, passes, forward_only, work.engine)

"""Back-of-the-envelope time and memory of a scorer, shown before a run: a model of what each engine keeps alive.

Memory beyond the loaded weights, per engine (b = bytes per element of the model's dtype):
- activation passes (wanda-sp, flap): one mini-batch of activations; no logits are computed;
- forward probes (minillm spsa / gates): the same plus a chunk of logits and one weight-sized z / G_hat at a time;
- full backprop (taylor, minillm exact-backprop): a float32 gradient per prunable weight plus the mini-batch's stored
  activations (every layer's, or only layer inputs when layers are recomputed);
- layer streaming (minillm exact-layerwise, taylor stream=True): every calibration row's input to ~2 sqrt(layers)
  layers, one output gradient per row, and one layer's activations and gradients.
Measured figures for SmolLM2 are in bench/results/scoring.md; this is an estimate, not a promise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minillm_core.scoring.base import Need, Scorer
from minillm_core.scoring.engine.forward import LOSS_CHUNK_TOKENS

if TYPE_CHECKING:  # planning imports scoring.base
    from minillm_core.planning import ModelGeometry

# Rough sustained forward-pass throughput in FLOP/s (one CPU core of the benchmark box did ~7e10; a datacenter GPU).
FLOPS = {"cpu": 5e10, "cuda": 2e12}
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ScoringCost:
    seconds: float
    extra_mb: float  # beyond the loaded weights
    passes: float  # forward-pass equivalents over the calibration tokens
    forward_only: bool
    engine: str  # "weights", "activations", "forward probes", "full backprop", "layer streaming"


def engine_of(scorer: Scorer) -> str:
    options = scorer.options()
    if Need.BACKWARD in scorer.needs:
        streamed = options.get("stream") or options.get("estimator") == "exact-layerwise"
        return "layer streaming" if streamed else "full backprop"
    if Need.FORWARD_PROBES in scorer.needs:
        return "forward probes"
    return "activations" if scorer.needs_calibration else "weights"


def _passes(scorer: Scorer, engine: str, n_layers: int) -> float:
    options = scorer.options()
    if engine == "weights":
        return 0.0
    if engine == "forward probes":
        rounds = options.get("n_probes", 1) * (n_layers if options.get("perturb") == "layer" else 1)
        return 1.0 + 2.0 * rounds
    return {"activations": 1.0, "full backprop": 3.0, "layer streaming": 4.0}[engine]


def estimate_cost(
    scorer: Scorer, geometry: ModelGeometry, n_samples: int, seq_len: int, device: str = "cpu",
) -> ScoringCost:
    """Estimated wall time and peak memory beyond the weights of `scorer` on a model of `geometry`."""
    engine = engine_of(scorer)
    b = _BYTES.get(geometry.dtype, 4)
    layers = geometry.layers
    n_layers, hidden = len(layers), geometry.hidden_size
    inter = max(s.intermediate for s in layers)
    prunable = geometry.total_params - geometry.embedding_params
    batch = min(n_samples, int(scorer.options().get("batch_size", 8)))
    vocab = geometry.embedding_params // max(hidden, 1)
    act = batch * seq_len * (4 * hidden + 3 * inter) * b  # one layer's live activations for one mini-batch
    logits = min(LOSS_CHUNK_TOKENS, batch * seq_len) * vocab * 4 * 3  # logits, softmax, gradient
    recomputed = scorer.options().get("checkpoint", True)  # minillm's backprop estimators always recompute layers
    stored = batch * seq_len * hidden * n_layers * b + act * 3 if recomputed else act * n_layers
    gradients = 0 if scorer.options().get("estimator") == "exact-gates" else prunable * 4  # gates only
    extra = {
        "weights": 0,
        "activations": act,
        "forward probes": act + logits + 2 * max(hidden * inter, hidden * hidden) * 4,
        "full backprop": gradients + stored + logits,
        "layer streaming": (n_samples * (2 * math.isqrt(n_layers) + 1) + batch) * seq_len * hidden * b
        + prunable / n_layers * 4 + act * 3 + logits,
    }[engine]
    passes = _passes(scorer, engine, n_layers)
    flops = FLOPS["cuda" if device.startswith("cuda") else "cpu"]
    seconds = 0.5 + passes * 2 * geometry.total_params * n_samples * seq_len / flops
    forward_only = Need.BACKWARD not in scorer.needs
    return ScoringCost(seconds, extra / 2**20, passes, forward_only, engine)

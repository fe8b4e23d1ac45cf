"""The forward engine: mini-batch passes, next-token losses, and hooks accumulating per-column input statistics.

Hooks read out-projection inputs (per-head outputs, channel activations) and in-projection inputs (normalised hidden).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.engine.hooks import attached

logger = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_out")
MOMENTS: tuple[str, ...] = ("sq_norm", "mean", "var")
DEFAULT_BATCH_SIZE = 8
LOSS_CHUNK_TOKENS = 128  # logits of 128 tokens x a 50k vocabulary: ~25 MB in float32


def merge_moments(
    count: int, mean: torch.Tensor, m2: torch.Tensor, x: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Fold a batch into running per-column mean and sum of squared deviations (Chan et al., 1979).

    mean, m2: [cols]; x: [tokens, cols] float. Returns (count, mean, m2) after the batch; stable in float32.
    """
    n_b = x.shape[0]
    mean_b = x.mean(dim=0)
    m2_b = (x - mean_b).pow(2).sum(dim=0)
    total = count + n_b
    delta = mean_b - mean
    return total, mean + delta * (n_b / total), m2 + m2_b + delta.pow(2) * (count * n_b / total)


@dataclass
class ColumnStats:
    """Running statistics of one linear's input columns over calibration tokens; tensors are [in_features]."""

    count: int
    sq_norm: torch.Tensor  # sum_t x_tj^2
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None  # sum_t (x_tj - mean_j)^2

    @classmethod
    def empty(cls, width: int, moments: Sequence[str], device: torch.device) -> ColumnStats:
        z = lambda: torch.zeros(width, dtype=torch.float32, device=device)  # noqa: E731
        first = bool({"mean", "var"} & set(moments))
        return cls(0, z(), z() if first else None, z() if "var" in moments else None)

    def update(self, x: torch.Tensor) -> None:
        """x: [..., in_features] (any leading shape); accumulated in float32."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.sq_norm += x.pow(2).sum(dim=0)
        if self.m2 is not None:
            self.count, self.mean, self.m2 = merge_moments(self.count, self.mean, self.m2, x)
            return
        if self.mean is not None:
            self.mean = (self.mean * self.count + x.sum(dim=0)) / (self.count + x.shape[0])
        self.count += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        """L2 norm of each column over all tokens: [in_features]."""
        return self.sq_norm.sqrt()

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance of each column over tokens: [in_features] (needs moment "var")."""
        if self.m2 is None:
            raise MiniLLMError("variance was not recorded; ask record_activations for moment 'var'")
        return self.m2 / max(self.count - 1, 1)


Stats = dict[tuple[int, str], ColumnStats]


def site_linears(adapter: ArchAdapter, layer: nn.Module) -> dict[str, nn.Linear]:
    """The linear whose input each site observes; all in-projections of a block read the same hidden state."""
    return {
        "attn_in": adapter.attention_in_projs(layer)[0],
        "attn_out": adapter.attention_out_proj(layer),
        "mlp_in": adapter.mlp_in_projs(layer)[0],
        "mlp_out": adapter.mlp_out_proj(layer),
    }


def slice_site(family: str, s: Slice) -> str:
    """The site whose statistics describe the input columns of slice `s` (family "attn" or "mlp")."""
    return f"{family}_{'out' if s.dim == 1 else 'in'}"


def _check(values: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise MiniLLMError(f"unknown {what} {bad}; allowed: {', '.join(allowed)}")


@contextmanager
def record_activations(
    adapter: ArchAdapter, sites: Sequence[str] = SITES, moments: Sequence[str] = ("sq_norm",)
) -> Iterator[Stats]:
    """Forward pre-hooks that accumulate `ColumnStats` per (layer index, site); removed on exit, even on error."""
    _check(sites, SITES, "activation sites")
    _check(moments, MOMENTS, "activation moments")
    stats: Stats = {}

    def hook_for(key: tuple[int, str]) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if key not in stats:
                stats[key] = ColumnStats.empty(x.shape[-1], moments, x.device)
            stats[key].update(x)

        return hook

    with attached() as handles:
        for i, layer in enumerate(adapter.layers()):
            linears = site_linears(adapter, layer)
            for site in sites:
                handles.append(linears[site].register_forward_pre_hook(hook_for((i, site))))
        yield stats


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Score with dropout off (deterministic losses and gradients); restore the caller's mode on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batches(calibration: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Mini-batches of the calibration rows, in order. calibration: [n, seq_len] token ids."""
    if calibration.ndim != 2 or calibration.shape[0] == 0 or calibration.shape[1] < 2:
        shape = tuple(calibration.shape)
        raise MiniLLMError(f"calibration must be [n_samples >= 1, seq_len >= 2] token ids, got {shape}")
    if batch_size < 1:
        raise MiniLLMError(f"batch_size must be >= 1, got {batch_size}")
    return list(calibration.split(batch_size))


def run_batches(
    model: nn.Module, calibration: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress = no_progress, label: str = "calibration",
) -> None:
    """Run the model over the calibration rows under `inference_mode` (hooks do the work)."""
    device, parts = model_device(model), batches(calibration, batch_size)
    with torch.inference_mode(), eval_mode(model):
        for k, ids in enumerate(parts):
            model.base_model(input_ids=ids.to(device), use_cache=False)  # the hooks need no logits
            progress(k + 1, len(parts), label)


def _token_nll(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def head_losses(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of each row from the final hidden states: [batch] float32.

    hidden: [batch, seq_len, d] (the backbone's last_hidden_state); ids: [batch, seq_len]. Logits exist for at most
    `LOSS_CHUNK_TOKENS` tokens at a time; under autograd each chunk is recomputed in backward, so the vocabulary-sized
    logits never dominate scoring memory.
    """
    head = model.get_output_embeddings()
    flat_h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    flat_t = ids[:, 1:].reshape(-1)
    grad = torch.is_grad_enabled() and flat_h.requires_grad
    nll = [checkpoint(_token_nll, head, h, t, use_reentrant=False) if grad else _token_nll(head, h, t)
           for h, t in zip(flat_h.split(LOSS_CHUNK_TOKENS), flat_t.split(LOSS_CHUNK_TOKENS), strict=True)]
    return torch.cat(nll).view(ids.shape[0], -1).mean(dim=1)


def sequence_losses(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row: [batch] float32. ids: [batch, seq_len] on the model's device."""
    return head_losses(model, model.base_model(input_ids=ids, use_cache=False).last_hidden_state, ids)


def collect_activations(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, sites: Sequence[str] = SITES,
    moments: Sequence[str] = ("sq_norm",), batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress = no_progress,
) -> Stats:
    """One pass over the calibration data recording the requested statistics."""
    with record_activations(adapter, sites, moments) as stats:
        run_batches(model, calibration, batch_size, progress, "activations")
    return stats

"""The backprop engine: real gradients of the mean next-token loss, into the `.grad` of chosen parameters only.

Gradient flags and buffers are restored on exit; decoder layers can be recomputed in backward (one layer live).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter, Slice
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE, batches, eval_mode, model_device, sequence_losses


@contextmanager
def gradients_only_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Make only `params` require grad; on exit restore every flag and drop every `.grad` (none are left behind)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)


@contextmanager
def checkpointed_layers(adapter: ArchAdapter, enabled: bool = True) -> Iterator[None]:
    """Recompute each decoder layer in backward instead of storing its activations (one layer live at a time)."""
    patched = []
    try:
        if enabled:
            for layer in adapter.layers():
                original = layer.forward

                def forward(*args, _f=original, **kwargs):
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)

                layer.forward = forward  # instance attribute shadows the method; deleted on exit
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


def accumulate_gradients(
    model: nn.Module, calibration: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress = no_progress, label: str = "backward",
) -> None:
    """Backpropagate the mean next-token loss over all calibration rows into the `.grad` of parameters that want it."""
    device, parts = model_device(model), batches(calibration, batch_size)
    with torch.enable_grad(), eval_mode(model):
        for k, ids in enumerate(parts):
            loss = sequence_losses(model, ids.to(device)).sum() / calibration.shape[0]
            loss.backward()
            progress(k + 1, len(parts), label)


def slice_grads(s: Slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The `.grad` of slice `s`'s weight [out, in], and of its bias [out] when the slice owns rows (else None)."""
    lin = s.linear
    if lin.weight.grad is None:
        raise MiniLLMError("no gradient reached a prunable weight; is the model's loss connected to every layer?")
    bias_grad = lin.bias.grad if (s.dim == 0 and lin.bias is not None) else None
    return lin.weight.grad, bias_grad


def weight_grad(_layer: int, s: Slice) -> torch.Tensor:
    """G of slice `s`'s weight from its `.grad` (the `grads(layer, slice)` callback of per-weight criteria)."""
    return slice_grads(s)[0]

"""Block-local distillation: each pruned decoder layer trained to reproduce the original layer's output.

For each layer in order, on the pruned model's own inputs to it (the layers before it already trained), the original
(dense) layer's output is the target, and a few AdamW passes over the calibration rows fit the pruned layer's
remaining weights to it (relative mean squared error). The sequential engine of the re-fit (`sequential`) carries
the rows from layer to layer, so memory is one layer's activations and gradients, whatever the depth. Layers the
plan did not prune reproduce their original already and are only run forward. A nonlinear sequel to the closed-form
re-fit (`reconstruction`), which fits only the output projections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minillm_core.modeling import get_adapter
from minillm_core.progress import Progress, no_progress
from minillm_core.recovery.config import lr_at
from minillm_core.scoring.engine.forward import eval_mode
from minillm_core.sequential import first_layer_inputs


@dataclass
class LocalReport:
    """What block-local distillation did: per trained layer its relative error before and after, and the updates."""

    layers: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)  # step, layer, loss, lr
    trainable_params: int = 0  # the weights of the pruned layers
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def pack_rows(examples: list[tuple[list[int], list[int]]], length: int) -> torch.Tensor:
    """The examples' tokens joined into one stream and cut into `[n, length]` rows (the remainder dropped), so every
    position is a real token: layers see no padding."""
    stream = [t for ids, _ in examples for t in ids]
    n = len(stream) // length
    if n == 0:
        from minillm_core.errors import DataError

        raise DataError(f"the training data has {len(stream)} tokens, fewer than one row of max_length={length}")
    return torch.tensor(stream[: n * length], dtype=torch.long).view(n, length)


def _relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def _mean_error(layer: nn.Module, xs: list, targets: list[torch.Tensor]) -> float:
    return sum(_relative_error(x.run(layer), t).item() for x, t in zip(xs, targets, strict=True)) / len(xs)


def distill_layers(
    student: nn.Module,
    teacher: nn.Module,
    rows: torch.Tensor,
    epochs: int = 4,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    progress: Progress = no_progress,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> LocalReport:
    """Train, in place, every pruned layer of `student` (a pruned copy of `teacher`) to match `teacher`'s layer on
    the student's own inputs: `epochs` passes over `rows` [n, seq] in batches of `batch_size`, AdamW with linear
    warmup (one pass's tenth) and decay per layer. `teacher` is only read. Deterministic for the caller's seed.
    `on_step` gets each update's row (step, epoch = the trained layer's ordinal, layer, loss, lr, total updates)."""
    sa, ta = get_adapter(student), get_adapter(teacher)
    report = LocalReport()
    t0 = time.perf_counter()
    pruned = [i for i in range(len(sa.layers())) if sa.layer_shape(i) != ta.layer_shape(i)]
    report.trainable_params = sum(p.numel() for i in pruned for p in sa.layers()[i].parameters())
    with eval_mode(student), eval_mode(teacher):  # no dropout: the targets and the fit see the same function
        with torch.no_grad():
            xs = first_layer_inputs(student, sa, rows, batch_size)
        per_layer = epochs * len(xs)
        total = per_layer * len(pruned)
        for done, i in enumerate(pruned):
            layer, dense = sa.layers()[i], ta.layers()[i]
            with torch.no_grad():
                for k in range(pruned[done - 1] + 1 if done else 0, i):  # unpruned layers: forward only
                    xs = [x.advanced(sa.layers()[k]) for x in xs]
                targets = [x.run(dense) for x in xs]
                before = _mean_error(layer, xs, targets)
            params = [p for p in layer.parameters()]
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
            order = torch.randperm(per_layer) % len(xs)
            for step in range(per_layer):
                lr = lr_at(step, per_layer, max(1, len(xs) // 10), learning_rate)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                b = int(order[step])
                loss = _relative_error(xs[b].run(layer), targets[b])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                report.steps += 1
                report.tokens += xs[b].hidden.shape[0] * xs[b].hidden.shape[1]
                row = {"step": report.steps, "epoch": done, "layer": i, "loss": loss.item(), "lr": lr}
                report.losses.append(row)
                if on_step is not None:
                    on_step(row | {"total": total})
            for p in params:
                p.requires_grad_(False)
            with torch.no_grad():
                after = _mean_error(layer, xs, targets)
                xs = [x.advanced(layer) for x in xs]
            report.layers.append({"layer": i, "error_before": before, "error_after": after})
            progress(done + 1, len(pruned), "recover")
    report.seconds = time.perf_counter() - t0
    return report

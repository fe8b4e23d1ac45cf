"""The layer-wise engine: exact loss gradients one decoder layer at a time, at near-inference memory.

Pass 1 runs the calibration once without an autograd graph in the decoder, keeps the input of every ~sqrt(L)-th
decoder layer for every row, and backpropagates the loss through the final norm and LM head only, which gives the
gradient at the last layer's output. The sweep then walks the layers top-down, one segment at a time: it refills the
segment's layer inputs from its cached start, then recomputes each layer l from its input with autograd on for that
layer's parameters only and backpropagates the cached output gradient. That yields layer l's weight gradients
(summed over all rows, hence exact) and the gradient at its input, the next output gradient down. A callback reduces
layer l's gradients to group scores and they are freed before layer l-1.

Memory: the weights, cached layer inputs (n_samples x seq_len x hidden, in the model's dtype, for ~2 sqrt(L) layers:
segment starts plus the segment being swept), one output gradient per row, and one layer's activations and weight
gradients. Not forward-only: every layer runs one local backward; the result equals full backprop up to
floating-point summation order (bit-identical on CPU in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring.engine.backprop import gradients_only_for
from minillm_core.scoring.engine.forward import (
    DEFAULT_BATCH_SIZE,
    SITES,
    Stats,
    batches,
    eval_mode,
    model_device,
    record_activations,
    sequence_losses,
)
from minillm_core.scoring.engine.hooks import attached

LayerScores = tuple[torch.Tensor, torch.Tensor]  # (heads [num_heads], channels [intermediate]) of one layer


@dataclass
class LayerCall:
    """One recorded call of a decoder layer: its hidden-state input and every other argument it received."""

    hidden: torch.Tensor | None  # None until the sweep recomputes it
    args: tuple
    kwargs: dict[str, Any]

    def run(self, adapter: ArchAdapter, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return adapter.layer_output_hidden(layer(hidden, *self.args, **self.kwargs))


@contextmanager
def _capture(
    adapter: ArchAdapter, calls: list[list[LayerCall]], leaves: list[torch.Tensor], keep: set[int],
) -> Iterator[None]:
    """Record each layer's call (its hidden input only for layers in `keep`); cut the graph at the last layer's
    output (a fresh leaf that will receive the loss gradient)."""
    layers = adapter.layers()

    def pre(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden, rest, rest_kwargs = adapter.layer_call_input(args, kwargs)
            calls[i].append(LayerCall(hidden if i in keep else None, rest, rest_kwargs))

        return hook

    def cut(module: nn.Module, args: tuple, out: Any) -> Any:
        leaf = adapter.layer_output_hidden(out).detach().requires_grad_(True)
        leaves.append(leaf)
        return adapter.with_layer_output_hidden(out, leaf)

    with attached() as handles:
        handles.extend(layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers))
        handles.append(layers[-1].register_forward_hook(cut))
        yield


def segment_starts(n_layers: int, every: int | None = None) -> list[int]:
    """Layers whose inputs stay cached for the whole sweep: every `every`-th (default ~sqrt(n_layers)), from 0."""
    every = every or max(1, round(math.sqrt(n_layers)))
    return list(range(0, n_layers, every))


def stream_layer_scores(
    model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor,
    layer_params: Callable[[int], list[nn.Parameter]], reduce: Callable[[int, Stats], LayerScores],
    sites: Sequence[str] = SITES, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress = no_progress,
    keep_every: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Group scores of every layer from the exact gradient of the mean next-token loss over `calibration`.

    layer_params(i): the parameters of layer i whose `.grad` `reduce` reads; reduce(i, stats) runs while those
    gradients are set and returns layer i's (heads, channels). `stats`: input-column norms of `sites`, recorded
    during pass 1. Returns (heads per layer, channels per layer). Every `.grad` and flag is restored on exit.

    Only the inputs of every `keep_every`-th layer (segment starts, ~sqrt(layers) apart) are kept from pass 1; a
    segment's other inputs are recomputed from its start just before the sweep reaches it (one extra forward in all),
    so at most ~2 sqrt(layers) layer inputs per row are alive instead of one per layer.
    """
    layers, device = list(adapter.layers()), model_device(model)
    parts = batches(calibration, batch_size)
    starts = segment_starts(len(layers), keep_every)
    calls: list[list[LayerCall]] = [[] for _ in layers]
    leaves: list[torch.Tensor] = []
    heads: list[torch.Tensor | None] = [None] * len(layers)
    channels: list[torch.Tensor | None] = [None] * len(layers)
    steps, done = len(parts) * (len(layers) + 1), 0
    with eval_mode(model), torch.enable_grad():
        frozen = gradients_only_for(model, [])
        with frozen, record_activations(adapter, sites) as stats, _capture(adapter, calls, leaves, set(starts)):
            for ids in parts:  # no parameter wants a grad: the decoder builds no graph
                (sequence_losses(model, ids.to(device)).sum() / calibration.shape[0]).backward()
                done += 1
                progress(done, steps, "layerwise gradients")
        if any(len(c) != len(parts) for c in calls) or len(leaves) != len(parts):
            raise MiniLLMError("decoder layers were not each called once per batch; cannot stream gradients")
        out_grads = [leaf.grad for leaf in leaves]
        del leaves
        for start, end in reversed(list(zip(starts, [*starts[1:], len(layers)], strict=True))):
            with torch.no_grad():  # refill the segment's inputs from its cached start
                for b in range(len(parts)):
                    for j in range(start, end - 1):
                        calls[j + 1][b].hidden = calls[j][b].run(adapter, layers[j], calls[j][b].hidden)
            for i in reversed(range(start, end)):
                with gradients_only_for(model, layer_params(i)):
                    for b, call in enumerate(calls[i]):
                        x = call.hidden.detach().requires_grad_(i > 0)
                        call.run(adapter, layers[i], x).backward(out_grads[b])
                        out_grads[b] = x.grad
                    calls[i] = []  # this layer's inputs are no longer needed
                    heads[i], channels[i] = reduce(i, stats)
                done += len(parts)
                progress(done, steps, "layerwise gradients")
    return heads, channels

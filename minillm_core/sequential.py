"""The sequential layer-wise engine: calibration rows go through a model one decoder layer at a time.

Only the current layer's inputs are alive (per batch of rows); the other layers are untouched and may live on any
device (`offload`): each layer is moved to the compute device while it runs, so a model bigger than the GPU fits.
Every hook comes off on exit. Reconstruction (`reconstruction`) and OBS selection (`scoring.obs`) run on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter


@dataclass
class LayerInput:
    """One batch's input to a decoder layer: the hidden states and every other argument the layer receives."""

    hidden: torch.Tensor  # [batch, seq, hidden]
    args: tuple
    kwargs: dict[str, Any]
    adapter: ArchAdapter

    def run(self, layer: nn.Module, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's hidden-state output for this batch (the adapter knows the layer's output structure)."""
        out = layer(self.hidden if hidden is None else hidden, *self.args, **self.kwargs)
        return self.adapter.layer_output_hidden(out)

    def advanced(self, layer: nn.Module) -> LayerInput:
        """The next layer's input: this layer's output with the same other arguments."""
        return LayerInput(self.run(layer), self.args, self.kwargs, self.adapter)


class _Stop(Exception):
    """Raised by the layer-0 catcher: nothing past the embeddings needs to run."""


@torch.no_grad()
def first_layer_inputs(model: nn.Module, adapter: ArchAdapter, calibration: torch.Tensor, batch_size: int = 8
                       ) -> list[LayerInput]:
    """The input of decoder layer 0 for every batch of `calibration` [n, seq] (embeddings, masks, positions)."""
    layer0 = adapter.layers()[0]
    device = next(layer0.parameters()).device
    seen: list[LayerInput] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen.append(LayerInput(*adapter.layer_call_input(args, kwargs), adapter))
        raise _Stop

    handle = layer0.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for start in range(0, calibration.shape[0], batch_size):
            with suppress(_Stop):
                model(input_ids=calibration[start:start + batch_size].to(device), use_cache=False)
    finally:
        handle.remove()
    if len(seen) != -(-calibration.shape[0] // batch_size):
        raise MiniLLMError("the first decoder layer was not called once per batch; cannot run layer by layer")
    return seen


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`module` on `device` while in use, then back where it was (offloaded layers visit the GPU one at a time)."""
    home = next(module.parameters()).device
    if home == device:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


class Capture:
    """The inputs a hooked module received while the hook was on; `.values` lists them, oldest first."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def take(self) -> torch.Tensor:
        """The single recorded input, flattened to rows [tokens, features]; clears the record."""
        if len(self.values) != 1:
            raise MiniLLMError(f"expected one call of the hooked module, saw {len(self.values)}")
        x = self.values.pop()
        return x.reshape(-1, x.shape[-1])


@contextmanager
def capture_input(module: nn.Module) -> Iterator[Capture]:
    """Record `module`'s first positional input on each call."""
    cap = Capture()
    handle = module.register_forward_pre_hook(lambda _m, args: cap.values.append(args[0].detach()))
    try:
        yield cap
    finally:
        handle.remove()


@contextmanager
def replace_inputs(modules: Sequence[nn.Module], value: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Feed `value()` to each of `modules` instead of what the model computed (e.g. another model's MLP input)."""
    handles = [m.register_forward_pre_hook(lambda _m, args: (value(), *args[1:])) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()

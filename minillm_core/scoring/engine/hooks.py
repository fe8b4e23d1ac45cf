"""Hook lifetimes and the linears the engines hook: every handle comes off on exit, even on error.

`prunable_linears` fixes the order that probe seeds and gradient buffers index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle

from minillm_core.modeling.base import ArchAdapter


@contextmanager
def attached() -> Iterator[list[RemovableHandle]]:
    """A list to append hook handles to; every handle in it is removed on exit."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def linears_of_layer(adapter: ArchAdapter, i: int) -> list[nn.Linear]:
    """Every linear a head or channel of layer i owns, in a fixed order."""
    return adapter.group_linears(adapter.layers()[i])


def layer_linears(adapter: ArchAdapter) -> list[list[nn.Linear]]:
    """`linears_of_layer` of every layer: the probe seeds index this order."""
    return [linears_of_layer(adapter, i) for i in range(len(adapter.layers()))]


def prunable_linears(adapter: ArchAdapter) -> list[nn.Linear]:
    """Every linear a head or channel owns, layer by layer, in a fixed order."""
    return [lin for linears in layer_linears(adapter) for lin in linears]


def linear_params(linears: Sequence[nn.Linear]) -> list[nn.Parameter]:
    """Weights and biases of `linears`, in order."""
    return [p for lin in linears for p in lin.parameters()]

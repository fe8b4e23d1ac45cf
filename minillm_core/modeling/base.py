"""The architecture adapter interface: where every model-specific attribute path lives.

Algorithms ask an adapter for decoder layers, the coupled weight slices of heads and channels, and to sync metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from minillm_core.registry import Registry

Unit = Literal["q", "kv", "channel"]


@dataclass(frozen=True)
class LayerShape:
    """Widths of one decoder layer: query heads, key/value heads, MLP channels."""

    num_heads: int
    num_kv_heads: int
    intermediate: int

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class Slice:
    """One linear layer's share of a group family.

    Unit `u` owns `width` consecutive weight rows (`dim=0`, bias included) or columns (`dim=1`) starting at
    `u * width`. The layer is `getattr(parent, name)`, so surgery can swap in a new, smaller `nn.Linear`.
    """

    parent: nn.Module
    name: str
    dim: int
    unit: Unit
    width: int

    @property
    def linear(self) -> nn.Linear:
        return getattr(self.parent, self.name)

    @property
    def n_units(self) -> int:
        return self.linear.weight.shape[self.dim] // self.width

    def params_per_unit(self) -> int:
        """Parameters that removing one unit deletes from this layer."""
        lin = self.linear
        other = lin.weight.shape[1 - self.dim]
        bias = self.width if (self.dim == 0 and lin.bias is not None) else 0
        return self.width * other + bias


@dataclass(frozen=True)
class LayerPlanIndices:
    """Kept indices of one layer, in the layer's current numbering (what surgery and adapters consume)."""

    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]


class ArchAdapter(ABC):
    """Uniform access to one architecture family; subclasses register with `@ADAPTERS.register(model_type, ...)`."""

    #: True when every query head has its own K/V (OPT, BLOOM): heads and kv_heads are one index set.
    tied_heads: ClassVar[bool] = False
    #: Which pruned widths the HF config can describe ("heads", "channels"), so plain from_pretrained rebuilds them.
    config_expresses: ClassVar[frozenset[str]] = frozenset({"heads", "channels"})

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # --- structure -------------------------------------------------------------------------------------------
    @abstractmethod
    def layers(self) -> Sequence[nn.Module]:
        """The decoder layers, in order."""

    def replace_layer(self, index: int, layer: nn.Module) -> nn.Module:
        """Put `layer` in place of decoder layer `index` (a searched variant); returns the layer it replaced."""
        layers = self.layers()
        old = layers[index]
        layers[index] = layer  # every family keeps its layers in an nn.ModuleList
        return old

    @abstractmethod
    def attention(self, layer: nn.Module) -> nn.Module:
        """The attention module of a decoder layer."""

    @abstractmethod
    def mlp_parent(self, layer: nn.Module) -> nn.Module:
        """The module that owns the MLP linears (the MLP itself, or the layer for OPT)."""

    @abstractmethod
    def attention_slices(self, layer: nn.Module) -> list[Slice]:
        """Slices of q ("q"), k/v ("kv") rows and o ("q") columns."""

    @abstractmethod
    def mlp_slices(self, layer: nn.Module) -> list[Slice]:
        """Slices of the MLP input rows and output columns, unit "channel"."""

    @property
    @abstractmethod
    def head_dim(self) -> int:
        """Width of one attention head (unchanged by pruning)."""

    @abstractmethod
    def original_shape(self) -> LayerShape:
        """Layer widths as the config describes them (before any pruning)."""

    # --- roles used by calibration hooks ---------------------------------------------------------------------
    def attention_out_proj(self, layer: nn.Module) -> nn.Linear:
        """The attention output projection, whose input is the concatenation of head outputs."""
        return next(s.linear for s in self.attention_slices(layer) if s.dim == 1)

    def mlp_out_proj(self, layer: nn.Module) -> nn.Linear:
        """The MLP output projection, whose input is the channel activations."""
        return next(s.linear for s in self.mlp_slices(layer) if s.dim == 1)

    def attention_in_projs(self, layer: nn.Module) -> list[nn.Linear]:
        """Linears reading the (normalised) attention input."""
        return [s.linear for s in self.attention_slices(layer) if s.dim == 0]

    def mlp_in_projs(self, layer: nn.Module) -> list[nn.Linear]:
        """Linears reading the (normalised) MLP input."""
        return [s.linear for s in self.mlp_slices(layer) if s.dim == 0]

    def group_linears(self, layer: nn.Module) -> list[nn.Linear]:
        """Every linear a head or channel of `layer` owns: attention slices then MLP slices, in slice order."""
        return [s.linear for s in self.attention_slices(layer) + self.mlp_slices(layer)]

    # --- decoder layer calls (layer-by-layer replay) ---------------------------------------------------------
    def layer_call_input(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        """Split a decoder layer call into its hidden-state input [batch, seq, hidden] and the other arguments.

        transformers passes the hidden states positionally or as the `hidden_states` keyword.
        """
        if args:
            return args[0], args[1:], dict(kwargs)
        rest = dict(kwargs)
        return rest.pop("hidden_states"), (), rest

    def layer_output_hidden(self, out: Any) -> torch.Tensor:
        """A decoder layer's hidden-state output: LLaMA-family layers return a tensor, OPT/BLOOM a tuple."""
        return out[0] if isinstance(out, tuple) else out

    def with_layer_output_hidden(self, out: Any, hidden: torch.Tensor) -> Any:
        """The decoder layer output `out` with its hidden state replaced by `hidden` (same structure)."""
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    @property
    def model_type(self) -> str:
        """The `config.model_type` of the adapted model (for messages)."""
        return self.config.model_type

    # --- shapes ----------------------------------------------------------------------------------------------
    def layer_shape(self, index: int) -> LayerShape:
        """Current widths of layer `index`, read from its weights' shapes (pruning-aware)."""
        layer = self.layers()[index]
        units: dict[str, int] = {}
        for s in self.attention_slices(layer) + self.mlp_slices(layer):
            units.setdefault(s.unit, s.n_units)
        kv = units["q"] if self.tied_heads else units["kv"]
        return LayerShape(num_heads=units["q"], num_kv_heads=kv, intermediate=units["channel"])

    def layer_shapes(self) -> list[LayerShape]:
        return [self.layer_shape(i) for i in range(len(self.layers()))]

    # --- after surgery ---------------------------------------------------------------------------------------
    @abstractmethod
    def sync_layer(self, layer: nn.Module, kept: LayerPlanIndices, shape: LayerShape) -> None:
        """Update a layer's shape attributes (head counts, GQA ratio, ...) after its weights were sliced."""

    def layer_state(self, layer: nn.Module) -> dict[str, Any]:
        """Extra per-layer state that shapes alone do not capture (saved beside the weights)."""
        return {}

    def restore_state(self, layer: nn.Module, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Re-apply `layer_state` after loading."""

    # --- llama.cpp export (GGUF) -----------------------------------------------------------------------------
    #: llama.cpp's name for this family's graph when every layer has the config's widths (None: no route).
    gguf_arch: ClassVar[str | None] = None

    def gguf_model_tensors(self) -> dict[str, torch.Tensor]:
        """Embedding, final norm and (untied) output head under llama.cpp's tensor names."""
        raise self._no_gguf_route()

    def gguf_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """One decoder layer's tensors under llama.cpp's names without the `blk.N.` prefix (`attn_q.weight`, ...)."""
        raise self._no_gguf_route()

    def _no_gguf_route(self) -> Exception:
        from minillm_core.errors import ExportError

        return ExportError(f"{self.model_type} models have no llama.cpp (GGUF) export route; exportable families: "
                           f"{', '.join(n for n in ADAPTERS.names() if ADAPTERS.get(n).gguf_arch)}")

    @abstractmethod
    def config_fields(self, shape: LayerShape) -> dict[str, int]:
        """Config values that describe a uniform `shape` (only called when `config_expresses` allows it)."""

    def sync_config(self, shapes: Sequence[LayerShape]) -> bool:
        """Write uniform shapes into the config; return whether plain `from_pretrained` can rebuild the model."""
        if not config_can_express(self.original_shape(), shapes, self.config_expresses, self.config.hidden_size):
            return False
        for key, value in self.config_fields(shapes[0]).items():
            setattr(self.config, key, value)
        return True


def config_can_express(
    original: LayerShape, shapes: Sequence[LayerShape], expresses: frozenset[str], hidden_size: int
) -> bool:
    """Whether a config describing one width for all layers can rebuild `shapes` (see `config_expresses`).

    transformers 5 configs also insist that hidden_size be a multiple of the head count, even with explicit head_dim.
    """
    if len(set(shapes)) != 1:
        return False
    shape = shapes[0]
    heads_changed = (shape.num_heads, shape.num_kv_heads) != (original.num_heads, original.num_kv_heads)
    if heads_changed and ("heads" not in expresses or hidden_size % shape.num_heads):
        return False
    return shape.intermediate == original.intermediate or "channels" in expresses


ADAPTERS: Registry[type[ArchAdapter]] = Registry("architecture")


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter for `model.config.model_type`; raises `UnsupportedArchitectureError` listing supported ones."""
    from minillm_core.errors import RegistryError, UnsupportedArchitectureError

    model_type = getattr(model.config, "model_type", None)
    try:
        cls = ADAPTERS.get(model_type)
    except RegistryError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(ADAPTERS.names())}"
        ) from None
    return cls(model)


def max_context(model: nn.Module) -> int | None:
    """The longest sequence the model's positions allow, or None when its positions are unbounded (ALiBi: BLOOM)."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied tensors (a shared embedding and LM head) once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def check_supported(model_type: str | None) -> None:
    """Raise `UnsupportedArchitectureError`, listing the supported families, unless `model_type` has an adapter."""
    from minillm_core.errors import UnsupportedArchitectureError

    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(ADAPTERS.names())}"
        )

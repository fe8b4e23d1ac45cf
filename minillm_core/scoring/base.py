"""The scorer interface: group importance per layer, declared calibration needs and engine, and a registry.

A scorer returns `GroupScores` (one score per query head and per MLP channel, higher = more important).
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.modeling.base import ArchAdapter
from minillm_core.options import option
from minillm_core.progress import Progress, no_progress
from minillm_core.registry import Registry
from minillm_core.scoring.engine.forward import DEFAULT_BATCH_SIZE


class Need(StrEnum):
    """Calibration work a scorer needs; the pipeline runs only what is declared."""

    WEIGHTS = "weights"  # weights only, no data
    ACTIVATIONS = "activations"  # forward passes with input-activation statistics
    FORWARD_PROBES = "forward_probes"  # loss-only forward passes (zeroth-order gradient estimates)
    BACKWARD = "backward"  # real backpropagation


class Engine(StrEnum):
    """The calibration engine (scoring/engine/) a configured scorer runs; the cost model prices each one."""

    WEIGHTS = "weights"  # no data, no passes
    FORWARD = "activations"  # engine/forward.py: activation statistics from mini-batch passes
    PROBES = "forward probes"  # engine/probes.py: loss-only forward passes with seeded perturbations
    BACKPROP = "full backprop"  # engine/backprop.py: one backward per mini-batch through the whole model
    LAYERWISE = "layer streaming"  # engine/layerwise.py: exact gradients one decoder layer at a time
    SEQUENTIAL = "layer by layer"  # sequential.py: one forward pass, one layer's input Gram matrices at a time (obs)


@dataclass(frozen=True)
class Workload:
    """What a configured scorer runs, as the cost model needs it: its engine and the facts that size that engine."""

    engine: Engine
    batch_size: int = DEFAULT_BATCH_SIZE  # calibration rows per forward
    probes: int = 0  # PROBES: probes per round of perturbed layers (two forward passes each) ...
    probes_per_layer: bool = False  # ... and whether each decoder layer gets its own rounds (else one for all)
    recompute_layers: bool = True  # BACKPROP: layers recomputed in backward, so only their inputs are stored
    weight_gradients: bool = True  # BACKPROP: a float32 `.grad` for every prunable weight (else gates only)

    def probe_rounds(self, n_layers: int) -> int:
        """Two-sided probe rounds over the calibration set on a model with `n_layers` decoder layers."""
        return self.probes * (n_layers if self.probes_per_layer else 1)


@dataclass
class GroupScores:
    """Importance of every prunable group.

    heads[i]: [num_heads of layer i] (a query head, with its share of its KV head);
    channels[i]: [intermediate of layer i].
    """

    scorer: str
    heads: list[torch.Tensor]
    channels: list[torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def save(self, path: str | Path) -> None:
        """Write scores as safetensors with the scorer and options in the metadata (no pickle)."""
        tensors = {f"heads.{i}": t.float().contiguous() for i, t in enumerate(self.heads)}
        tensors |= {f"channels.{i}": t.float().contiguous() for i, t in enumerate(self.channels)}
        meta = {"scorer": self.scorer, "options": json.dumps(self.options), "num_layers": str(self.num_layers)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> GroupScores:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            n = int(meta["num_layers"])
            return cls(
                scorer=meta["scorer"],
                heads=[tensors[f"heads.{i}"] for i in range(n)],
                channels=[tensors[f"channels.{i}"] for i in range(n)],
                options=json.loads(meta.get("options", "{}")),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise MiniLLMError(f"cannot read scores from {path}: {exc}") from exc


class Scorer(ABC):
    """A pruning criterion. Subclasses declare `name`, `needs`, `engine` (or override `workload`) and implement
    `score`; scorers that read calibration rows in mini-batches call that option `batch_size`."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]]
    engine: ClassVar[Engine]
    description: ClassVar[str] = ""

    @abstractmethod
    def score(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        calibration: torch.Tensor | None = None,
        progress: Progress = no_progress,
    ) -> GroupScores:
        """Score every head and channel. `calibration`: [n_samples, seq_len] token ids, when the scorer needs data."""

    def options(self) -> dict[str, Any]:
        """The settings that produced the scores (recorded in plans and runs)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs - {Need.WEIGHTS})

    def workload(self) -> Workload:
        """The engine this configured scorer runs and what sizes it (read by the cost model)."""
        return Workload(self.engine, batch_size=getattr(self, "batch_size", DEFAULT_BATCH_SIZE))

    def describe(self) -> dict[str, Any]:
        """What the front ends list: needs, engine, whether forward-only, options and description."""
        return {"needs": sorted(n.value for n in self.needs), "engine": self.workload().engine.value,
                "forward_only": Need.BACKWARD not in self.needs, "options": self.options(),
                "description": self.description}


SCORERS: Registry[type[Scorer]] = Registry("scorer")


def make_scorer(name: str, **options: Any) -> Scorer:
    """Instantiate a registered scorer; unknown options raise with the accepted ones."""
    cls = SCORERS.get(name)
    import inspect

    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MiniLLMError(f"unknown option(s) {unknown} for scorer {name!r}; allowed: "
                           f"{', '.join(accepted) or 'none (it takes no options)'}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise MiniLLMError(f"bad options for scorer {name!r}: {exc}") from None


def describe_scorers() -> dict[str, dict[str, Any]]:
    """`Scorer.describe` of every registered scorer with its default options, by name (`minillm scorers`, the app)."""
    return {name: make_scorer(name).describe() for name in SCORERS.names()}


#: FLAP: forward-only, seconds on a CPU, and the lowest perplexity at 20% in bench/results/scoring.md
DEFAULT_SCORER = "flap"


@dataclass(frozen=True)
class ScoreConfig:
    """Which criterion to run: a registered scorer name, its options, and the seed scorers with randomness use."""

    scorer: str = option(DEFAULT_SCORER, "Importance criterion: flap, obs (Optimal Brain Surgeon), minillm (Feature "
                         "Map Sensitivity), wanda-sp, taylor (backprop), magnitude, random; see `minillm scorers`.",
                         choices=lambda: SCORERS.names())
    options: dict[str, Any] = option(
        default_factory=dict, cli="option", short="-o",
        help="Scorer option key=value, repeatable (-o n_probes=16 -o eps=1e-3); see `minillm scorers`.")
    seed: int = option(0, "Seed for random scores, calibration sampling and SPSA probes.")

    def __post_init__(self) -> None:
        SCORERS.get(self.scorer)  # an unknown name fails now, listing the registered ones
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MiniLLMError(f"seed must be an integer, got {self.seed!r}")

    def scorer_options(self) -> dict[str, Any]:
        """The options the scorer is built with; `seed` is passed to scorers that take one unless set explicitly."""
        opts = dict(self.options)
        cls = SCORERS.get(self.scorer)
        if dataclasses.is_dataclass(cls) and "seed" in {f.name for f in dataclasses.fields(cls)}:
            opts.setdefault("seed", self.seed)
        return opts

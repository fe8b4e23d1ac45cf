"""The scorer interface: group importance per layer, declared calibration needs, and a registry.

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


class Need(StrEnum):
    """Calibration work a scorer needs; the pipeline runs only what is declared."""

    WEIGHTS = "weights"  # weights only, no data
    ACTIVATIONS = "activations"  # forward passes with input-activation statistics
    FORWARD_PROBES = "forward_probes"  # loss-only forward passes (zeroth-order gradient estimates)
    BACKWARD = "backward"  # real backpropagation


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
    """A pruning criterion. Subclasses declare `name`, `needs`, and implement `score`."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[Need]]
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


SCORERS: Registry[type[Scorer]] = Registry("scorer")


def make_scorer(name: str, **options: Any) -> Scorer:
    """Instantiate a registered scorer; unknown options raise with the accepted ones."""
    cls = SCORERS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise MiniLLMError(f"bad options for scorer {name!r}: {exc}") from None


#: FLAP: forward-only, seconds on a CPU, and the lowest perplexity at 20% in bench/results/scoring.md
DEFAULT_SCORER = "flap"


@dataclass(frozen=True)
class ScoreConfig:
    """Which criterion to run: a registered scorer name, its options, and the seed scorers with randomness use."""

    scorer: str = option(DEFAULT_SCORER, "Importance criterion: flap, minillm (Feature Map Sensitivity), wanda-sp, "
                         "taylor (backprop), magnitude, random; see `minillm scorers`.",
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

"""Pruning plans: from group scores and a target ratio to kept heads/channels per layer, without touching weights.

`ModelGeometry` holds everything the planner needs (widths, params per unit); `build_plan` ranks; `summarize` previews.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillm_core.errors import PlanError
from minillm_core.gguf_export import QUANT_BLOCK
from minillm_core.groups import HEAD_GRANULARITIES, validate_heads
from minillm_core.modeling.base import ADAPTERS, ArchAdapter, LayerPlanIndices, LayerShape, config_can_express
from minillm_core.options import option

ALLOCATIONS = ("uniform", "global", "schedule", "search")
TARGETS = ("auto", "heads", "channels", "both", "channels-first")
#: target auto: channels-first below this ratio, both from it on (bench/results/quality_target_threshold.md: on
#: SmolLM2-135M with the re-fit, channels-first is 9% better at 20%, equal at 30%, worse above).
AUTO_CHANNELS_FIRST_BELOW = 0.3
PLAN_FORMAT = 1
BYTES_PER_DTYPE = {"float32": 4, "float16": 2, "bfloat16": 2}


def default_protected_layers(num_layers: int) -> tuple[int, ...]:
    """LLM-Pruner's default scaled to depth: layers 0-3 and the last 2 of 32 stay untouched (4/32 and 2/32)."""
    first, last = int(num_layers * 4 / 32 + 0.5), int(num_layers * 2 / 32 + 0.5)
    return tuple(range(first)) + tuple(range(num_layers - last, num_layers))


@dataclass(frozen=True)
class PlanConfig:
    """What to remove and how to spread it. `ratio` is the fraction of *total* parameters to remove."""

    ratio: float = option(0.2, "Fraction of *total* parameters to remove, in (0, 1).", min=0.01, max=0.9, step=0.01)
    allocation: str = option("uniform", "uniform: same widths in every unprotected layer; global: rank groups across "
                             "layers after per-layer standardisation; schedule: a ratio rising with depth "
                             "(log-increasing, SlimGPT), 4x as much from the last layer as from the first; search: "
                             "per-layer widths searched for the lowest KL divergence to the dense model (EvoPress; "
                             "needs calibration, minutes).",
                             choices=ALLOCATIONS)
    protected_layers: tuple[int, ...] | None = option(
        None, "Layer indices never pruned. Default: LLM-Pruner's rule scaled to depth (first 4/32 and last 2/32 of "
        "the layers; layers 0-3 and 28-29 of a 30-layer model). Pass '' to protect none.", cli="protect")
    target: str = option("auto", "What to prune: heads, channels, both (heads in proportion to each layer's cut, "
                         "LLM-Pruner's rule), channels-first (MLP channels; heads only where a layer's channels "
                         "cannot give its cut; with global allocation as both), or auto (channels-first below a 30% "
                         "ratio, both from 30%: what measured best).", choices=TARGETS)
    head_granularity: str = option(
        "q-heads", "GQA head removal: q-heads (the same number of query heads from every KV group) or kv-groups "
        "(whole KV groups with their query heads). Multi-head models always remove whole heads.",
        choices=HEAD_GRANULARITIES)
    round_to: int = option(8, "Kept MLP channels per layer are a multiple of this (hardware-friendly).", min=1)
    gguf_compatible: bool = option(
        False, "Keep every layer exportable to GGUF for llama.cpp with quantized weights: MLP widths a multiple of "
        "32 (GGML's quantization block), at least one head and one channel per layer (always so here).",
        label="GGUF-compatible widths")

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise PlanError(f"ratio must be a fraction of parameters in (0, 1), got {self.ratio!r}")
        for value, allowed, what in (
            (self.allocation, ALLOCATIONS, "allocation"),
            (self.target, TARGETS, "target"),
            (self.head_granularity, HEAD_GRANULARITIES, "head granularity"),
        ):
            if value not in allowed:
                raise PlanError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise PlanError(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.protected_layers is not None:
            object.__setattr__(self, "protected_layers", tuple(sorted({int(i) for i in self.protected_layers})))
        if self.gguf_compatible and self.round_to % QUANT_BLOCK:
            object.__setattr__(self, "round_to", math.lcm(self.round_to, QUANT_BLOCK))

    @property
    def resolved_target(self) -> str:
        """The target a plan uses: `target`, with auto resolved by the ratio."""
        if self.target != "auto":
            return self.target
        return "channels-first" if self.ratio < AUTO_CHANNELS_FIRST_BELOW else "both"

    @property
    def uses_heads(self) -> bool:
        return self.target != "channels"

    @property
    def uses_channels(self) -> bool:
        return self.target != "heads"

    def protected(self, num_layers: int) -> tuple[int, ...]:
        layers = default_protected_layers(num_layers) if self.protected_layers is None else self.protected_layers
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise PlanError(f"protected layers {bad} out of range; the model has layers 0..{num_layers - 1}")
        return tuple(layers)


@dataclass(frozen=True)
class ModelGeometry:
    """Shapes and parameter costs of a model: all the planner and previews need (JSON-serialisable)."""

    model_type: str
    hidden_size: int
    head_dim: int
    tied_heads: bool
    config_expresses: tuple[str, ...]
    config_shape: LayerShape
    layers: tuple[LayerShape, ...]
    cost_q: int  # parameters removed with one query head (q rows, o columns; k/v too when tied)
    cost_kv: int  # parameters removed with one KV head (k and v rows)
    cost_channel: int  # parameters removed with one MLP channel
    total_params: int
    embedding_params: int
    dtype: str = "float32"
    gguf_arch: str | None = None  # llama.cpp's graph for this family (None: no GGUF route)

    @classmethod
    def from_model(cls, model: nn.Module, adapter: ArchAdapter) -> ModelGeometry:
        layer0 = adapter.layers()[0]
        costs = {"q": 0, "kv": 0, "channel": 0}
        for s in adapter.attention_slices(layer0) + adapter.mlp_slices(layer0):
            costs[s.unit] += s.params_per_unit()
        params = {id(p): p for p in model.parameters()}  # tied embeddings counted once
        emb = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
               for p in m.parameters()}
        return cls(
            model_type=adapter.model_type,
            hidden_size=adapter.config.hidden_size,
            head_dim=adapter.head_dim,
            tied_heads=adapter.tied_heads,
            config_expresses=tuple(sorted(adapter.config_expresses)),
            config_shape=adapter.original_shape(),
            layers=tuple(adapter.layer_shapes()),
            cost_q=costs["q"],
            cost_kv=costs["kv"],
            cost_channel=costs["channel"],
            total_params=sum(p.numel() for p in params.values()),
            embedding_params=sum(p.numel() for p in emb.values()),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            gguf_arch=adapter.gguf_arch,
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_params(self, shape: LayerShape) -> int:
        """Parameters of a layer's prunable linears at `shape`."""
        heads = shape.num_heads * self.cost_q + shape.num_kv_heads * self.cost_kv
        return heads + shape.intermediate * self.cost_channel

    def params_for(self, shapes: Sequence[LayerShape]) -> int:
        """Total parameters of the model with layer widths `shapes` (exact: every other tensor is unchanged)."""
        return self.total_params - sum(self.layer_params(a) - self.layer_params(b) for a, b in zip(self.layers, shapes,
                                                                                                     strict=True))

    def loads_plainly(self, shapes: Sequence[LayerShape]) -> bool:
        """Whether plain `AutoModelForCausalLM.from_pretrained` can rebuild a model of these shapes."""
        if list(shapes) == list(self.layers) and len(set(self.layers)) == 1:
            return True
        return config_can_express(self.config_shape, shapes, frozenset(self.config_expresses), self.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelGeometry:
        data = dict(data)
        data["layers"] = tuple(LayerShape(**s) for s in data["layers"])
        data["config_shape"] = LayerShape(**data["config_shape"])
        data["config_expresses"] = tuple(data["config_expresses"])
        return cls(**data)


def _consistent(shape: LayerShape) -> bool:
    """Widths a layer can have: integers >= 0, query heads a whole multiple of the KV heads (or no heads at all)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vars(shape).values()):
        return False
    h, kv = shape.num_heads, shape.num_kv_heads
    return (h == kv == 0) or (kv > 0 and h >= kv and h % kv == 0)


@dataclass
class PruningPlan:
    """Kept heads/channels per layer plus provenance; what the app edits and the CLI replays."""

    model: str
    model_type: str
    layers: list[LayerPlanIndices]
    original: list[LayerShape]
    config: PlanConfig
    scorer: str
    original_params: int
    predicted_params: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def shapes(self) -> list[LayerShape]:
        return [LayerShape(len(k.heads), len(k.kv_heads), len(k.channels)) for k in self.layers]

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.predicted_params / self.original_params

    def is_uniform(self) -> bool:
        return len(set(self.shapes())) == 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "model": self.model,
            "model_type": self.model_type,
            "scorer": self.scorer,
            "config": asdict(self.config),
            "original_params": self.original_params,
            "predicted_params": self.predicted_params,
            "removed_fraction": self.removed_fraction,
            "original": [asdict(s) for s in self.original],
            "layers": [asdict(k) for k in self.layers],
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict):
            raise PlanError(f"a pruning plan must be a JSON object, got {type(data).__name__}")
        try:
            if data.get("format") != PLAN_FORMAT:
                raise PlanError(f"unsupported plan format {data.get('format')!r}; this version reads {PLAN_FORMAT}")
            config = dict(data["config"])
            if config.get("protected_layers") is not None:
                config["protected_layers"] = tuple(config["protected_layers"])
            plan = cls(
                model=data["model"],
                model_type=data["model_type"],
                layers=[LayerPlanIndices(tuple(k["heads"]), tuple(k["kv_heads"]), tuple(k["channels"]))
                        for k in data["layers"]],
                original=[LayerShape(**s) for s in data["original"]],
                config=PlanConfig(**config),
                scorer=data["scorer"],
                original_params=int(data["original_params"]),
                predicted_params=int(data["predicted_params"]),
                provenance=dict(data.get("provenance", {})),
            )
            bad = next((s for s in plan.original if not _consistent(s)), None)
            if bad is not None:
                raise PlanError(f"malformed pruning plan: original widths must be non-negative integers with the "
                                f"query heads a multiple of the KV heads, got {bad}")
            plan.validate()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise PlanError(f"malformed pruning plan: {exc!r}") from exc
        return plan

    def validate(self, geometry: ModelGeometry | None = None) -> None:
        """Check indices against the original widths (and a model's geometry, when given)."""
        for i, kept in enumerate(self.layers):
            for what, values in (("heads", kept.heads), ("kv_heads", kept.kv_heads), ("channels", kept.channels)):
                wrong = next((v for v in values if isinstance(v, bool) or not isinstance(v, int)), None)
                if wrong is not None:
                    raise PlanError(f"layer {i}: {what} must be integer indices, got {wrong!r}")
        if len(self.layers) != len(self.original):
            raise PlanError(f"plan lists {len(self.layers)} layers but {len(self.original)} original shapes")
        if geometry is not None:
            if geometry.model_type != self.model_type:
                raise PlanError(f"plan is for a {self.model_type!r} model, this model is {geometry.model_type!r}")
            if geometry.num_layers != len(self.original):
                raise PlanError(f"plan was made for a model with {len(self.original)} layers, this model has "
                                f"{geometry.num_layers}")
            if list(geometry.layers) != list(self.original):
                raise PlanError("plan was made for a model with other layer widths")
            expected = geometry.params_for(self.shapes())
            if self.predicted_params != expected:
                raise PlanError(f"the plan's predicted_params ({self.predicted_params:,}) do not match its kept widths "
                                f"on this model ({expected:,}): the file was edited or made for another model")
        tied = geometry.tied_heads if geometry is not None else ADAPTERS.get(self.model_type).tied_heads
        for i, (kept, shape) in enumerate(zip(self.layers, self.original, strict=True)):
            try:
                validate_heads(kept.heads, kept.kv_heads, shape, tied)
            except PlanError as exc:
                raise PlanError(f"layer {i}: {exc}") from None
            ch = kept.channels
            if not ch or list(ch) != sorted(set(ch)) or ch[0] < 0 or ch[-1] >= shape.intermediate:
                raise PlanError(f"layer {i}: kept channels must be non-empty, sorted, unique, "
                                f"within 0..{shape.intermediate - 1}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
        return cls.from_json(text)


def default_provenance() -> dict[str, Any]:
    """Library versions and time, recorded in every plan."""
    import transformers

    from minillm_core.version import __version__

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"minillm_core": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }


@dataclass(frozen=True)
class PlanSummary:
    """A plan previewed against its model: widths per layer, parameters, sizes, and loadability."""

    rows: list[dict[str, int]]
    params_before: int
    params_after: int
    removed_fraction: float
    removed_fraction_non_embedding: float
    size_mb_before: dict[str, float]
    size_mb_after: dict[str, float]
    ideal_speedup: float
    loads_with_from_pretrained: bool
    exports_to: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(plan: PruningPlan, geometry: ModelGeometry) -> PlanSummary:
    """Preview a plan from shapes alone (microseconds to milliseconds; never touches weights)."""
    shapes = plan.shapes()
    rows = [
        {
            "layer": i,
            "heads_before": a.num_heads, "heads_after": b.num_heads,
            "kv_heads_before": a.num_kv_heads, "kv_heads_after": b.num_kv_heads,
            "channels_before": a.intermediate, "channels_after": b.intermediate,
            "params_before": geometry.layer_params(a), "params_after": geometry.layer_params(b),
        }
        for i, (a, b) in enumerate(zip(geometry.layers, shapes, strict=True))
    ]
    after = geometry.params_for(shapes)
    before = geometry.total_params
    non_emb_before = before - geometry.embedding_params
    non_emb_after = after - geometry.embedding_params
    mb = {dt: b / 2**20 for dt, b in BYTES_PER_DTYPE.items()}
    return PlanSummary(
        rows=rows,
        params_before=before,
        params_after=after,
        removed_fraction=1 - after / before,
        removed_fraction_non_embedding=1 - non_emb_after / non_emb_before,
        size_mb_before={dt: before * f for dt, f in mb.items()},
        size_mb_after={dt: after * f for dt, f in mb.items()},
        # Decoder FLOPs scale with non-embedding parameters; the real speed-up is measured, this is its ceiling.
        ideal_speedup=non_emb_before / non_emb_after,
        loads_with_from_pretrained=geometry.loads_plainly(shapes),
        exports_to=export_targets(geometry, shapes),
    )


#: What the benchmarks measured (SmolLM2-135M, the default pipeline with the re-fit, WikiText-2 full split:
#: bench/results/quality_full.md at 50%, quality_full_auto.md at 20%): the reference a risk warning quotes.
HEAVY_CUT_EVIDENCE = ("on SmolLM2-135M, removing 50% of the parameters took WikiText-2 perplexity from 56 to 442 "
                      "even with the re-fit, and 20% to 100")


def plan_risks(summary: PlanSummary) -> list[str]:
    """Warnings a person should read before running a plan: layers cut to a sliver, a large share removed."""
    thin = [r["layer"] for r in summary.rows
            if r["channels_before"] and r["channels_after"] < 0.25 * r["channels_before"]]
    risks = []
    if thin:
        risks.append(f"{len(thin)} layer(s) keep under a quarter of their MLP channels (layers {_ranges(thin)}).")
    if summary.removed_fraction_non_embedding > 0.4:
        risks.append(f"{summary.removed_fraction_non_embedding:.0%} of the decoder blocks go: expect a much worse "
                     f"model ({HEAVY_CUT_EVIDENCE}); plan a recovery step.")
    return risks


def _ranges(layers: list[int]) -> str:
    """[4, 5, 6, 9] -> "4-6, 9"."""
    out, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], None], strict=True):
        if cur != prev + 1:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(out)


def export_targets(geometry: ModelGeometry, shapes: list[LayerShape]) -> tuple[str, ...]:
    """Where a model of these widths runs: plain `from_pretrained`, GGUF for llama.cpp, always `load_pruned`."""
    out = ["HF from_pretrained"] if geometry.loads_plainly(shapes) else []
    if geometry.gguf_arch and shapes[0].num_heads > 0:
        quantizable = all(s.intermediate % QUANT_BLOCK == 0 for s in shapes)
        out.append("GGUF (llama.cpp)" if quantizable else
                   f"GGUF (llama.cpp; MLP widths not multiples of {QUANT_BLOCK}, so quantized files keep the down "
                   "projections in f16: choose GGUF-compatible widths, --gguf-compatible)")
    out.append("minillm (load_pruned)")
    return tuple(out)

"""How many heads and channels each layer loses for a target ratio: uniform, a depth schedule, or global ranking.

Pure arithmetic on `ModelGeometry` and score vectors; `planning.build_plan` turns the counts into kept indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minillm_core.errors import PlanError
from minillm_core.groups import channels_to_keep, heads_to_keep
from minillm_core.modeling.base import LayerPlanIndices, LayerShape
from minillm_core.planning import ModelGeometry, PlanConfig, PruningPlan, default_provenance
from minillm_core.scoring.base import GroupScores


@dataclass(frozen=True)
class HeadUnit:
    """The smallest removable piece of attention in a layer under a granularity."""

    granularity: str  # effective: "q-heads" (one head from every KV group) or "kv-groups"
    total: int  # units in the layer
    cost: int  # parameters per unit

    @property
    def max_remove(self) -> int:
        return self.total - 1  # never the last head


@dataclass(frozen=True)
class LayerCut:
    """What one layer loses: head units (in `granularity`) and how many channels it keeps."""

    head_units: int
    granularity: str
    keep_channels: int


def head_unit(shape: LayerShape, geometry: ModelGeometry, granularity: str) -> HeadUnit:
    if granularity == "kv-groups" or shape.n_rep == 1:
        return HeadUnit("kv-groups", shape.num_kv_heads, shape.n_rep * geometry.cost_q + geometry.cost_kv)
    return HeadUnit("q-heads", shape.n_rep, shape.num_kv_heads * geometry.cost_q)


def min_channels(shape: LayerShape, round_to: int) -> int:
    return min(round_to, shape.intermediate) if shape.intermediate >= 1 else 1


def round_channels(keep: float, shape: LayerShape, round_to: int) -> int:
    """Nearest multiple of `round_to` (hardware-friendly), within [min_channels, intermediate]."""
    rounded = round(keep / round_to) * round_to
    return max(min_channels(shape, round_to), min(shape.intermediate, rounded))


def _too_far(config: PlanConfig, geometry: ModelGeometry, protected: tuple[int, ...], max_removed: int) -> PlanError:
    top = max_removed / geometry.total_params
    return PlanError(
        f"cannot remove {config.ratio:.1%} of parameters: with target {config.resolved_target!r}, protected layers "
        f"{list(protected)} and at least one head and {config.round_to} channels per layer, at most {top:.1%} can go "
        f"without removing a whole layer; allowed ratio range: (0, {top:.3f}]"
    )


def _layer_cut(shape: LayerShape, geometry: ModelGeometry, config: PlanConfig, unit: HeadUnit, target: float
               ) -> LayerCut:
    """One layer's cut removing about `target` parameters: heads in the proportion of the layer's fraction
    (LLM-Pruner's uniform rule), channels, being fine-grained, absorb the rest."""
    use_heads, use_channels = config.uses_heads, config.uses_channels
    max_units = unit.max_remove if use_heads else 0
    if not use_channels:  # heads only: the unit count whose total is closest to the target
        k = min(range(0, max_units + 1), key=lambda u: (abs(u * unit.cost - target), -u))
        return LayerCut(k, unit.granularity, shape.intermediate)
    min_keep = min_channels(shape, config.round_to)
    frac = target / geometry.layer_params(shape)
    k = min(max_units, round(frac * unit.total)) if use_heads and config.resolved_target != "channels-first" else 0
    while True:
        keep_exact = shape.intermediate - (target - k * unit.cost) / geometry.cost_channel
        if keep_exact >= min_keep - config.round_to / 2 or k >= max_units:
            break
        k += 1  # channels alone cannot reach the target: take one more head unit
    return LayerCut(k, unit.granularity, round_channels(keep_exact, shape, config.round_to))


def _max_removal(shape: LayerShape, geometry: ModelGeometry, config: PlanConfig, unit: HeadUnit) -> int:
    use_heads, use_channels = config.uses_heads, config.uses_channels
    min_keep = min_channels(shape, config.round_to) if use_channels else shape.intermediate
    return (unit.max_remove if use_heads else 0) * unit.cost + (shape.intermediate - min_keep) * geometry.cost_channel


def _spread(weights: dict[int, float], caps: dict[int, float], total: float) -> dict[int, float]:
    """Split `total` over layers in proportion to `weights`, no layer above its cap (the excess goes to the others)."""
    share, free = dict.fromkeys(weights, 0.0), dict(weights)
    left = total
    while left > 1e-9 * max(total, 1.0) and free:
        scale = left / sum(free.values())
        over = {i for i, w in free.items() if share[i] + w * scale >= caps[i]}
        if not over:
            for i, w in free.items():
                share[i] += w * scale
            break
        for i in over:
            left -= caps[i] - share[i]
            share[i] = caps[i]
            del free[i]
    return share


#: The schedule allocation's last prunable layer loses this many times the first one's fraction (SlimGPT's
#: log-increasing default: 6.25% -> 25% for a 20% target over 32 layers).
SCHEDULE_SPAN = 4.0


def schedule_weights(prunable: list[int]) -> dict[int, float]:
    """Relative removal fractions rising with depth: 1 + (SPAN - 1) log(1 + j) / log(n) for the j-th prunable layer."""
    n = len(prunable)
    if n == 1:
        return {prunable[0]: 1.0}
    return {i: 1.0 + (SCHEDULE_SPAN - 1.0) * math.log1p(j) / math.log(n) for j, i in enumerate(prunable)}


def layered_cuts(geometry: ModelGeometry, config: PlanConfig) -> list[LayerCut]:
    """Per-layer cuts from a fixed rule: `uniform` (the same fraction everywhere) or `schedule` (rising with depth).

    Each unprotected layer gets a share of the target proportional to its weight times its size, capped at what it
    can lose (one head and `round_to` channels stay); widths are rounded per layer.
    """
    protected = config.protected(geometry.num_layers)
    prunable = [i for i in range(geometry.num_layers) if i not in protected]
    if not prunable:
        raise PlanError("every layer is protected; unprotect some layers to prune")
    units = {i: head_unit(geometry.layers[i], geometry, config.head_granularity) for i in prunable}
    caps = {i: float(_max_removal(geometry.layers[i], geometry, config, units[i])) for i in prunable}
    target = config.ratio * geometry.total_params
    if target > sum(caps.values()):
        raise _too_far(config, geometry, protected, int(sum(caps.values())))
    if config.allocation == "uniform":
        shape = geometry.layers[prunable[0]]
        if any(geometry.layers[i] != shape for i in prunable):
            raise PlanError("uniform allocation needs equal layer widths; use allocation 'global' for this model")
        if config.target == "heads":  # heads only: the unit count whose total is closest to the target, everywhere
            unit = units[prunable[0]]
            k = min(range(1, unit.max_remove + 1), key=lambda u: abs(len(prunable) * u * unit.cost - target))
            targets = dict.fromkeys(prunable, float(k * unit.cost))
        else:
            targets = dict.fromkeys(prunable, target / len(prunable))
    else:
        rel = schedule_weights(prunable)
        weights = {i: rel[i] * geometry.layer_params(geometry.layers[i]) for i in prunable}
        targets = _spread(weights, caps, target)
    return cuts_for_targets(geometry, config, targets)


def cuts_for_targets(geometry: ModelGeometry, config: PlanConfig, targets: dict[int, float]) -> list[LayerCut]:
    """Per-layer cuts removing about `targets[i]` parameters from layer i (nothing from layers not named)."""
    cuts = []
    for i, shape in enumerate(geometry.layers):
        unit = head_unit(shape, geometry, config.head_granularity)
        cuts.append(_layer_cut(shape, geometry, config, unit, targets[i]) if targets.get(i)
                    else LayerCut(0, unit.granularity, shape.intermediate))
    return cuts


def removal_caps(geometry: ModelGeometry, config: PlanConfig) -> dict[int, int]:
    """The most parameters each unprotected layer can lose (one head unit and `round_to` channels stay)."""
    protected = config.protected(geometry.num_layers)
    return {i: _max_removal(s, geometry, config, head_unit(s, geometry, config.head_granularity))
            for i, s in enumerate(geometry.layers) if i not in protected}


def _zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-layer standardisation (FLAP's global ranking): scores become comparable across layers."""
    x = x.double()
    std = x.std() if x.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
    return (x - x.mean()) / (std if std > 0 else 1.0)


def _head_round_scores(z: torch.Tensor, shape: LayerShape, unit: HeadUnit) -> torch.Tensor:
    """Score of removing 1, 2, ... head units (nondecreasing), from standardised per-head scores."""
    per_group = z.reshape(shape.num_kv_heads, shape.n_rep)
    if unit.granularity == "q-heads":
        return per_group.sort(dim=1).values.mean(dim=0)[: unit.max_remove]
    return per_group.mean(dim=1).sort().values[: unit.max_remove]


def global_cuts(geometry: ModelGeometry, config: PlanConfig, scores: GroupScores) -> list[LayerCut]:
    """Remove the globally least important units (z-scored within each layer) until the target is met."""
    protected = config.protected(geometry.num_layers)
    use_heads, use_channels = config.uses_heads, config.uses_channels
    z_all, cost_all, layer_all, kind_all = [], [], [], []
    units = [head_unit(s, geometry, config.head_granularity) for s in geometry.layers]
    for i, shape in enumerate(geometry.layers):
        if i in protected:
            continue
        if use_heads and units[i].max_remove > 0:
            rounds = _head_round_scores(_zscore(scores.heads[i]), shape, units[i])
            z_all.append(rounds)
            cost_all.append(torch.full_like(rounds, float(units[i].cost)))
            layer_all.append(torch.full((len(rounds),), i))
            kind_all.append(torch.zeros(len(rounds), dtype=torch.long))
        n_ch = shape.intermediate - min_channels(shape, config.round_to) if use_channels else 0
        if n_ch > 0:
            ch = _zscore(scores.channels[i]).sort().values[:n_ch]
            z_all.append(ch)
            cost_all.append(torch.full_like(ch, float(geometry.cost_channel)))
            layer_all.append(torch.full((n_ch,), i))
            kind_all.append(torch.ones(n_ch, dtype=torch.long))
    if not z_all:
        raise _too_far(config, geometry, protected, 0)
    z, cost = torch.cat(z_all), torch.cat(cost_all)
    layer, kind = torch.cat(layer_all), torch.cat(kind_all)
    order = torch.argsort(z, stable=True)
    removed = torch.cumsum(cost[order], 0)
    target = config.ratio * geometry.total_params
    if removed[-1] < target:
        raise _too_far(config, geometry, protected, int(removed[-1]))
    taken = order[: int(torch.searchsorted(removed, torch.tensor(target, dtype=removed.dtype))) + 1]
    head_counts = torch.bincount(layer[taken][kind[taken] == 0], minlength=geometry.num_layers)
    ch_counts = torch.bincount(layer[taken][kind[taken] == 1], minlength=geometry.num_layers)
    return [
        LayerCut(
            int(head_counts[i]),
            units[i].granularity,
            shape.intermediate if ch_counts[i] == 0
            else round_channels(shape.intermediate - int(ch_counts[i]), shape, config.round_to),
        )
        for i, shape in enumerate(geometry.layers)
    ]


def build_plan(
    geometry: ModelGeometry,
    scores: GroupScores,
    config: PlanConfig,
    model_name: str = "",
    provenance: dict | None = None,
    targets: dict[int, float] | None = None,
) -> PruningPlan:
    """Turn group scores into kept heads/channels per layer for `config` (no weights are touched).

    `targets` (layer -> parameters to remove) overrides the allocation rule, e.g. with a searched allocation."""
    if scores.num_layers != geometry.num_layers:
        raise PlanError(f"scores cover {scores.num_layers} layers, the model has {geometry.num_layers}")
    for i, shape in enumerate(geometry.layers):
        if scores.heads[i].numel() != shape.num_heads or scores.channels[i].numel() != shape.intermediate:
            raise PlanError(f"scores for layer {i} do not match its widths; were they computed on another model?")
    bad = sum(int((~torch.isfinite(t)).sum()) for t in (*scores.heads, *scores.channels))
    if bad:  # a ranking of NaN/inf is arbitrary: the model would be cut at random and look fine
        raise PlanError(f"{bad} of the {scores.scorer} scores are NaN or infinite (options "
                        f"{scores.options or 'default'}); the ranking would be arbitrary: change the scorer options")
    if targets is not None:  # explicit per-layer removals (a searched allocation)
        cuts = cuts_for_targets(geometry, config, targets)
    elif config.allocation == "global":
        cuts = global_cuts(geometry, config, scores)
    elif config.allocation == "search":
        raise PlanError("allocation 'search' needs calibration data and the model: use workflow.search_plan "
                        "(minillm prune --allocation search)")
    else:
        cuts = layered_cuts(geometry, config)
    layers = []
    for i, (shape, cut) in enumerate(zip(geometry.layers, cuts, strict=True)):
        heads, kv = heads_to_keep(scores.heads[i], shape, cut.head_units, cut.granularity)
        channels = channels_to_keep(scores.channels[i], cut.keep_channels)
        layers.append(LayerPlanIndices(tuple(heads), tuple(kv), channels))
    shapes = [LayerShape(len(k.heads), len(k.kv_heads), len(k.channels)) for k in layers]
    if shapes == list(geometry.layers):
        raise PlanError(f"ratio {config.ratio:g} removes nothing: it is below the smallest unit a layer can lose "
                        f"(rounding channels to multiples of {config.round_to}); choose a larger ratio")
    return PruningPlan(
        model=model_name,
        model_type=geometry.model_type,
        layers=layers,
        original=list(geometry.layers),
        config=config,
        scorer=scores.scorer,
        original_params=geometry.total_params,
        predicted_params=geometry.params_for(shapes),
        provenance={**default_provenance(), "scorer_options": scores.options, **(provenance or {})},
    )

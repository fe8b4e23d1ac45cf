"""Searched per-layer widths: an evolutionary search over removal levels, fitness = KL divergence to the dense model.

EvoPress (Sieberling et al., 2024) style. Every unprotected layer is cut at one of several removal levels, each
level removing the same number of parameters (`step`), so every candidate removes the same total (the target) and a
mutation moves one level from one layer to another. Each (layer, level) variant is pruned by the scores and
re-fitted once, on the dense model's inputs to that layer, and cached; a candidate is scored by swapping its variants
into the model and measuring the mean per-token KL divergence of its next-token distribution from the dense model's
on held-out calibration rows. A (1 + lambda) loop keeps the best. The search may cut every layer that is not
protected (pass no protected layers to let it decide); it starts from the uniform cut over the layers LLM-Pruner's
rule would not protect. Forward passes only; the cache holds every
variant's weights (about `levels` layers' worth per layer), the price of fitness evaluations that cost one forward.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minillm_core.allocation import build_plan, cuts_for_targets, removal_caps
from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.groups import channels_to_keep, heads_to_keep
from minillm_core.modeling import get_adapter
from minillm_core.modeling.base import LayerPlanIndices
from minillm_core.options import option
from minillm_core.planning import ModelGeometry, PlanConfig, PruningPlan, default_protected_layers
from minillm_core.progress import Progress, no_progress
from minillm_core.reconstruction import ReconstructConfig, refit_layer
from minillm_core.scoring.base import GroupScores
from minillm_core.scoring.engine.forward import eval_mode
from minillm_core.sequential import LayerInput, first_layer_inputs
from minillm_core.surgery import prune_layer


@dataclass(frozen=True)
class SearchConfig:
    """The budget of the allocation search (`allocation="search"`)."""

    generations: int = option(16, "Search generations (each evaluates `offspring` candidates).", min=1, max=1000,
                              cli="search-generations")
    offspring: int = option(8, "Candidates per generation, each one to three level moves from the best so far.",
                            min=1, max=256, cli="search-offspring")
    levels: int = option(4, "Removal levels of a layer at the uniform cut (the step is the uniform cut / levels); "
                         "a layer may go from 0 to 2x that.", min=1, max=16, cli="search-levels")
    held_rows: int = option(4, "Calibration rows held out to measure the KL divergence (not used to re-fit).",
                            min=1, max=256, cli="search-held")
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("generations", "offspring", "levels", "held_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MiniLLMError(f"search {name} must be an integer >= 1, got {value!r}")


def _kept(scores: GroupScores, geometry: ModelGeometry, config: PlanConfig, i: int, removal: float
          ) -> LayerPlanIndices:
    """Layer i's kept units when it loses about `removal` parameters (the scores choose which)."""
    shape = geometry.layers[i]
    cut = cuts_for_targets(geometry, config, {i: removal})[i]
    heads, kv = heads_to_keep(scores.heads[i], shape, cut.head_units, cut.granularity)
    return LayerPlanIndices(tuple(heads), tuple(kv), channels_to_keep(scores.channels[i], cut.keep_channels))


class _Variants:
    """Every (layer, level) variant, pruned by the scores and re-fitted on the dense model's inputs, built once."""

    def __init__(self, model: nn.Module, scores: GroupScores, geometry: ModelGeometry, config: PlanConfig,
                 step: float, max_level: dict[int, int], calibration: torch.Tensor, damping: float,
                 progress: Progress) -> None:
        self.adapter = get_adapter(model)
        self.dense = list(self.adapter.layers())
        self.cache: dict[tuple[int, int], nn.Module] = {}
        xs = first_layer_inputs(model, self.adapter, calibration, ReconstructConfig.batch_size)
        for i in range(geometry.num_layers):
            for level in range(1, max_level.get(i, 0) + 1):
                kept = _kept(scores, geometry, config, i, level * step)
                self.cache[i, level] = self._variant(i, geometry, kept, xs, damping)
            with torch.no_grad():
                xs = [x.advanced(self.dense[i]) for x in xs]
            progress(i + 1, geometry.num_layers, "search: prune and re-fit layer variants")

    def _variant(self, i: int, geometry: ModelGeometry, kept: LayerPlanIndices, xs: list[LayerInput],
                 damping: float) -> nn.Module:
        """A pruned copy of dense layer i, re-fitted on the dense model's inputs `xs` to that layer."""
        self.adapter.replace_layer(i, copy.deepcopy(self.dense[i]))
        try:
            prune_layer(self.adapter, i, kept)  # surgery works on the model's layer i: the copy, for now
            variant = self.adapter.layers()[i]
            refit_layer(self.adapter, geometry.layers[i], self.dense[i], variant, kept, xs, None, damping)
        finally:
            self.adapter.replace_layer(i, self.dense[i])
        return variant

    def install(self, levels: dict[int, int]) -> None:
        for i, level in levels.items():
            self.adapter.replace_layer(i, self.cache[i, level] if level else self.dense[i])

    def restore(self) -> None:
        for i, layer in enumerate(self.dense):
            self.adapter.replace_layer(i, layer)


@torch.no_grad()
def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)


@torch.no_grad()
def _kl(model: nn.Module, ids: torch.Tensor, reference: list[torch.Tensor]) -> float:
    """Mean per-token KL(dense || candidate) over the held rows (one row at a time: one row's logits alive)."""
    total, tokens = 0.0, 0
    for row, ref in zip(ids, reference, strict=True):
        cand = _log_probs(model, row[None])[0]
        total += float((ref.float().exp() * (ref.float() - cand)).sum())
        tokens += cand.shape[0]
    return total / tokens


def _mutate(levels: dict[int, int], max_level: dict[int, int], rng: random.Random) -> dict[int, int]:
    """One to three level moves: one layer loses a level more, another one less (the total stays the same)."""
    child = dict(levels)
    for _ in range(rng.randint(1, 3)):
        up = [i for i in child if child[i] < max_level[i]]
        down = [i for i in child if child[i] > 0]
        if not up or not down:
            break
        i, j = rng.choice(up), rng.choice(down)
        if i != j:
            child[i] += 1
            child[j] -= 1
    return child


def _start(caps: dict[int, int], max_level: dict[int, int], per_layer: int, spared: tuple[int, ...]
           ) -> dict[int, int]:
    """The starting levels: the uniform cut over the searchable layers, except that layers LLM-Pruner's rule would
    protect start untouched (their share goes to the others) when the search may cut them; capped per layer."""
    total = len(caps) * per_layer
    start = [i for i in caps if i not in spared] or list(caps)
    levels = dict.fromkeys(caps, 0)
    for k, i in enumerate(start):
        levels[i] = min(max_level[i], total // len(start) + (k < total % len(start)))
    return levels


def search_plan(model: nn.Module, scores: GroupScores, geometry: ModelGeometry, config: PlanConfig,
                calibration: torch.Tensor, search: SearchConfig = SearchConfig(),
                recon: ReconstructConfig = ReconstructConfig(), model_name: str = "",
                progress: Progress = no_progress) -> PruningPlan:
    """A plan whose per-layer widths were searched for the lowest KL divergence to the dense `model` (see module).

    `calibration` [n, seq]: the last `search.held_rows` rows measure the fitness, the others re-fit the variants.
    The model is left as it was. The plan's provenance records the levels, the fitness curve and the cost.
    """
    if calibration.shape[0] <= search.held_rows:
        raise MiniLLMError(f"the allocation search holds out {search.held_rows} calibration rows to measure the KL "
                           f"divergence and needs more than that; got {calibration.shape[0]}")
    caps = removal_caps(geometry, config)
    target = config.ratio * geometry.total_params
    if not caps or target > sum(caps.values()):
        raise PlanError(f"cannot remove {config.ratio:.1%} of parameters with the protected layers "
                        f"{list(config.protected(geometry.num_layers))}; try a smaller ratio")
    step = target / (len(caps) * search.levels)
    max_level = {i: min(2 * search.levels, math.floor(cap / step)) for i, cap in caps.items()}
    levels = _start(caps, max_level, search.levels, default_protected_layers(geometry.num_layers))
    t0 = time.perf_counter()
    held, fit_rows = calibration[-search.held_rows:], calibration[: -search.held_rows]
    rng = random.Random(search.seed)
    history: list[float] = []
    with eval_mode(model):
        reference = [_log_probs(model, row[None])[0].to(torch.bfloat16) for row in held]
        variants = _Variants(model, scores, geometry, config, step, max_level, fit_rows, recon.damping, progress)
        try:
            missing = len(caps) * search.levels - sum(levels.values())
            while missing > 0:  # put the levels the capped layers could not take where they fit
                room = [i for i in levels if levels[i] < max_level[i]]
                if not room:
                    raise PlanError("the protected layers and width limits cannot absorb the target ratio")
                levels[rng.choice(room)] += 1
                missing -= 1
            variants.install(levels)
            best = _kl(model, held, reference)
            history.append(best)
            for gen in range(search.generations):
                for _ in range(search.offspring):
                    child = _mutate(levels, max_level, rng)
                    variants.install(child)
                    fitness = _kl(model, held, reference)
                    if fitness < best:
                        best, levels = fitness, child
                history.append(best)
                progress(gen + 1, search.generations, "search: generations")
        finally:
            variants.restore()
    targets = {i: level * step for i, level in levels.items()}
    info: dict[str, Any] = {
        "search": {"levels": {str(i): lv for i, lv in sorted(levels.items())}, "step_params": step,
                   "kl_history": history, "evaluations": 1 + search.generations * search.offspring,
                   "seconds": time.perf_counter() - t0, "held_rows": search.held_rows,
                   "generations": search.generations, "offspring": search.offspring, "seed": search.seed}}
    return build_plan(geometry, scores, config, model_name, provenance=info, targets=targets)

"""The score -> plan -> apply steps as one-call functions shared by the CLI, the app and jobs.

Each step takes typed inputs and a progress callback; nothing here prunes a caller's model in place.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from minillm_core.allocation import build_plan
from minillm_core.errors import PlanError
from minillm_core.modeling import get_adapter
from minillm_core.planning import ModelGeometry, PlanConfig, PruningPlan
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring import GroupScores, make_scorer
from minillm_core.surgery import apply_indices, copy_model

logger = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied tensors once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def geometry_of(model: nn.Module) -> ModelGeometry:
    return ModelGeometry.from_model(model, get_adapter(model))


def score(
    model: nn.Module,
    scorer: str,
    calibration: torch.Tensor | None = None,
    progress: Progress = no_progress,
    **options,
) -> GroupScores:
    """Run a registered scorer; scorers that need calibration data refuse to run without it."""
    s = make_scorer(scorer, **options)
    if s.needs_calibration and calibration is None:
        raise PlanError(f"scorer {scorer!r} needs calibration data ({', '.join(sorted(n.value for n in s.needs))})")
    return s.score(model, get_adapter(model), calibration, progress)


def plan(model: nn.Module, scores: GroupScores, config: PlanConfig, model_name: str = "") -> PruningPlan:
    return build_plan(geometry_of(model), scores, config, model_name)


def apply_plan(model: nn.Module, plan: PruningPlan, inplace: bool = False) -> nn.Module:
    """Physically prune (a copy of) `model` to `plan`; the parameter count must equal the plan's prediction."""
    plan.validate(geometry_of(model))
    target = model if inplace else copy_model(model)
    apply_indices(get_adapter(target), plan.layers)
    got = count_params(target)
    if got != plan.predicted_params:  # surgery and the planner disagree: a bug, never the user's fault
        raise AssertionError(f"pruned model has {got} parameters, the plan predicted {plan.predicted_params}")
    target.minillm_plan = plan
    return target

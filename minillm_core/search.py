"""Automatic threshold search: score once, then find the largest pruning ratio whose model still meets a contract.

Bisection (or a sweep) over ratios reuses the scores; every evaluated point is kept as the size-vs-quality curve.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from minillm_core import workflow
from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.evaluation.gates import Contract, load_search, passed  # noqa: F401 (load_search re-exported)
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.planning import PlanConfig
from minillm_core.progress import Progress, no_progress
from minillm_core.scoring import GroupScores


@dataclass
class SearchResult:
    """Every evaluated ratio (the curve) and the largest ratio that met the contract (None if none did)."""

    contract: str
    points: list[dict[str, Any]] = field(default_factory=list)
    best_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | os.PathLike) -> Path:
        """The curve as JSON at `path` (checked, written atomically)."""
        from minillm_core.outputs import check_output_file, write_json_atomic

        return write_json_atomic(check_output_file(path, "search result"), self.to_dict())


class _Evaluator:
    """Evaluates one ratio: plan from the cached scores, prune a copy, measure, check the contract."""

    def __init__(self, model, tokenizer, scores, base, contract, eval_config, progress):
        self.model, self.tokenizer, self.scores = model, tokenizer, scores
        self.base, self.contract, self.eval_config = base, contract, eval_config
        self.progress = progress
        self.original = workflow.evaluate(model, tokenizer, eval_config, progress=progress)  # measured once

    def __call__(self, ratio: float) -> dict[str, Any]:
        plan = workflow.make_plan(self.model, self.scores, replace(self.base, ratio=ratio))
        outcome = workflow.prune_and_evaluate(self.model, self.tokenizer, plan, self.eval_config,
                                              original_metrics=self.original, step=lambda _name: self.progress)
        run = outcome.run
        results = self.contract.check(run.flat())
        return {"ratio": ratio, "removed_fraction": plan.removed_fraction, "params": plan.predicted_params,
                "passed": passed(results), "clauses": [r.to_dict() for r in results], **run.flat()}


def search(
    model: Any,
    tokenizer: Any,
    scores: GroupScores,
    contract: Contract,
    base: PlanConfig | None = None,
    eval_config: EvalConfig | None = None,
    ratios: list[float] | None = None,
    low: float = 0.05,
    high: float = 0.6,
    tolerance: float = 0.02,
    progress: Progress = no_progress,
) -> SearchResult:
    """Largest ratio meeting `contract`: a sweep over `ratios` if given, else bisection on [low, high].

    Bisection assumes quality falls as the ratio grows (true of every metric here up to noise); the sweep does not.
    """
    if not 0 < low < high < 1 or tolerance <= 0:
        raise MiniLLMError(f"need 0 < low < high < 1 and tolerance > 0, got low={low}, high={high}, tol={tolerance}")
    outside = [r for r in ratios or [] if not 0 < r < 1]
    if ratios is not None and (outside or not ratios):
        raise MiniLLMError(f"ratios must be fractions of parameters in (0, 1), got {outside or 'none'}")
    base = base or PlanConfig()
    eval_config = contract.required_eval(eval_config or EvalConfig())
    run = _Evaluator(model, tokenizer, scores, base, contract, eval_config, progress)
    result = SearchResult(contract.name)

    def point(ratio: float) -> dict[str, Any] | None:
        try:
            p = run(ratio)
        except PlanError as exc:  # beyond what the protected layers allow: treat as a failure, record why
            p = {"ratio": ratio, "passed": False, "error": str(exc)}
        result.points.append(p)
        return p

    if ratios:
        for r in sorted(ratios):
            point(r)
    else:
        if not point(low)["passed"]:
            return _finish(result)
        if point(high)["passed"]:
            return _finish(result)
        lo, hi = low, high
        while hi - lo > tolerance:
            mid = round((lo + hi) / 2, 4)
            lo, hi = (mid, hi) if point(mid)["passed"] else (lo, mid)
    return _finish(result)


def _finish(result: SearchResult) -> SearchResult:
    result.points.sort(key=lambda p: p["ratio"])
    ok = [p["ratio"] for p in result.points if p["passed"]]
    result.best_ratio = max(ok) if ok else None
    return result

"""Prune-and-evaluate runs: submit one to its own process, follow and cancel it; list, get, rename, delete, export.

A run is a directory under the runs root (`$MINILLM_RUNS_DIR`, default `./runs`); its `status.json` is its state.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minillm_core.calibration import CalibrationConfig
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.ab import ABConfig, ABResult, result_from_dict
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.reconstruction import ReconstructConfig
from minillm_core.recovery import RecoveryConfig
from minillm_core.runs import compare, process, risk, store, sweep
from minillm_core.runs.compare import (
    comparison_rows,
    comparison_table,
    comparison_tile,
    dense_points,
    headline,
    metric_label,
    pareto_front,
    protocol,
    quality_of,
    run_flat_metrics,
    size_quality_points,
    trend_metrics,
    trend_rows,
)
from minillm_core.runs.files import AB_SUBDIR, GGUF_SUBDIR, MODEL_SUBDIR, RECOVERED_SUBDIR, read_json, write_json
from minillm_core.runs.spec import ALL_TASKS, PPL_DATASETS, RECOVER_STEP, RunSpec, eval_config
from minillm_core.runs.store import RUNS_DIR_ENV, STATES, TERMINAL, Run, RunStatus, runs_root

__all__ = [
    "ALL_TASKS",
    "GGUF_DTYPES",
    "PPL_DATASETS",
    "RECOVER_STEP",
    "RUNS_DIR_ENV",
    "STATES",
    "TERMINAL",
    "ABConfig",
    "ABResult",
    "CalibrationConfig",
    "EvalConfig",
    "ReconstructConfig",
    "RecoveryConfig",
    "Run",
    "RunSpec",
    "RunStatus",
    "ab_results",
    "cancel",
    "check_contract",
    "comparison_rows",
    "comparison_table",
    "comparison_tile",
    "delete",
    "dense_points",
    "eval_config",
    "export_gguf",
    "get",
    "gguf_file",
    "headline",
    "list",
    "loads_with_from_pretrained",
    "loss_curve",
    "metric_label",
    "metrics_csv",
    "metrics_json",
    "pareto_front",
    "perplexity_curve",
    "protocol",
    "quality_of",
    "ratio_risk",
    "read_metrics",
    "read_spec",
    "rename",
    "risk",
    "runs_root",
    "save_ab",
    "side_by_side",
    "size_quality_points",
    "status",
    "submit",
    "sweep",
    "trend_metrics",
    "trend_rows",
    "typical_seconds",
]

logger = logging.getLogger(__name__)
Root = str | os.PathLike | None
GGUF_DTYPES = ("q8_0", "q4_0", "f16", "f32")  # the dashboard's order: the usual deployment choice first


def submit(spec: RunSpec, root: Root = None, start: bool = True) -> str:
    """Create the run's directory (spec + queued status) and start its worker process; returns the run id."""
    if not isinstance(spec, RunSpec):
        raise MiniLLMError(f"submit needs a RunSpec, got {type(spec).__name__}")
    folder = store.create(spec, root)
    if start:
        process.start(folder)
    return folder.name


def status(run_id: str, root: Root = None) -> RunStatus:
    """The run's state and progress; a run whose worker died is reported as failed."""
    return process.status(store.run_dir(run_id, root))


def cancel(run_id: str, root: Root = None, wait_s: float = 5.0) -> RunStatus:
    """Stop the run's worker (its whole process group) and record the run as cancelled; a finished run is kept."""
    return process.cancel(store.run_dir(run_id, root), wait_s)


def get(run_id: str, root: Root = None) -> Run:
    folder = store.run_dir(run_id, root)
    if not folder.is_dir():
        raise MiniLLMError(f"no run {run_id!r} in {folder.parent}")
    return store.record(folder, process.status(folder))


def list(states: Sequence[str] | None = None, root: Root = None) -> list[Run]:
    """Every run under the root, newest first; `states` keeps only runs in those states."""
    found = []
    for folder in store.run_folders(root):
        try:
            st = process.status(folder)
        except MiniLLMError as exc:  # an unreadable status: listed, as failed, so it can be deleted
            st = RunStatus(folder.name, state="failed", error=str(exc))
        found.append(store.record(folder, st))
    found.sort(key=lambda r: r.created, reverse=True)
    return [r for r in found if states is None or r.state in states]


def typical_seconds(model: str, root: Root = None) -> tuple[float, float, float, int] | None:
    """How long finished runs of `model` took here: (median, shortest, longest seconds, number of runs), or None
    before any (the time estimate shown before starting a run or a sweep)."""
    import statistics

    seconds = [r.metrics.get("seconds") for r in list(["done"], root) if r.model == model]
    seconds = [float(s) for s in seconds if isinstance(s, (int, float)) and not isinstance(s, bool)]
    if not seconds:
        return None
    return statistics.median(seconds), min(seconds), max(seconds), len(seconds)


def ratio_risk(model: str, root: Root = None) -> tuple[risk.RiskCurve | None, list[risk.RiskPoint]]:
    """What ratios cost for `model`: the curve a risk band is drawn from (the shipped benchmark for the bundled model,
    else its finished runs) and the finished runs' own points, for the Plan page's ratio slider."""
    finished = list(["done"], root)
    return risk.risk_curve(model, finished), risk.run_points(finished, model)


def rename(run_id: str, name: str, root: Root = None) -> Run:
    get(run_id, root)  # exists
    store.rename(store.run_dir(run_id, root), name)
    return get(run_id, root)


def delete(run_id: str, root: Root = None) -> None:
    """Remove the run's directory (a running run is cancelled first)."""
    run = get(run_id, root)
    if not run.terminal:
        cancel(run_id, root)
    store.remove(store.run_dir(run_id, root))


def read_spec(run_id: str, root: Root = None) -> RunSpec:
    return store.read_spec(store.run_dir(run_id, root))


def side_by_side(a: str, b: str, root: Root = None) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """Runs `a` and `b` compared: their pruned metrics (B against A) and the settings that differ
    (`compare.run_vs_run`); a run without a readable spec (written by an older version) shows "(not recorded)"."""
    specs = []
    for run_id in (a, b):
        try:
            specs.append(read_spec(run_id, root).to_dict())
        except (MiniLLMError, OSError):
            specs.append(None)
    return compare.run_vs_run(get(a, root), get(b, root), *specs)


def read_metrics(run_id: str, root: Root = None) -> dict[str, Any] | None:
    """The run's `metrics.json`, or None before it exists (shared and cached: do not modify it)."""
    return store.read_metrics(store.run_dir(run_id, root))


def loss_curve(run_id: str, root: Root = None) -> list[dict[str, float]]:
    """The LoRA loss curve of the run's recovery: live while it trains, final afterwards; [] without recovery."""
    from minillm_core.recovery import loss_curve as curve_of

    return curve_of(store.run_dir(run_id, root) / RECOVERED_SUBDIR)


def perplexity_curve(run_id: str, root: Root = None) -> list[dict[str, float]]:
    """Perplexity against training tokens measured so far by the run's recovery (`eval_every`): live while it
    trains; [] without recovery or before the first point. The finished curve, from the pruned model to the
    recovered one, is in the run's metrics (`metrics["recovery"]["curve"]`)."""
    from minillm_core.recovery import perplexity_curve as curve_of

    return curve_of(store.run_dir(run_id, root) / RECOVERED_SUBDIR)


def loads_with_from_pretrained(run_id: str, root: Root = None) -> bool:
    """Whether the run's pruned model loads with plain `AutoModelForCausalLM.from_pretrained` (from its manifest)."""
    from minillm_core.io import read_manifest

    return bool(read_manifest(store.run_dir(run_id, root) / MODEL_SUBDIR).get("loads_with_from_pretrained", False))


def metrics_csv(run_ids: Sequence[str], root: Root = None) -> str:
    return compare.metrics_csv([get(i, root) for i in run_ids])


def metrics_json(run_ids: Sequence[str], root: Root = None) -> str:
    return compare.metrics_json([get(i, root) for i in run_ids])


def gguf_file(run_id: str, dtype: str, root: Root = None) -> Path | None:
    """The run's GGUF file in `dtype` if it was written already (`export_gguf`), else None."""
    path = store.run_dir(run_id, root) / GGUF_SUBDIR / f"model-{dtype}.gguf"
    return path if path.is_file() else None


def export_gguf(run_id: str, dtype: str, root: Root = None) -> Path:
    """Write the run's pruned model as a GGUF file for llama.cpp inside the run directory (once per dtype)."""
    from minillm_core import workflow

    if dtype not in GGUF_DTYPES:
        raise MiniLLMError(f"unknown GGUF dtype {dtype!r}; allowed: {', '.join(GGUF_DTYPES)}")
    run = get(run_id, root)
    if run.state != "done" or not run.model_dir:
        raise MiniLLMError(f"run {run_id} has no saved model to export (state {run.state})")
    existing = gguf_file(run_id, dtype, root)
    if existing is not None:
        return existing
    loaded = workflow.load(str(run.model_dir), dtype="float32", device="cpu")
    out = store.run_dir(run_id, root) / GGUF_SUBDIR / f"model-{dtype}.gguf"
    return workflow.export_gguf(loaded, out, workflow.GGUFConfig(dtype=dtype)).path


def save_ab(run_id: str, result: ABResult, root: Root = None) -> Path:
    """Keep an A/B result with its run (`ab/<suite>-<time>.json`, written atomically); returns the file."""
    get(run_id, root)  # exists
    folder = store.run_dir(run_id, root) / AB_SUBDIR
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in result.suite)[:40] or "suite"
    path = folder / f"{name}-{stamp}.json"
    n = 1
    while path.exists():  # two results in the same second keep both
        n += 1
        path = folder / f"{name}-{stamp}-{n}.json"
    return write_json(path, result.to_dict())


def _written(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:  # removed meanwhile: sorts last, then fails to read and is skipped
        return 0, path.name


def ab_results(run_id: str, root: Root = None) -> list[ABResult]:
    """The run's A/B results, newest first: those saved after the run (`save_ab`), then the one its evaluation
    measured. An unreadable file is skipped with a warning (the others still show)."""
    folder = store.run_dir(run_id, root)
    found: list[ABResult] = []
    for path in sorted((folder / AB_SUBDIR).glob("*.json"), key=_written, reverse=True):
        try:
            found.append(result_from_dict(read_json(path)))
        except (OSError, ValueError, MiniLLMError) as exc:
            logger.warning("skipping A/B result %s: %s", path, exc)
    measured = ((read_metrics(run_id, root) or {}).get("details") or {}).get("ab")
    if measured:
        try:
            found.append(result_from_dict(measured))
        except MiniLLMError as exc:
            logger.warning("skipping the A/B result in %s/metrics.json: %s", folder, exc)
    return found


def check_contract(run_id: str, contract: str | os.PathLike, root: Root = None) -> tuple[Any, list[Any], Any]:
    """A quality contract (a file, or a bundled template by name) checked on a finished run's metrics: (the
    contract, its clause results, the A/B result its `ab/` clauses were read from or None). The A/B result is the
    newest one kept with the run for the contract's suite (`prompts`, default facts); a metric the run did not
    measure fails its clause as "not measured"."""
    from minillm_core.evaluation.gates import Contract

    c = Contract.load(contract)
    run = get(run_id, root)
    if run.state != "done":
        raise MiniLLMError(f"run {run_id} has no measurements to check (state {run.state})")
    ab = None
    if c.needs_ab:
        suite = Path(c.prompts or ABConfig().prompts).stem
        ab = next((r for r in ab_results(run_id, root) if r.suite == suite), None)
    return c, c.check(run_flat_metrics(run, ab)), ab

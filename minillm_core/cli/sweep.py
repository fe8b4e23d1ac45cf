"""`minillm sweep`: a grid of pruning runs (scorers x ratios x re-fit), here or on a Ray cluster, resumable."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from minillm_core.cli.app import Bar, DataDirOpt, JsonOpt, app, emit, user_errors
from minillm_core.cli.evaluate import PLAN_SHAPE
from minillm_core.cli.options import Only, config_command
from minillm_core.errors import MiniLLMError
from minillm_core.runs.sweep import SWEEP_RECON
from minillm_core.workflow import CalibrationConfig, EvalConfig, LoadConfig, PlanConfig, ReconstructConfig

REFIT = {"on": (True,), "off": (False,), "both": (True, False)}
#: A sweep's evaluation: WikiText-2 perplexity on 16 windows and KL/agreement to the original; no speed (timings of
#: points that share a machine are not comparable).
SWEEP_EVAL = EvalConfig(limit=16)


def _items(text: str, flag: str, kind: type) -> tuple:
    try:
        values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise MiniLLMError(f"{flag} must be comma-separated {'numbers' if kind is float else 'names'}, "
                           f"got {text!r}") from None
    if not values:
        raise MiniLLMError(f"{flag} is empty")
    return values


@app.command()
@config_command
def sweep(
    scorers: Annotated[str, typer.Option(help="Comma-separated scorers (one score pass each), e.g. flap,obs.")],
    ratios: Annotated[str, typer.Option(help="Comma-separated fractions of all parameters to remove, e.g. 0.1,0.3.")],
    load_config: LoadConfig,
    plan: Annotated[PlanConfig, PLAN_SHAPE],
    calib: CalibrationConfig,
    recon: Annotated[ReconstructConfig, Only("damping", "target", "select")] = SWEEP_RECON,
    evaluation: Annotated[EvalConfig, Only("perplexity", "tasks", "limit", "seq_len")] = SWEEP_EVAL,
    refit: Annotated[str, typer.Option(help="Re-fit the kept weights at every point: on, off, or both (a grid "
                                            "dimension).")] = "on",
    backend: Annotated[str, typer.Option(help="local: points one after the other on this machine; ray: Ray tasks "
                                              "(a local instance, or the cluster at --address).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (ray://HOST:10001 or auto); the runs "
                                                     "directory must be on storage every node shares.")] = None,
    cpus_per_point: Annotated[int | None, typer.Option(help="CPU threads of each score pass and point (Ray reserves "
                                                            "them). Default: all cores with local, 1 with ray; the "
                                                            "same value on both gives the same numbers.")] = None,
    gpus_per_point: Annotated[float, typer.Option(help="GPUs Ray reserves for each score pass and point.")] = 0.0,
    memory_per_point: Annotated[int | None, typer.Option(help="Memory (MB) Ray reserves for each.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Run store the points are written to (default: "
                                                       "$MINILLM_RUNS_DIR, else ./runs).")] = None,
    name: Annotated[str, typer.Option(help="A label for the sweep's runs.")] = "",
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prune and evaluate every point of a grid, each point a run in the run store (the Runs and Compare pages
    show them); one score pass per scorer. Submitting the same sweep again skips the finished points, so an
    interrupted sweep resumes. Exit code 1 when a point failed. Example:
    minillm sweep --scorers flap,obs,wanda-sp --ratios 0.1,0.2,0.3,0.4 --limit 16 --backend ray"""
    from minillm_core.runs.sweep import BACKENDS, Resources, SweepSpec, run_sweep

    with user_errors():
        if backend not in BACKENDS:
            raise MiniLLMError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        if refit not in REFIT:
            raise MiniLLMError(f"unknown --refit {refit!r}; allowed: {', '.join(REFIT)}")
        folder = str(data_dir) if data_dir else None
        spec = SweepSpec(model=load_config.model, scorers=_items(scorers, "--scorers", str),
                         ratios=_items(ratios, "--ratios", float), reconstruct=REFIT[refit], plan=plan, recon=recon,
                         calibration=calib, evaluation=dataclasses.replace(evaluation, data_dir=folder),
                         dtype=load_config.dtype, device=load_config.device, name=name)
        if cpus_per_point is None:
            cpus_per_point = 1 if backend == "ray" else (os.cpu_count() or 1)
        resources = Resources(cpus=cpus_per_point, gpus=gpus_per_point, memory_mb=memory_per_point)
        with Bar(not as_json) as bar:
            result = run_sweep(spec, backend, address, runs_dir, resources, progress=bar)
        emit(as_json, result.to_dict(), lambda: _render(result))
    if any(p["state"] != "done" for p in result.points):
        raise typer.Exit(1)


def _render(result) -> None:
    import pandas as pd

    rows = [{"scorer": p["scorer"], "ratio": p["ratio"], "re-fit": "yes" if p["reconstruct"] else "no",
             "state": p["state"], "params": p["metrics"].get("params"),
             **{k: round(v, 3) for k, v in p["metrics"].items() if k.startswith("ppl/")},
             "run": p["run_id"] or "-", "error": p["error"][:60]} for p in result.points]
    typer.echo(pd.DataFrame(rows).to_string(index=False))
    typer.echo(f"sweep {result.key} ({result.backend}): {len(result.points)} points, {result.skipped} already done, "
               f"{result.seconds:.0f} s")

"""`minillm info`, `scorers`, `score`, `plan` and `prune`: the headless twins of the Model, Importance and Plan pages.

Options come from the config dataclasses (`minillm_core.cli.options`); every step is a `minillm_core.workflow` call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core import workflow
from minillm_core.cli.app import (
    Bar,
    CalibrationRows,
    DataDirOpt,
    JsonOpt,
    app,
    calibration,
    emit,
    load,
    score_model,
    stderr,
    user_errors,
)
from minillm_core.cli.options import config_command
from minillm_core.errors import MiniLLMError
from minillm_core.io import check_output_dir
from minillm_core.workflow import (
    CalibrationConfig,
    LoadConfig,
    PlanConfig,
    ReconstructConfig,
    ScoreConfig,
    SearchConfig,
)


def _print_summary(summary: workflow.PlanSummary) -> None:
    import pandas as pd

    table = pd.DataFrame(summary.rows).set_index("layer")
    typer.echo(table.to_string())
    typer.echo(
        f"parameters {summary.params_before:,} -> {summary.params_after:,} "
        f"(-{summary.removed_fraction:.1%} total, -{summary.removed_fraction_non_embedding:.1%} non-embedding); "
        f"fp32 {summary.size_mb_before['float32']:.1f} -> {summary.size_mb_after['float32']:.1f} MB; "
        f"ideal speed-up x{summary.ideal_speedup:.2f}; "
        f"plain from_pretrained: {'yes' if summary.loads_with_from_pretrained else 'no (use minillm_core.load_pruned)'}"
    )
    typer.echo(f"exports to: {'; '.join(summary.exports_to)}")
    for risk in workflow.plan_risks(summary):
        typer.echo(f"warning: {risk}")


@app.command()
@config_command
def info(load_config: LoadConfig, as_json: JsonOpt = False) -> None:
    """Show a model's architecture: layers, heads, KV heads, hidden and MLP sizes, parameters, size per dtype."""
    with user_errors():
        loaded = load(load_config)
        payload = {"model": load_config.model, "source": loaded.source, **workflow.architecture(loaded.model)}
        emit(as_json, payload, lambda: typer.echo("\n".join(f"{k:>22}: {v}" for k, v in payload.items())))


@app.command()
def scorers(as_json: JsonOpt = False) -> None:
    """List the importance criteria with their default options: what each needs, its engine, and what it does."""
    rows = workflow.describe_scorers()
    emit(as_json, rows, lambda: typer.echo("\n".join(
        f"{n:>12}  [{r['engine']}{', forward-only' if r['forward_only'] and r['engine'] != 'weights' else ''}]  "
        f"{r['description']}"
        for n, r in rows.items())))


def _scored_plan(loaded, score: ScoreConfig, rows: CalibrationRows, plan: PlanConfig, search: SearchConfig,
                 recon: ReconstructConfig, bar: Bar) -> workflow.PruningPlan:
    scores = score_model(loaded, score, rows, bar)
    if plan.allocation == "search":
        stderr(f"searching per-layer widths: {search.generations} generations x {search.offspring} candidates")
        return workflow.search_plan(loaded, scores, plan, rows(), search, recon, progress=bar)
    return workflow.make_plan(loaded, scores, plan)


@app.command("plan")
@config_command
def plan_cmd(
    load_config: LoadConfig,
    score: ScoreConfig,
    plan: PlanConfig,
    calib: CalibrationConfig,
    search: SearchConfig,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the plan JSON here (replayable with `prune --plan`).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the model and preview a pruning plan: per-layer widths, parameters and size before/after."""
    with user_errors():
        loaded = load(load_config)
        with Bar(not as_json) as bar:
            rows = CalibrationRows(loaded, calib, score.seed, data_dir)
            p = _scored_plan(loaded, score, rows, plan, search, ReconstructConfig(), bar)
        summary = workflow.summary_of(p, loaded.model)
        if out is not None:
            p.save(out)
            stderr(f"plan written to {out}")
        emit(as_json, {"plan": str(out) if out else None, "summary": summary.to_dict()},
             lambda: _print_summary(summary))


#: `prune` calibrates on more rows than scoring alone: the re-fit is least squares over them, and more rows fit
#: better (bench/results/quality_calibration.md, 20% of SmolLM2, first 40 windows: 32 rows 123.3, 128 rows 110.4,
#: 512 rows 104.4; 128 rows keep the default pipeline near 2 minutes on this 2-core CPU).
PRUNE_CALIBRATION = CalibrationConfig(n_samples=128)


@app.command()
@config_command
def prune(
    out: Annotated[Path, typer.Option(help="Directory for the pruned model (safetensors, config, tokenizer, plan).")],
    load_config: LoadConfig,
    score: ScoreConfig,
    plan: PlanConfig,
    recon: ReconstructConfig,
    search: SearchConfig,
    calib: CalibrationConfig = PRUNE_CALIBRATION,
    data_dir: DataDirOpt = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Replay a saved plan instead of scoring.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out directory.")] = False,
    out_of_core: Annotated[bool, typer.Option(
        help="Never hold the whole model: read, prune, re-fit and write one decoder layer at a time from the "
             "safetensors files (a model bigger than memory). Widths from the ratio (uniform or schedule "
             "allocation), units chosen by OBS per layer (the scorer is not used); the layer being processed is on "
             "the GPU when --device is auto or cuda and one is present.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Physically remove heads and channels and save a smaller dense model.

    Example: minillm prune --model smollm2-135m --scorer flap --ratio 0.2 --out runs/demo
    """
    if out_of_core:
        return _prune_out_of_core(out, load_config, plan, recon, calib, score.seed, data_dir, overwrite, as_json)
    with user_errors():
        check_output_dir(out, overwrite)  # before minutes of work, not after
        loaded = load(load_config)
        with Bar(not as_json) as bar:
            rows = CalibrationRows(loaded, calib, score.seed, data_dir)
            p = workflow.PruningPlan.load(plan_file) if plan_file else _scored_plan(
                loaded, score, rows, plan, search, recon, bar)
            summary = workflow.summary_of(p, loaded.model)
            t0 = time.perf_counter()
            report = None
            if recon.enabled:  # pruned in place one layer at a time: about one model's memory
                pruned, p, report = workflow.prune_and_reconstruct(loaded.model, p, rows(), recon, inplace=True,
                                                                   progress=bar)
            else:
                pruned = workflow.prune(loaded.model, p, inplace=True)
        workflow.save(pruned, loaded.tokenizer, out, plan=p, overwrite=overwrite)
        payload = {"out": str(out), "params_before": summary.params_before, "reconstruction": report,
                   "params_after": workflow.count_params(pruned), "removed_fraction": summary.removed_fraction,
                   "removed_fraction_non_embedding": summary.removed_fraction_non_embedding,
                   "loads_with_from_pretrained": summary.loads_with_from_pretrained, "exports_to": summary.exports_to,
                   "seconds": round(time.perf_counter() - t0, 3)}
        emit(as_json, payload, lambda: (_print_summary(summary), typer.echo(f"saved to {out}")))


def _prune_out_of_core(out: Path, load_config: LoadConfig, plan: PlanConfig, recon: ReconstructConfig,
                       calib: CalibrationConfig, seed: int, data_dir: Path | None, overwrite: bool,
                       as_json: bool) -> None:
    from minillm_core.streamed import prune_streamed, streamable

    with user_errors():
        calib = calibration(calib, seed)
        streamable(plan, recon, calib)
        check_output_dir(out, overwrite)
        if load_config.dtype not in ("auto", "float32"):
            raise MiniLLMError("out-of-core pruning runs in float32 (--dtype auto or float32); on CUDA the layer "
                               "being processed is on the GPU (--device)")
        source = workflow.model_dir_of(load_config.model)
        if source is None:
            raise MiniLLMError(f"out-of-core pruning reads a local model directory; download {load_config.model} "
                               "first (huggingface-cli download) and pass its folder")
        t0 = time.perf_counter()
        with Bar(not as_json) as bar:
            _, report = prune_streamed(source, out, plan, calib, recon, data_dir, overwrite=overwrite,
                                       progress=bar, device=load_config.device)
        payload = {"out": str(out), "out_of_core": True, **report,
                   "removed_fraction": 1 - report["params_after"] / report["params_before"],
                   "seconds": round(time.perf_counter() - t0, 3)}
        emit(as_json, payload, lambda: typer.echo(
            f"parameters {report['params_before']:,} -> {report['params_after']:,} "
            f"(-{payload['removed_fraction']:.1%}), {report['shards']} shards; saved to {out}"))


@app.command("score")
@config_command
def score_cmd(
    load_config: LoadConfig,
    calib: CalibrationConfig,
    score: ScoreConfig = ScoreConfig("minillm"),  # noqa: B008 (a config default, read by the option generator)
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Save the group scores (safetensors) for `plan`/the dashboard.")]
    = None,
    diagnose: Annotated[bool, typer.Option(
        help="Fidelity diagnostic: compare against exact FMS (minillm estimator exact-layerwise): cosine similarity "
             "and per-layer Spearman rank correlation; forward-only minillm estimators are also swept over --probes.")]
    = False,
    probes: Annotated[str, typer.Option(help="Probe counts for --diagnose.")] = "4,16,64",
    as_json: JsonOpt = False,
) -> None:
    """Score heads and MLP channels. minillm estimators: spsa (the paper's weight-space SPSA) and gates are
    forward-only; exact-layerwise (default: exact gradient one decoder layer at a time, near-inference memory),
    exact-backprop and exact-gates use backprop. Example:
    minillm score --scorer minillm -o estimator=spsa -o n_probes=8 --diagnose"""
    with user_errors():
        try:
            counts = tuple(int(p) for p in probes.split(","))
        except ValueError:
            raise MiniLLMError(f"--probes must be comma-separated integers, got {probes!r}") from None
        loaded = load(load_config)
        with Bar(not as_json) as bar:
            t0 = time.perf_counter()
            scores = score_model(loaded, score, CalibrationRows(loaded, calib, score.seed, data_dir), bar)
            payload: dict[str, Any] = {"scorer": score.scorer, "options": scores.options,
                                       "seconds": round(time.perf_counter() - t0, 2),
                                       "per_layer_head_mean": [float(h.mean()) for h in scores.heads],
                                       "per_layer_channel_mean": [float(c.mean()) for c in scores.channels]}
            if diagnose:
                payload |= workflow.diagnose(loaded, scores, score, calibration(calib, score.seed), counts, data_dir,
                                             bar)
        if out is not None:
            scores.save(out)
        emit(as_json, payload, lambda: _render_scores(payload))


def _render_scores(payload: dict[str, Any]) -> None:
    typer.echo(f"{payload['scorer']} {payload['options']} in {payload['seconds']} s")
    for i, (h, c) in enumerate(zip(payload["per_layer_head_mean"], payload["per_layer_channel_mean"], strict=True)):
        typer.echo(f"layer {i:>3}: mean head score {h:.4g}, mean channel score {c:.4g}")
    if "fidelity" in payload:
        typer.echo("fidelity vs backprop FMS: " + ", ".join(f"{k} {v:.3f}" for k, v in payload["fidelity"].items()
                                                          if isinstance(v, float)))
    for row in payload.get("probe_sweep", []):
        typer.echo(f"  {row['n_probes']:>3} probes: cosine {row['cosine']:.3f}, Spearman heads "
                   f"{row['mean_spearman_heads']:.3f}, channels {row['mean_spearman_channels']:.3f} "
                   f"({row['seconds']:.1f} s)")

"""`minillm eval`, `check` and `search`: evaluation, quality gates and threshold search from the command line.

Registered on the app of `minillm_core.cli`; results go to a run directory in the `minillm.run/1` schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core.cli import (
    DEFAULT_SCORER,
    AllocationOpt,
    Calib,
    CalibFileOpt,
    CalibLenOpt,
    CalibOpt,
    DataDirOpt,
    DeviceOpt,
    DtypeOpt,
    GranularityOpt,
    JsonOpt,
    ModelOpt,
    NSamplesOpt,
    OptionOpt,
    ProtectOpt,
    RoundOpt,
    ScorerOpt,
    SeedOpt,
    TargetOpt,
    _Bar,
    _calibration_of,
    _emit,
    _load,
    _plan_config,
    _score_model,
    _stderr,
    _user_errors,
    app,
)
from minillm_core.errors import MiniLLMError

PplOpt = Annotated[list[str] | None, typer.Option(
    "--ppl", help="Perplexity set(s): wikitext2 (test), ptb (validation, the LLM-Pruner protocol). Repeatable.")]
TasksOpt = Annotated[str | None, typer.Option(
    help="Zero-shot tasks, comma-separated, or 'all' for boolq, piqa, hellaswag, winogrande, arc_easy, "
         "arc_challenge, openbookqa (lm-eval prompts, acc and acc_norm).")]
LimitOpt = Annotated[int | None, typer.Option(help="Quick runs: at most N perplexity windows and N items per task.")]
TaskSeedOpt = Annotated[int | None, typer.Option(help="With --limit: a seeded random subset of items instead of the "
                                                      "first N (lm-eval's --limit takes the first N).")]
SeqLenOpt = Annotated[int, typer.Option(help="Perplexity window: 128 (LLM-Pruner/FLAP/MINI-LLM tables) or 2048 "
                                             "(Wanda/SliceGPT).")]
CompareOpt = Annotated[str | None, typer.Option(
    help="The original model (name, path or Hub id): adds KL divergence, top-1 agreement, retained % and speed-ups.")]
RunDirOpt = Annotated[Path | None, typer.Option(help="Write metrics.json (schema minillm.run/1), metrics.csv and "
                                                     "lm-eval JSON files here.")]


def _tasks(value: str | None) -> tuple[str, ...]:
    from minillm_core.evaluation.tasks import ALL_TASKS

    if not value:
        return ()
    return ALL_TASKS if value.strip() == "all" else tuple(t.strip() for t in value.split(",") if t.strip())


def _eval_config(ppl, tasks, limit, task_seed, speed, seq_len, batch_size, data_dir):
    from minillm_core.evaluation.suite import EvalConfig

    return EvalConfig(perplexity=tuple(ppl) if ppl is not None else ("wikitext2",), seq_len=seq_len,
                      tasks=_tasks(tasks), limit=limit, task_seed=task_seed, speed=speed, batch_size=batch_size,
                      data_dir=str(data_dir) if data_dir else None)


def _render_metrics(payload: dict[str, Any]) -> None:
    import pandas as pd

    if "original" in payload:
        rows = {k: {"original": payload["original"].get(k), "pruned": v, "retained": payload["retained"].get(k)}
                for k, v in payload["pruned"].items()}
        typer.echo(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:,.4g}"))
        typer.echo("\n".join(f"{k}: {v:.4g}" for k, v in payload["comparison"].items()))
    else:
        typer.echo("\n".join(f"{k:>28}: {v:,.4g}" for k, v in payload["metrics"].items()))


def _memory(model: str, dtype: str, device: str) -> dict[str, float]:
    """Peak memory at load and during a forward pass, from a fresh process (nothing else counted)."""
    from minillm_core.evaluation.speed import measure_memory_fresh

    _stderr(f"measuring peak memory of {model} in a fresh process ...")
    return measure_memory_fresh(model, dtype, device)


def _pair(model: str, compare_to: str, config, dtype: str, device: str, bar):
    from minillm_core.evaluation.suite import evaluate_pair
    from minillm_core.loading import resolve_source

    pruned = _load(model, dtype, device)
    original = _load(compare_to, dtype, device)
    src, orig_src = resolve_source(model), resolve_source(compare_to)
    run = evaluate_pair(original.model, pruned.model, pruned.tokenizer, config, model_name=model,
                        pruned_dir=src if isinstance(src, Path) else None,
                        original_dir=orig_src if isinstance(orig_src, Path) else None, progress=bar)
    if config.speed:
        run.pruned |= _memory(model, dtype, device)
        run.original |= _memory(compare_to, dtype, device)
    return run


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "smollm2-135m",
    ppl: PplOpt = None,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    task_seed: TaskSeedOpt = None,
    speed: Annotated[bool, typer.Option(help="Measure prefill latency and decode tokens/s at batch 1 and 8 "
                                             "(medians after warm-up) and peak memory.")] = False,
    compare_to: CompareOpt = None,
    seq_len: SeqLenOpt = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    text: Annotated[Path | None, typer.Option(help="Also measure perplexity on this UTF-8 text file.")] = None,
    data_dir: DataDirOpt = None,
    run_dir: RunDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Measure perplexity (paper protocol), zero-shot accuracy, speed and size; with --compare-to, also KL,
    top-1 agreement, retained % and measured speed-ups against the original."""
    from minillm_core.evaluation.perplexity import perplexity
    from minillm_core.evaluation.suite import evaluate
    from minillm_core.loading import resolve_source

    with _user_errors():
        config = _eval_config(ppl if ppl is not None or text is None else [], tasks, limit, task_seed, speed,
                              seq_len, batch_size, data_dir)
        with _Bar(not as_json) as bar:
            if compare_to:
                run = _pair(model, compare_to, config, dtype, device, bar)
                payload = run.to_dict()
                if run_dir:
                    run.write(run_dir)
            else:
                loaded = _load(model, dtype, device)
                src = resolve_source(model)
                metrics, details = evaluate(loaded.model, loaded.tokenizer, config,
                                            src if isinstance(src, Path) else None, progress=bar)
                if speed:
                    metrics |= _memory(model, dtype, device)
                payload = {"model": model, "metrics": metrics, "perplexity": details["perplexity"],
                           "lm_eval": details.get("lm_eval")}
                if text is not None:
                    try:
                        content = text.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as exc:
                        raise MiniLLMError(f"cannot read --text {text}: {exc}") from None
                    r = perplexity(loaded.model, loaded.tokenizer, content, seq_len=seq_len, batch_size=batch_size,
                                   limit=limit, progress=lambda d, t, _l: bar(d, t, "ppl text"))
                    payload["perplexity"]["text"] = r.to_dict()
                    payload["metrics"]["ppl/text"] = r.ppl
                if run_dir:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=1, default=str))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
        _emit(as_json, payload, lambda: _render_metrics(payload))


@app.command()
def check(
    contract: Annotated[Path, typer.Option(help="Quality contract (YAML or JSON): clauses of metric + min/max, e.g. "
                                                "retained/ppl/wikitext2 max 1.3; see README.")],
    model: ModelOpt = "smollm2-135m",
    compare_to: CompareOpt = "smollm2-135m",
    limit: LimitOpt = None,
    task_seed: TaskSeedOpt = None,
    seq_len: SeqLenOpt = 128,
    data_dir: DataDirOpt = None,
    run_dir: RunDirOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Check a pruned model against a quality contract: prints each clause with its measured value and exits 1 if
    any fails (2 on bad input), so a team can put it in CI."""
    from minillm_core.evaluation.gates import Contract, passed

    with _user_errors():
        c = Contract.load(contract)
        config = c.required_eval(_eval_config([], None, limit, task_seed, False, seq_len, 8, data_dir))
        with _Bar(not as_json) as bar:
            run = _pair(model, compare_to, config, dtype, device, bar)
        if run_dir:
            run.write(run_dir)
        results = c.check(run.flat())
        ok = passed(results)
        payload = {"contract": c.name, "passed": ok, "clauses": [r.to_dict() for r in results]}
        _emit(as_json, payload, lambda: typer.echo("\n".join(
            f"{'PASS' if r.passed else 'FAIL'}  {r.clause.describe():<45} measured "
            f"{'not measured' if r.value is None else f'{r.value:.4g}'}" for r in results)
            + f"\ncontract {c.name}: {'passed' if ok else 'FAILED'}"))
    if not ok:
        raise typer.Exit(1)


@app.command()
def search(
    contract: Annotated[Path, typer.Option(help="Quality contract the pruned model must meet (YAML or JSON).")],
    model: ModelOpt = "smollm2-135m",
    scorer: ScorerOpt = DEFAULT_SCORER,
    ratios: Annotated[str | None, typer.Option(help="Sweep these comma-separated ratios instead of bisecting.")] = None,
    low: Annotated[float, typer.Option(help="Bisection: smallest ratio tried.")] = 0.05,
    high: Annotated[float, typer.Option(help="Bisection: largest ratio tried.")] = 0.6,
    tolerance: Annotated[float, typer.Option(help="Bisection stops when the bracket is this narrow.")] = 0.02,
    allocation: AllocationOpt = "uniform",
    protect: ProtectOpt = None,
    target: TargetOpt = "both",
    head_granularity: GranularityOpt = "q-heads",
    round_to: RoundOpt = 8,
    seed: SeedOpt = 0,
    option: OptionOpt = None,
    calib: CalibOpt = "c4",
    calib_file: CalibFileOpt = None,
    n_samples: NSamplesOpt = 32,
    calib_seq_len: CalibLenOpt = 128,
    limit: LimitOpt = None,
    seq_len: SeqLenOpt = 128,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the search curve JSON here (the dashboard plots it).")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score once, then find the largest pruning ratio whose model still meets the contract; records the whole
    size-vs-quality curve (ratio, parameters, perplexity, accuracy, speed)."""
    from minillm_core.evaluation.gates import Contract
    from minillm_core.search import search as run_search

    with _user_errors():
        c = Contract.load(contract)
        base = _plan_config(0.5, allocation, protect, target, head_granularity, round_to)
        try:
            grid = [float(r) for r in ratios.split(",")] if ratios else None
        except ValueError:
            raise MiniLLMError(f"--ratios must be comma-separated numbers, got {ratios!r}") from None
        loaded = _load(model, dtype, device)
        with _Bar(not as_json) as bar:
            scores = _score_model(loaded, scorer, seed, option,
                                  Calib(calib, calib_file, n_samples, calib_seq_len, data_dir), bar)
            result = run_search(loaded.model, loaded.tokenizer, scores, c, base,
                                _eval_config([], None, limit, None, False, seq_len, 8, data_dir),
                                ratios=grid, low=low, high=high, tolerance=tolerance, progress=bar)
        if out:
            result.write(out)
        payload = result.to_dict()
        _emit(as_json, payload, lambda: typer.echo("\n".join(
            f"ratio {p['ratio']:.3f}: {'PASS' if p['passed'] else 'fail'}  "
            + ", ".join(f"{k}={v:.4g}" for k, v in p.items() if k.startswith(("ppl/", "retained/ppl", "acc/average")))
            for p in result.points) + f"\nlargest passing ratio: {result.best_ratio}"))


@app.command("score")
def score_cmd(
    model: ModelOpt = "smollm2-135m",
    scorer: ScorerOpt = "minillm",
    seed: SeedOpt = 0,
    option: OptionOpt = None,
    calib: CalibOpt = "c4",
    calib_file: CalibFileOpt = None,
    n_samples: NSamplesOpt = 32,
    calib_seq_len: CalibLenOpt = 128,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Save the group scores (safetensors) for `plan`/the dashboard.")]
    = None,
    diagnose: Annotated[bool, typer.Option(
        help="Fidelity diagnostic: compare against exact FMS (minillm estimator exact-layerwise): cosine similarity "
             "and per-layer Spearman rank correlation; forward-only minillm estimators are also swept over --probes.")]
    = False,
    probes: Annotated[str, typer.Option(help="Probe counts for --diagnose.")] = "4,16,64",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score heads and MLP channels. minillm estimators: spsa (the paper's weight-space SPSA) and gates are
    forward-only; exact-layerwise (default: exact gradient one decoder layer at a time, near-inference memory),
    exact-backprop and exact-gates use backprop. Example:
    minillm score --scorer minillm -o estimator=spsa -o n_probes=8 --diagnose"""
    import time

    from minillm_core.scoring.estimators import forward_only_estimators
    from minillm_core.scoring.fidelity import fidelity, probe_sweep

    with _user_errors():
        try:
            counts = tuple(int(p) for p in probes.split(","))
        except ValueError:
            raise MiniLLMError(f"--probes must be comma-separated integers, got {probes!r}") from None
        loaded = _load(model, dtype, device)
        calib_opts = Calib(calib, calib_file, n_samples, calib_seq_len, data_dir)
        with _Bar(not as_json) as bar:
            t0 = time.perf_counter()
            scores = _score_model(loaded, scorer, seed, option, calib_opts, bar)
            seconds = time.perf_counter() - t0
            payload: dict[str, Any] = {"scorer": scorer, "options": scores.options, "seconds": round(seconds, 2),
                                       "per_layer_head_mean": [float(h.mean()) for h in scores.heads],
                                       "per_layer_channel_mean": [float(c.mean()) for c in scores.channels]}
            if diagnose:
                reference = _score_model(loaded, "minillm", seed, ["estimator=exact-layerwise"], calib_opts, bar)
                payload["fidelity"] = {k: v for k, v in fidelity(scores, reference).items()
                                       if not isinstance(v, list)}
                if scorer == "minillm" and scores.options.get("estimator") in forward_only_estimators():
                    calibration = _calibration_of(loaded, seed, calib_opts)
                    payload["probe_sweep"] = probe_sweep(
                        loaded.model, loaded.adapter, calibration, reference, probes=counts, progress=bar,
                        **{k: v for k, v in scores.options.items() if k != "n_probes"})
        if out is not None:
            scores.save(out)
        _emit(as_json, payload, lambda: _render_scores(payload))


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

"""`minillm eval`, `check` and `search`: evaluation, quality gates and threshold search from the command line.

Results go to a run directory in the `minillm.run/1` schema; options come from `EvalConfig` and `PlanConfig`.
"""

from __future__ import annotations

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
    emit,
    load,
    score_model,
    stderr,
    user_errors,
)
from minillm_core.cli.options import Only, config_command
from minillm_core.errors import MiniLLMError
from minillm_core.outputs import check_output_file
from minillm_core.runs.files import write_json
from minillm_core.workflow import (
    CalibrationConfig,
    EvalConfig,
    LlamaCppConfig,
    LoadConfig,
    PlacementConfig,
    PlanConfig,
    ScoreConfig,
)

CompareOpt = Annotated[str | None, typer.Option(
    help="The original model (name, path or Hub id): adds KL divergence, top-1 agreement, retained % and speed-ups.")]
RunDirOpt = Annotated[Path | None, typer.Option(help="Write metrics.json (schema minillm.run/1), metrics.csv and "
                                                     "lm-eval JSON files here.")]
ContractOpt = Annotated[Path, typer.Option(help="Quality contract (YAML or JSON): clauses of metric + min/max, e.g. "
                                                "retained/ppl/wikitext2 max 1.3; see README.")]
PromptsOpt = Annotated[str | None, typer.Option(
    help="A/B prompt suite for the contract's ab/ clauses (bundled name or file); overrides the contract's 'prompts'.")]
#: `check` and `search` measure what the contract names: no perplexity set unless a clause needs one.
CONTRACT_EVAL = EvalConfig(perplexity=())
ENGINES = ("torch", "llamacpp")
PLAN_SHAPE = Only("allocation", "protected_layers", "target", "head_granularity", "round_to")


def _with_data(config: EvalConfig, data_dir: Path | None) -> EvalConfig:
    import dataclasses

    return dataclasses.replace(config, data_dir=str(data_dir) if data_dir else None)


def _contract_eval(contract: Any, evaluation: EvalConfig, data_dir: Path | None, prompts: str | None) -> EvalConfig:
    """What `check`/`search` measure: the contract's metrics, on the A/B suite `--prompts` names if given."""
    import dataclasses

    base = _with_data(evaluation, data_dir)
    if prompts is not None:
        base = dataclasses.replace(base, ab=workflow.ABConfig(prompts=prompts))
    return contract.required_eval(base)


def _render_metrics(payload: dict[str, Any]) -> None:
    import pandas as pd

    if "original" in payload:
        rows = {k: {"original": payload["original"].get(k), "pruned": v, "retained": payload["retained"].get(k)}
                for k, v in payload["pruned"].items()}
        typer.echo(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:,.4g}"))
        typer.echo("\n".join(f"{k}: {v:.4g}" for k, v in payload["comparison"].items()))
    else:
        typer.echo("\n".join(f"{k:>28}: {v:,.4g}" for k, v in payload["metrics"].items()))


def _pair(load_config: LoadConfig, compare_to: str, config: EvalConfig, bar: Bar,
          placement: PlacementConfig | None = None) -> workflow.RunMetrics:
    """Evaluate `load_config.model` against the original `compare_to` (loaded with the same dtype and device, or
    both spread by the same `placement`)."""
    import dataclasses

    pruned = load(load_config, placement)
    original = load(dataclasses.replace(load_config, model=compare_to), placement)
    workflow.check_same_tokenizer(original.tokenizer, pruned.tokenizer, original.model, pruned.model)
    run = workflow.evaluate_pair(original.model, pruned.model, pruned.tokenizer, config, model_name=load_config.model,
                                 pruned_dir=workflow.model_dir_of(load_config.model),
                                 original_dir=workflow.model_dir_of(compare_to), progress=bar)
    if config.speed:
        for which, name in ((run.pruned, load_config.model), (run.original, compare_to)):
            stderr(f"measuring peak memory of {name} in a fresh process ...")
            which |= workflow.measure_memory(name, load_config.dtype, load_config.device)
    return run


def _single(load_config: LoadConfig, config: EvalConfig, text: Path | None, bar: Bar,
            placement: PlacementConfig | None = None) -> dict[str, Any]:
    loaded = load(load_config, placement)
    metrics, details = workflow.evaluate(loaded.model, loaded.tokenizer, config,
                                         workflow.model_dir_of(load_config.model), progress=bar)
    if config.speed:
        stderr(f"measuring peak memory of {load_config.model} in a fresh process ...")
        metrics |= workflow.measure_memory(load_config.model, load_config.dtype, load_config.device)
    payload = {"model": load_config.model, "metrics": metrics, "perplexity": details["perplexity"],
               "lm_eval": details.get("lm_eval")}
    if text is not None:
        try:
            content = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MiniLLMError(f"cannot read --text {text}: {exc}") from None
        r = workflow.perplexity_of_text(loaded, content, config, lambda d, t, _l: bar(d, t, "ppl text"))
        payload["perplexity"]["text"] = r.to_dict()
        payload["metrics"]["ppl/text"] = r.ppl
    return payload


def _defaulted(ctx: typer.Context, param: str) -> bool:
    """True when the user did not pass `param` (click's parameter source; typer may ship its own click)."""
    source = ctx.get_parameter_source(param)
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def _check_outputs(out: Path | None = None, run_dir: Path | None = None) -> None:
    """Refuse unwritable result paths before minutes of evaluation, not after."""
    if out is not None:
        check_output_file(out, "--out")
    if run_dir is not None:
        check_output_file(run_dir / "metrics.json", "--run-dir")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """A result file (checked, then temp + os.replace: a reader never sees half a file)."""
    write_json(check_output_file(path), payload)


def _llamacpp(load_config: LoadConfig, compare_to: str | None, config: EvalConfig, engine: LlamaCppConfig,
              bar: Bar) -> dict[str, Any]:
    """`eval --engine llamacpp`: the model (and the original) measured in llama.cpp, exported to GGUF first."""
    import tempfile

    models = {"pruned": load_config.model, "original": compare_to} if compare_to else {"model": load_config.model}
    with tempfile.TemporaryDirectory(prefix="minillm-gguf-") as tmp:
        results = workflow.evaluate_llamacpp(models, config, engine, tmp, progress=bar)
    payload: dict[str, Any] = {"engine": "llamacpp", "limit": config.limit, "seq_len": config.seq_len,
                               "models": results}
    if compare_to:
        payload["speedup"] = {k.removeprefix("llamacpp/decode_tps/"): v / results["original"][k]
                              for k, v in results["pruned"].items() if k.startswith("llamacpp/decode_tps/")}
    return payload


def _render_llamacpp(payload: dict[str, Any]) -> None:
    import pandas as pd

    table = pd.DataFrame({label: {k: v for k, v in r.items() if not isinstance(v, list)}
                          for label, r in payload["models"].items()})
    typer.echo(table.to_string())
    for threads, x in payload.get("speedup", {}).items():
        typer.echo(f"decode speed-up in llama.cpp ({threads.removeprefix('t')} thread(s)): x{x:.2f}")


@app.command("eval")
@config_command
def eval_cmd(
    ctx: typer.Context,
    load_config: LoadConfig,
    placement: PlacementConfig,
    evaluation: EvalConfig,
    llamacpp: LlamaCppConfig,
    engine: Annotated[str, typer.Option(help=f"Where to run the models: {' or '.join(ENGINES)} (exports a GGUF "
                                             "file first; perplexity and decode speed).")] = "torch",
    compare_to: CompareOpt = None,
    text: Annotated[Path | None, typer.Option(help="Also measure perplexity on this UTF-8 text file.")] = None,
    data_dir: DataDirOpt = None,
    run_dir: RunDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure perplexity (paper protocol), zero-shot accuracy, speed and size; with --compare-to, also KL,
    top-1 agreement, retained % and measured speed-ups against the original."""
    import dataclasses

    with user_errors():
        if engine not in ENGINES:
            raise MiniLLMError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
        if placement.spread and engine != "torch":
            raise MiniLLMError("--device-map spreads a PyTorch model over devices; allowed with --engine torch only")
        if placement.spread and evaluation.speed:
            raise MiniLLMError("--speed measures a model on one device; allowed without --device-map only")
        _check_outputs(out=out, run_dir=run_dir)
        config = _with_data(evaluation, data_dir)
        if text is not None and _defaulted(ctx, "ppl"):
            config = dataclasses.replace(config, perplexity=())  # --text alone measures only the text
        with Bar(not as_json) as bar:
            if engine == "llamacpp":
                payload = _llamacpp(load_config, compare_to, config, llamacpp, bar)
                if run_dir:
                    _write_json(run_dir / "llamacpp.json", payload)
            elif compare_to:
                run = _pair(load_config, compare_to, config, bar, placement)
                payload = run.to_dict()
                if run_dir:
                    run.write(run_dir)
            else:
                payload = _single(load_config, config, text, bar, placement)
                if run_dir:
                    _write_json(run_dir / "metrics.json", payload)
        if out is not None:
            _write_json(out, payload)
        emit(as_json, payload, lambda: (_render_llamacpp if engine == "llamacpp" else _render_metrics)(payload))


@app.command()
@config_command
def check(
    contract: ContractOpt,
    load_config: LoadConfig,
    evaluation: Annotated[EvalConfig, Only("limit", "task_seed", "seq_len")] = CONTRACT_EVAL,
    compare_to: CompareOpt = "smollm2-135m",
    prompts: PromptsOpt = None,
    data_dir: DataDirOpt = None,
    run_dir: RunDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a pruned model against a quality contract (a file or a bundled template, see `minillm suites`): prints
    each clause with its measured value and exits 1 if any fails (2 on bad input), so a team can put it in CI."""
    from minillm_core.evaluation.gates import Contract, passed

    with user_errors():
        _check_outputs(run_dir=run_dir)
        c = Contract.load(contract)
        config = _contract_eval(c, evaluation, data_dir, prompts)
        with Bar(not as_json) as bar:
            run = _pair(load_config, compare_to, config, bar)
        if run_dir:
            run.write(run_dir)
        results = c.check(run.flat())
        ok = passed(results)
        payload = {"contract": c.name, "passed": ok, "clauses": [r.to_dict() for r in results]}
        emit(as_json, payload, lambda: typer.echo("\n".join(
            f"{'PASS' if r.passed else 'FAIL'}  {r.clause.describe():<45} measured "
            f"{'not measured' if r.value is None else f'{r.value:.4g}'}" for r in results)
            + f"\ncontract {c.name}: {'passed' if ok else 'FAILED'}"))
    if not ok:
        raise typer.Exit(1)


@app.command()
@config_command
def search(
    contract: Annotated[Path, typer.Option(help="Quality contract the pruned model must meet (YAML or JSON).")],
    load_config: LoadConfig,
    score: ScoreConfig,
    calib: CalibrationConfig,
    plan: Annotated[PlanConfig, PLAN_SHAPE],
    evaluation: Annotated[EvalConfig, Only("limit", "seq_len")] = CONTRACT_EVAL,
    ratios: Annotated[str | None, typer.Option(help="Sweep these comma-separated ratios instead of bisecting.")] = None,
    low: Annotated[float, typer.Option(help="Bisection: smallest ratio tried.")] = 0.05,
    high: Annotated[float, typer.Option(help="Bisection: largest ratio tried.")] = 0.6,
    tolerance: Annotated[float, typer.Option(help="Bisection stops when the bracket is this narrow.")] = 0.02,
    prompts: PromptsOpt = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the search curve JSON here (the dashboard plots it).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score once, then find the largest pruning ratio whose model still meets the contract; records the whole
    size-vs-quality curve (ratio, parameters, perplexity, accuracy, speed)."""
    from minillm_core.evaluation.gates import Contract
    from minillm_core.search import search as run_search

    with user_errors():
        _check_outputs(out=out)
        c = Contract.load(contract)
        try:
            grid = [float(r) for r in ratios.split(",")] if ratios else None
        except ValueError:
            raise MiniLLMError(f"--ratios must be comma-separated numbers, got {ratios!r}") from None
        loaded = load(load_config)
        with Bar(not as_json) as bar:
            scores = score_model(loaded, score, CalibrationRows(loaded, calib, score.seed, data_dir), bar)
            result = run_search(loaded.model, loaded.tokenizer, scores, c, plan,
                                _contract_eval(c, evaluation, data_dir, prompts),
                                ratios=grid, low=low, high=high, tolerance=tolerance, progress=bar)
        if out:
            result.write(out)
        payload = result.to_dict()
        emit(as_json, payload, lambda: typer.echo("\n".join(
            f"ratio {p['ratio']:.3f}: {'PASS' if p['passed'] else 'fail'}  "
            + ", ".join(f"{k}={v:.4g}" for k, v in p.items() if k.startswith(("ppl/", "retained/ppl", "acc/average")))
            for p in result.points) + f"\nlargest passing ratio: {result.best_ratio}"))

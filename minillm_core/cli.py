"""The `minillm` command line: plan, prune, eval and info, headless twins of the dashboard's screens.

Every command takes typed options, shows progress on stderr, and with `--json` prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core.errors import MiniLLMError

app = typer.Typer(
    name="minillm",
    help="Structured pruning of Hugging Face causal LMs (MINI-LLM and baselines): score, plan, prune, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Bundled name (smollm2-135m), a local directory (plain or pruned), a .gguf file, or a Hub id."
)]
DtypeOpt = Annotated[str, typer.Option(help="Weights dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, float16, "
                                            "bfloat16.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    envvar="MINILLM_DATA_DIR", help="Local data mirror (WikiText-2, PTB, C4 sample, ...); unset: the Hugging Face Hub."
)]
# FLAP: forward-only, seconds on a CPU, and the lowest perplexity at 20% in bench/results/scoring.md
DEFAULT_SCORER = "flap"
ScorerOpt = Annotated[str, typer.Option(help="Importance criterion: flap, minillm (Feature Map Sensitivity), wanda-sp, "
                                             "taylor (backprop), magnitude, random; see `minillm scorers`.")]
RatioOpt = Annotated[float, typer.Option(help="Fraction of *total* parameters to remove, in (0, 1).")]
AllocationOpt = Annotated[str, typer.Option(help="uniform: same widths in every unprotected layer; global: rank "
                                                 "groups across layers after per-layer standardisation.")]
ProtectOpt = Annotated[str | None, typer.Option(
    help="Comma-separated layer indices never pruned. Default: LLM-Pruner's rule scaled to depth (first 4/32 and "
         "last 2/32 of the layers; layers 0-3 and 28-29 of a 30-layer model). Pass '' to protect none."
)]
TargetOpt = Annotated[str, typer.Option(help="What to prune: heads, channels or both.")]
GranularityOpt = Annotated[str, typer.Option(
    help="GQA head removal: q-heads (the same number of query heads from every KV group) or kv-groups (whole KV "
         "groups with their query heads). Multi-head models always remove whole heads."
)]
RoundOpt = Annotated[int, typer.Option(help="Kept MLP channels per layer are a multiple of this (hardware-friendly).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for random scores, calibration sampling and SPSA probes.")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Scorer option key=value, repeatable (-o n_probes=16 -o eps=1e-3); see `minillm scorers`."
)]
CalibOpt = Annotated[str, typer.Option(
    "--calib", help="Calibration text for scorers that need data: c4 (sample), wikitext2, ptb, alpaca. Paper setups: "
                    "Wanda 128 x 2048 tokens of C4; FLAP 1024 x 128 of WikiText-2; LLM-Pruner 10 Bookcorpus samples."
)]
CalibFileOpt = Annotated[Path | None, typer.Option("--calib-file", help="Your own .txt or .jsonl ('text' field).")]
NSamplesOpt = Annotated[int, typer.Option(help="Calibration sequences; the default keeps forward-only scoring of the "
                                               "bundled model under a minute on a CPU.")]
CalibLenOpt = Annotated[int, typer.Option("--calib-seq-len", help="Tokens per calibration sequence.")]


def _stderr(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn MiniLLMError into a one-line message and exit code 2, never a traceback."""
    try:
        yield
    except MiniLLMError as exc:
        _stderr(f"error: {exc}")
        raise typer.Exit(2) from None


class _Bar:
    """A progress callback rendering `progress(done, total, label)` as a rich bar on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def describe(self, label: str, text: str) -> None:
        """Show `text` (loss, tokens/s, ETA) as the description of the bar registered under `label`."""
        if label in self._tasks:
            self._progress.update(self._tasks[label], description=text)

    def __call__(self, done: int, total: int, label: str) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)


def _emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=1, default=str))
    else:
        render()


def _protected(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise MiniLLMError(f"--protect must be comma-separated layer indices, got {value!r}") from None


def _load(model: str, dtype: str, device: str):
    from minillm_core.loading import load_model

    t0 = time.perf_counter()
    _stderr(f"loading {model} ...")
    loaded = load_model(model, dtype=dtype, device=device)
    _stderr(f"loaded {loaded.model.config.model_type} from {loaded.source} in {time.perf_counter() - t0:.1f} s "
            f"on {loaded.device}")
    return loaded


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    """`key=value` scorer options; values are read as JSON (numbers, booleans) or kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MiniLLMError(f"--option must look like key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


@dataclass(frozen=True)
class Calib:
    """Calibration options shared by plan, prune, score and search."""

    source: str = "c4"
    file: Path | None = None
    n_samples: int = 32
    seq_len: int = 128
    data_dir: Path | None = None


def _calibration_of(loaded, seed: int, calib: Calib):
    """The calibration batch [n_samples, seq_len] the options describe (deterministic for a seed)."""
    from minillm_core.calibration import CalibrationConfig, build_calibration

    config = CalibrationConfig(source="file" if calib.file else calib.source, n_samples=calib.n_samples,
                               seq_len=calib.seq_len, seed=seed, path=str(calib.file) if calib.file else None)
    batch = build_calibration(loaded.tokenizer, config, data_dir=calib.data_dir,
                              max_length=getattr(loaded.model.config, "max_position_embeddings", None))
    _stderr(f"calibration: {batch.shape[0]} x {batch.shape[1]} tokens from {config.source}")
    return batch


def _score_model(loaded, scorer: str, seed: int, options: list[str] | None, calib: Calib, bar: _Bar):
    from minillm_core.pipeline import score
    from minillm_core.scoring import SCORERS, make_scorer

    opts = _parse_options(options)
    if "seed" in getattr(SCORERS.get(scorer), "__dataclass_fields__", {}):
        opts.setdefault("seed", seed)
    calibration = _calibration_of(loaded, seed, calib) if make_scorer(scorer, **opts).needs_calibration else None
    return score(loaded.model, scorer, calibration, progress=bar, **opts)


def _make_plan(loaded, scorer: str, seed: int, config, bar: _Bar, options=None, calib: Calib | None = None):
    from minillm_core.pipeline import plan

    scores = _score_model(loaded, scorer, seed, options, calib or Calib(), bar)
    return plan(loaded.model, scores, config, model_name=loaded.name)


def _plan_config(ratio, allocation, protect, target, head_granularity, round_to):
    from minillm_core.planning import PlanConfig

    return PlanConfig(ratio=ratio, allocation=allocation, protected_layers=_protected(protect), target=target,
                      head_granularity=head_granularity, round_to=round_to)


def _print_summary(summary) -> None:
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


@app.command()
def info(model: ModelOpt = "smollm2-135m", dtype: DtypeOpt = "auto", device: DeviceOpt = "auto",
         as_json: JsonOpt = False) -> None:
    """Show a model's architecture: layers, heads, KV heads, hidden and MLP sizes, parameters, size per dtype."""
    from minillm_core.pipeline import geometry_of

    with _user_errors():
        loaded = _load(model, dtype, device)
        g = geometry_of(loaded.model)
        shape = g.layers[0]
        payload = {"model": model, "source": loaded.source, "model_type": g.model_type, "layers": g.num_layers,
                   "heads": shape.num_heads, "kv_heads": shape.num_kv_heads, "head_dim": g.head_dim,
                   "hidden_size": g.hidden_size, "intermediate_size": shape.intermediate,
                   "parameters": g.total_params, "embedding_parameters": g.embedding_params,
                   "size_mb": {"float32": g.total_params * 4 / 2**20, "float16": g.total_params * 2 / 2**20}}
        _emit(as_json, payload, lambda: typer.echo("\n".join(f"{k:>22}: {v}" for k, v in payload.items())))


@app.command("plan")
def plan_cmd(
    model: ModelOpt = "smollm2-135m",
    scorer: ScorerOpt = DEFAULT_SCORER,
    ratio: RatioOpt = 0.2,
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
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the plan JSON here (replayable with `prune --plan`).")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score the model and preview a pruning plan: per-layer widths, parameters and size before/after."""
    from minillm_core.pipeline import geometry_of
    from minillm_core.planning import summarize

    with _user_errors():
        config = _plan_config(ratio, allocation, protect, target, head_granularity, round_to)
        loaded = _load(model, dtype, device)
        with _Bar(not as_json) as bar:
            p = _make_plan(loaded, scorer, seed, config, bar, option,
                           Calib(calib, calib_file, n_samples, calib_seq_len, data_dir))
        summary = summarize(p, geometry_of(loaded.model))
        if out is not None:
            p.save(out)
            _stderr(f"plan written to {out}")
        _emit(as_json, {"plan": str(out) if out else None, "summary": summary.to_dict()},
              lambda: _print_summary(summary))


@app.command()
def prune(
    out: Annotated[Path, typer.Option(help="Directory for the pruned model (safetensors, config, tokenizer, plan).")],
    model: ModelOpt = "smollm2-135m",
    scorer: ScorerOpt = DEFAULT_SCORER,
    ratio: RatioOpt = 0.2,
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
    data_dir: DataDirOpt = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Replay a saved plan instead of scoring.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out directory.")] = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Physically remove heads and channels and save a smaller dense model.

    Example: minillm prune --model smollm2-135m --scorer flap --ratio 0.2 --out runs/demo
    """
    from minillm_core.io import save_pruned
    from minillm_core.pipeline import apply_plan, count_params, geometry_of
    from minillm_core.planning import PruningPlan, summarize

    with _user_errors():
        config = _plan_config(ratio, allocation, protect, target, head_granularity, round_to)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise MiniLLMError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        loaded = _load(model, dtype, device)
        with _Bar(not as_json) as bar:
            p = PruningPlan.load(plan_file) if plan_file else _make_plan(
                loaded, scorer, seed, config, bar, option, Calib(calib, calib_file, n_samples, calib_seq_len, data_dir))
        summary = summarize(p, geometry_of(loaded.model))
        t0 = time.perf_counter()
        pruned = apply_plan(loaded.model, p)
        save_pruned(pruned, loaded.tokenizer, out, plan=p, overwrite=overwrite)
        payload = {"out": str(out), "params_before": summary.params_before, "params_after": count_params(pruned),
                   "removed_fraction": summary.removed_fraction,
                   "removed_fraction_non_embedding": summary.removed_fraction_non_embedding,
                   "loads_with_from_pretrained": summary.loads_with_from_pretrained,
                   "seconds": round(time.perf_counter() - t0, 3)}
        _emit(as_json, payload, lambda: (_print_summary(summary), typer.echo(f"saved to {out}")))


@app.command()
def scorers(as_json: JsonOpt = False) -> None:
    """List the importance criteria with their default options: what each needs, its engine, and what it does."""
    from minillm_core.scoring import describe_scorers

    rows = {n: {k: v for k, v in d.items() if k != "estimators"} for n, d in describe_scorers().items()}
    _emit(as_json, rows, lambda: typer.echo("\n".join(
        f"{n:>12}  [{r['engine']}{', forward-only' if r['forward_only'] and r['engine'] != 'weights' else ''}]  "
        f"{r['description']}"
        for n, r in rows.items())))


from minillm_core import cli_eval, cli_recover  # noqa: E402, F401  (register eval, check, search, recover)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

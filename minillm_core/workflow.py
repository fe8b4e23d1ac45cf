"""The one facade over the core: load, calibrate, score, plan, prune, save, evaluate, and prune-and-evaluate.

The CLI, the dashboard's jobs, `search` and the benchmarks call these; each workflow step has one implementation here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillm_core.allocation import build_plan
from minillm_core.allocation_search import SearchConfig
from minillm_core.calibration import FILE_SOURCE, SELF_SOURCE, CalibrationConfig, build_calibration
from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.evaluation.ab import (
    AB_METRICS,
    AB_REFERENCE_METRICS,
    ABConfig,
    ABResult,
    run_ab,
)
from minillm_core.evaluation.compare import check_same_tokenizer
from minillm_core.evaluation.llamacpp import LlamaCppConfig
from minillm_core.evaluation.suite import (
    EvalConfig,
    RunMetrics,
    agreement_metrics,
    compare_to_original,
    evaluate,
    paired_perplexity,
)
from minillm_core.gguf_export import GGUFConfig, GGUFExport
from minillm_core.loading import LoadConfig, LoadedModel, PlacementConfig, load_model
from minillm_core.modeling import count_params, get_adapter, max_context
from minillm_core.planning import (
    ALLOCATIONS,
    ModelGeometry,
    PlanConfig,
    PlanSummary,
    PruningPlan,
    plan_risks,
    summarize,
)
from minillm_core.progress import Progress, no_progress
from minillm_core.prompts import PromptSuite, describe_suites, load_suite
from minillm_core.reconstruction import ReconstructConfig
from minillm_core.scoring import GroupScores, ScoreConfig, make_scorer
from minillm_core.settings import user_path
from minillm_core.surgery import apply_indices, copy_model

__all__ = [
    "AB_METRICS",
    "AB_REFERENCE_METRICS",
    "ALLOCATIONS",
    "FILE_SOURCE",
    "SELF_SOURCE",
    "ABConfig",
    "ABResult",
    "CalibrationConfig",
    "EvalConfig",
    "GGUFConfig",
    "GGUFExport",
    "GroupScores",
    "LlamaCppConfig",
    "LoadConfig",
    "LoadedModel",
    "ModelGeometry",
    "PlacementConfig",
    "PlanConfig",
    "PlanSummary",
    "PromptSuite",
    "PruneOutcome",
    "PruningPlan",
    "ReconstructConfig",
    "RunMetrics",
    "ScoreConfig",
    "ScorerPreview",
    "SearchConfig",
    "ab_test",
    "architecture",
    "bundled_models",
    "calibrate",
    "check_same_tokenizer",
    "contract_templates",
    "count_params",
    "describe_scorers",
    "describe_suites",
    "diagnose",
    "evaluate",
    "evaluate_llamacpp",
    "evaluate_pair",
    "export_gguf",
    "fidelity_sweep",
    "forward_only_estimators",
    "geometry_of",
    "gguf_tokenizer_source",
    "load",
    "load_search",
    "load_suite",
    "make_plan",
    "measure_memory",
    "model_dir_of",
    "needs_calibration",
    "perplexity_of_text",
    "plan_defaults",
    "plan_risks",
    "preview_scorer",
    "prune",
    "prune_and_evaluate",
    "prune_and_reconstruct",
    "read_calibration_file",
    "reconstruct",
    "save",
    "score",
    "scorer_class",
    "scorer_names",
    "search_plan",
    "summary_of",
    "with_reconstruction",
]

logger = logging.getLogger(__name__)

#: `step(name) -> progress`: called when a named step starts; returns the progress callback for that step.
StepHook = Callable[[str], Progress]

#: Step names of `prune_and_evaluate`, in order (the job's status shows them).
EVALUATE_ORIGINAL, PRUNE, RECONSTRUCT, SAVE, EVALUATE_PRUNED, COMPARE = (
    "evaluate original", "prune", "reconstruct", "save pruned model", "evaluate pruned", "compare with original")


def _no_steps(_name: str) -> Progress:
    return no_progress


# --- model --------------------------------------------------------------------------------------------------------


def load(model: str, dtype: str = "auto", device: str = "auto", placement: PlacementConfig | None = None
         ) -> LoadedModel:
    """Load a bundled name, a local directory (plain or pruned), a `.gguf` file or a Hub id (with `placement`:
    spread over GPUs, CPU memory and disk, for evaluation)."""
    return load_model(model, dtype=dtype, device=device, placement=placement)


def model_dir_of(name: str) -> Path | None:
    """The local directory a model name loads from (GGUF: its converted cache), or None for a Hub id."""
    from minillm_core.loading import resolve_source

    src = resolve_source(name)
    return src if isinstance(src, Path) else None


def measure_memory(model: str, dtype: str = "auto", device: str = "auto") -> dict[str, float]:
    """Peak memory at load and during a forward pass, from a fresh process (nothing else counted)."""
    from minillm_core.evaluation.speed import measure_memory_fresh

    return measure_memory_fresh(model, dtype, device)


def bundled_models() -> list[str]:
    """Names of the models shipped inside pip packages (no download needed)."""
    from minillm_core.loading import BUNDLED

    return list(BUNDLED)


def read_calibration_file(path: str | os.PathLike) -> list[str]:
    """A user's calibration documents (.txt paragraphs or .jsonl `text`), validated; raises `DataError` if unusable."""
    from minillm_core.calibration import read_calibration_file as read

    return read(path)


def geometry_of(model: nn.Module) -> ModelGeometry:
    return ModelGeometry.from_model(model, get_adapter(model))


# --- score -> plan -> prune -----------------------------------------------------------------------------------------


def calibrate(loaded: LoadedModel, config: CalibrationConfig, data_dir: str | os.PathLike | None = None
              ) -> torch.Tensor:
    """The calibration batch `[n_samples, seq_len]` the config describes (deterministic for its seed)."""
    return build_calibration(loaded.tokenizer, config, data_dir=data_dir, max_length=max_context(loaded.model),
                             model=loaded.model)


def needs_calibration(config: ScoreConfig) -> bool:
    """Whether the scorer runs forward passes on calibration data (weights-only scorers do not)."""
    return make_scorer(config.scorer, **config.scorer_options()).needs_calibration


def score(
    model: nn.Module | LoadedModel,
    scorer: str | ScoreConfig,
    calibration: torch.Tensor | CalibrationConfig | None = None,
    progress: Progress = no_progress,
    data_dir: str | os.PathLike | None = None,
    **options: Any,
) -> GroupScores:
    """Run a registered scorer; calibration is built (from a `CalibrationConfig`) only if the scorer needs it.

    `scorer` is a name with `options`, or a `ScoreConfig`; a `CalibrationConfig` needs a `LoadedModel` (its tokenizer).
    """
    config = scorer if isinstance(scorer, ScoreConfig) else ScoreConfig(scorer, options)
    s = make_scorer(config.scorer, **config.scorer_options())
    net = model.model if isinstance(model, LoadedModel) else model
    if not s.needs_calibration:
        calibration = None
    elif isinstance(calibration, CalibrationConfig):
        if not isinstance(model, LoadedModel):
            raise MiniLLMError("building calibration from a CalibrationConfig needs the loaded model (its tokenizer)")
        calibration = calibrate(model, calibration, data_dir)
    elif calibration is None:
        raise PlanError(f"scorer {config.scorer!r} needs calibration data "
                        f"({', '.join(sorted(n.value for n in s.needs))})")
    return s.score(net, get_adapter(net), calibration, progress)


def make_plan(model: nn.Module | LoadedModel, scores: GroupScores, config: PlanConfig, model_name: str = ""
              ) -> PruningPlan:
    """Per-layer kept heads/channels from scores; a JSON-serialisable plan with provenance."""
    if isinstance(model, LoadedModel):
        model_name = model_name or model.name
        model = model.model
    return build_plan(geometry_of(model), scores, config, model_name)


def search_plan(model: nn.Module | LoadedModel, scores: GroupScores, config: PlanConfig, calibration: torch.Tensor,
                search: SearchConfig | None = None, recon: ReconstructConfig | None = None, model_name: str = "",
                progress: Progress = no_progress) -> PruningPlan:
    """A plan with searched per-layer widths (`allocation="search"`): the lowest KL divergence to the dense model
    on held calibration rows among candidates of the same total (see `allocation_search`)."""
    from minillm_core.allocation_search import search_plan as evolve

    if isinstance(model, LoadedModel):
        model_name = model_name or model.name
        model = model.model
    return evolve(model, scores, geometry_of(model), config, calibration, search or SearchConfig(),
                  recon or ReconstructConfig(), model_name, progress)


def architecture(model: nn.Module) -> dict[str, Any]:
    """Layers, heads, KV heads, hidden and MLP sizes, parameters and size per dtype (`minillm info`, Model page)."""
    g = geometry_of(model)
    shape = g.layers[0]
    return {"model_type": g.model_type, "layers": g.num_layers, "heads": shape.num_heads,
            "kv_heads": shape.num_kv_heads, "head_dim": g.head_dim, "hidden_size": g.hidden_size,
            "intermediate_size": shape.intermediate, "parameters": g.total_params,
            "embedding_parameters": g.embedding_params,
            "size_mb": {"float32": g.total_params * 4 / 2**20, "float16": g.total_params * 2 / 2**20}}


def describe_scorers() -> dict[str, dict[str, Any]]:
    """Every registered criterion: needs, engine, forward-only, default options, description (the registry's view)."""
    from minillm_core.scoring import describe_scorers as describe

    return {n: {k: v for k, v in d.items() if k != "estimators"} for n, d in describe().items()}


def scorer_names() -> list[str]:
    """Every registered criterion, sorted."""
    from minillm_core.scoring import SCORERS

    return SCORERS.names()


def scorer_class(name: str) -> type:
    """The registered scorer class (its dataclass fields are its options)."""
    from minillm_core.scoring import SCORERS

    return SCORERS.get(name)


@dataclass(frozen=True)
class ScorerPreview:
    """What running a scorer will take, before it runs: needs, engine, time/memory estimate, default options."""

    description: str
    needs: tuple[str, ...]
    needs_calibration: bool
    forward_only: bool
    engine: str
    seconds: float
    extra_mb: float
    defaults: dict[str, Any]


def preview_scorer(config: ScoreConfig, geometry: ModelGeometry, n_samples: int, seq_len: int, device: str
                   ) -> ScorerPreview:
    """The cost model's estimate for `config` on a model of `geometry` (`scoring.cost`)."""
    from minillm_core.scoring.cost import estimate_cost

    s = make_scorer(config.scorer, **config.scorer_options())
    data = s.needs_calibration
    cost = estimate_cost(s, geometry, n_samples if data else 0, seq_len, device)
    return ScorerPreview(scorer_class(config.scorer).description, tuple(sorted(n.value for n in s.needs)), data,
                         cost.forward_only, cost.engine, cost.seconds, cost.extra_mb,
                         make_scorer(config.scorer).options())


def forward_only_estimators() -> list[str]:
    """MINI-LLM gradient estimators that need forward passes only (the registry decides)."""
    from minillm_core.scoring.estimators import forward_only_estimators as names

    return list(names())


def fidelity_sweep(loaded: LoadedModel, calib: CalibrationConfig, estimators: list[str], probes: list[int],
                   progress: Progress = no_progress) -> list[dict[str, Any]]:
    """Forward-only FMS estimators at several probe counts vs exact FMS: cosine and per-layer Spearman rows."""
    from minillm_core.scoring.estimators import FIDELITY_REFERENCE
    from minillm_core.scoring.fidelity import probe_sweep

    calibration = calibrate(loaded, calib)
    reference = score(loaded, ScoreConfig("minillm", {"estimator": FIDELITY_REFERENCE}), calibration)
    rows: list[dict[str, Any]] = []
    for i, est in enumerate(estimators):
        rows += probe_sweep(loaded.model, loaded.adapter, calibration, reference, probes=sorted(probes),
                            estimator=est, progress=lambda d, t, _l, e=est, k=i: progress(
                                k * t + d, len(estimators) * t, f"{e}: {d}/{t} probe counts"))
    return rows


def diagnose(loaded: LoadedModel, scores: GroupScores, config: ScoreConfig, calib: CalibrationConfig,
             probes: tuple[int, ...], data_dir: str | os.PathLike | None = None, progress: Progress = no_progress
             ) -> dict[str, Any]:
    """Fidelity of `scores` against exact FMS (cosine, per-layer Spearman); forward-only FMS estimators are also
    swept over probe counts."""
    from minillm_core.scoring.estimators import FIDELITY_REFERENCE, forward_only_estimators
    from minillm_core.scoring.fidelity import fidelity, probe_sweep

    reference = score(loaded, ScoreConfig("minillm", {"estimator": FIDELITY_REFERENCE}, config.seed), calib,
                      progress, data_dir)
    out: dict[str, Any] = {"fidelity": {k: v for k, v in fidelity(scores, reference).items()
                                        if not isinstance(v, list)}}
    if config.scorer == "minillm" and scores.options.get("estimator") in forward_only_estimators():
        out["probe_sweep"] = probe_sweep(
            loaded.model, loaded.adapter, calibrate(loaded, calib, data_dir), reference, probes=probes,
            progress=progress, **{k: v for k, v in scores.options.items() if k != "n_probes"})
    return out


def plan_defaults(model: nn.Module | ModelGeometry) -> PlanConfig:
    """The default plan options with the default protected layers spelled out for this model's depth."""
    import dataclasses

    from minillm_core.planning import default_protected_layers

    g = model if isinstance(model, ModelGeometry) else geometry_of(model)
    return dataclasses.replace(PlanConfig(), protected_layers=default_protected_layers(g.num_layers))


def summary_of(plan: PruningPlan, model: nn.Module | ModelGeometry) -> PlanSummary:
    """Widths, parameters, MB and loadability of a plan, from shapes alone."""
    return summarize(plan, model if isinstance(model, ModelGeometry) else geometry_of(model))


def prune(model: nn.Module, plan: PruningPlan, inplace: bool = False) -> nn.Module:
    """Physically prune (a copy of) `model` to `plan`; the parameter count must equal the plan's prediction."""
    plan.validate(geometry_of(model))
    target = model if inplace else copy_model(model)
    apply_indices(get_adapter(target), plan.layers)
    got = count_params(target)
    if got != plan.predicted_params:  # surgery and the planner disagree: a bug, never the user's fault
        raise AssertionError(f"pruned model has {got} parameters, the plan predicted {plan.predicted_params}")
    return target


def reconstruct(original: nn.Module, pruned: nn.Module, plan: PruningPlan, calibration: torch.Tensor,
                config: ReconstructConfig | None = None, progress: Progress = no_progress) -> dict[str, Any]:
    """Re-fit, in place, the kept output-projection columns of every pruned layer of `pruned` (a `prune` of
    `original`) on `calibration` [n, seq], keeping the plan's units; returns the per-projection errors before/after
    (for provenance). `prune_and_reconstruct` is the default path (in place, and it can re-choose units)."""
    from minillm_core.reconstruction import REFIT_PLAN_UNITS
    from minillm_core.reconstruction import reconstruct as refit_layers

    config = config or REFIT_PLAN_UNITS
    report = refit_layers(original, pruned, plan.layers, calibration, config, progress)
    return {"target": config.target, "damping": config.damping, "calibration_rows": int(calibration.shape[0]),
            **report.to_dict()}


def prune_and_reconstruct(model: nn.Module, plan: PruningPlan, calibration: torch.Tensor,
                          config: ReconstructConfig | None = None, inplace: bool = False,
                          progress: Progress = no_progress) -> tuple[nn.Module, PruningPlan, dict[str, Any]]:
    """`prune` then `reconstruct`, one layer at a time: with `inplace` the peak memory is one model plus one layer
    (the dense model is consumed); otherwise a copy is pruned and `model` stays intact. Returns the pruned model,
    the plan it now follows (the re-fit in its provenance; with `select="obs"` the re-chosen units, same widths)
    and the report."""
    from minillm_core.reconstruction import prune_and_reconstruct as refit_while_pruning

    geometry = geometry_of(model)
    plan.validate(geometry)
    config = config or ReconstructConfig()
    widest = max(s.intermediate for s in geometry.layers)
    if calibration.numel() < 2 * widest:  # measured: 1,024 tokens for SmolLM2's 1,536 channels did worse than no re-fit
        logger.warning("the re-fit has %d calibration tokens for projections %d inputs wide; it may overfit and do "
                       "worse than none: use more calibration (e.g. --n-samples)", calibration.numel(), widest)
    target = model if inplace else copy_model(model)
    kept, _, report = refit_while_pruning(target, plan.layers, calibration, config, progress)
    got = count_params(target)
    if got != plan.predicted_params:  # surgery and the planner disagree: a bug, never the user's fault
        raise AssertionError(f"pruned model has {got} parameters, the plan predicted {plan.predicted_params}")
    out = {"target": config.target, "damping": config.damping, "select": config.select,
           "calibration_rows": int(calibration.shape[0]), **report.to_dict()}
    return target, with_reconstruction(dataclasses.replace(plan, layers=list(kept)), out), out


def with_reconstruction(plan: PruningPlan, report: dict[str, Any]) -> PruningPlan:
    """`plan` with the re-fit in its provenance (settings, calibration rows, mean relative error before/after)."""
    rows = report.get("projections", [])
    summary = {k: report[k] for k in ("target", "damping", "select", "calibration_rows") if k in report}
    if rows:
        summary["mean_error_before"] = sum(r["error_before"] for r in rows) / len(rows)
        summary["mean_error_after"] = sum(r["error_after"] for r in rows) / len(rows)
    return dataclasses.replace(plan, provenance={**plan.provenance, "reconstruction": summary})


def save(pruned: nn.Module, tokenizer: Any, out: str | os.PathLike, plan: PruningPlan, overwrite: bool = False
         ) -> Path:
    """Save weights (safetensors) + config + tokenizer + plan + shape manifest, atomically."""
    from minillm_core.io import save_pruned

    return save_pruned(pruned, tokenizer, out, plan=plan, overwrite=overwrite)


# --- deploy: GGUF for llama.cpp ------------------------------------------------------------------------------------


TOKENIZER_GGUF = "tokenizer.gguf"  # a model directory may carry its GGUF tokenizer under this name


def gguf_tokenizer_source(model: str, explicit: str | os.PathLike | None = None) -> Path:
    """The GGUF file whose tokenizer a GGUF export of `model` copies: `explicit`, else the GGUF the model came from
    (a bundled name, a .gguf file, a directory holding a `tokenizer.gguf`, or the source recorded in a pruned
    directory's plan, followed back)."""
    from minillm_core.errors import ExportError
    from minillm_core.io import load_plan
    from minillm_core.loading import BUNDLED, bundled_gguf_path

    if explicit is not None:
        path = user_path(explicit)
        if not path.is_file():
            raise ExportError(f"tokenizer GGUF {path} does not exist")
        return path
    seen = set()
    while model not in seen:
        seen.add(model)
        if model in BUNDLED:
            return bundled_gguf_path(model)
        path = user_path(model)
        if path.is_file() and path.suffix == ".gguf":
            return path
        if (path / TOKENIZER_GGUF).is_file():
            return path / TOKENIZER_GGUF
        plan = load_plan(path) if path.is_dir() else None
        if plan is None or not plan.model:
            break
        model = plan.model
    raise ExportError(f"no GGUF tokenizer is known for {model!r}: pass tokenizer_from (--tokenizer-from), a GGUF "
                      "file of the same base model (its tokenizer.* fields are copied)")


def export_gguf(loaded: LoadedModel, out: str | os.PathLike, config: GGUFConfig | None = None,
                overwrite: bool = False) -> GGUFExport:
    """Write a loaded (pruned or dense) LLaMA-family model as a GGUF file llama.cpp runs (see `gguf_export`)."""
    from minillm_core.gguf_export import write_gguf

    config = config or GGUFConfig()
    tokenizer = gguf_tokenizer_source(loaded.name, config.tokenizer_from)
    return write_gguf(loaded.model, out, config, tokenizer, name=Path(loaded.name).name, overwrite=overwrite)


def evaluate_llamacpp(models: dict[str, str], config: EvalConfig, engine: LlamaCppConfig, workdir: str | os.PathLike,
                      progress: Progress = no_progress) -> dict[str, dict[str, Any]]:
    """Measure each named model in llama.cpp: a .gguf file as it is, anything else exported to `workdir` first
    (`engine.gguf_dtype`). Perplexity on `config.perplexity` with the same windows as the PyTorch evaluation (the
    model's own Hugging Face tokenizer; llama.cpp's for a bare .gguf), then decode speed of all models interleaved."""
    from minillm_core.data import perplexity_text
    from minillm_core.evaluation.llamacpp import LlamaCpp, decode_speed, perplexity_llamacpp
    from minillm_core.evaluation.perplexity import tokenize_prefix

    paths: dict[str, Path] = {}
    out: dict[str, dict[str, Any]] = {}
    prompt: list[int] | None = None
    for i, (label, name) in enumerate(models.items()):
        tokenize = None
        if name.endswith(".gguf") and user_path(name).is_file():
            paths[label] = user_path(name)
        else:
            loaded = load(name, device="cpu")
            paths[label] = export_gguf(loaded, Path(workdir) / f"{i}-{engine.gguf_dtype}.gguf",
                                       GGUFConfig(dtype=engine.gguf_dtype), overwrite=True).path
            tokenize = loaded.tokenizer
            del loaded
        out[label] = {"model": name, "gguf": str(paths[label]), "gguf_dtype": engine.gguf_dtype,
                      "llamacpp/file_mb": paths[label].stat().st_size / 1e6}
        for dataset in config.perplexity:
            text = perplexity_text(dataset, data_dir=config.data_dir)
            if tokenize is not None:
                ids = tokenize_prefix(tokenize, text, None if config.limit is None else config.limit * config.seq_len)
            else:
                with LlamaCpp(paths[label], n_ctx=config.seq_len) as llm:
                    ids = torch.tensor(llm.tokenize(text))
            r = perplexity_llamacpp(paths[label], ids, config.seq_len, config.limit, progress=progress)
            out[label][f"llamacpp/ppl/{dataset}"] = r.ppl
            out[label][f"llamacpp/windows/{dataset}"] = r.n_windows
            if prompt is None:
                prompt = ids[:32].tolist()
    if prompt is None:  # no perplexity set: a fixed prompt of token ids 1..32 (any vocabulary has them)
        prompt = list(range(1, 33))
    for label, speeds in decode_speed(paths, prompt, engine, progress).items():
        out[label] |= speeds
    return out


# --- evaluate -------------------------------------------------------------------------------------------------------


def evaluate_pair(original: nn.Module, pruned: nn.Module, tokenizer: Any, config: EvalConfig, model_name: str = "",
                  pruned_dir: str | os.PathLike | None = None, original_dir: str | os.PathLike | None = None,
                  progress: Progress = no_progress) -> RunMetrics:
    """Both models with the same config, plus KL/agreement and measured speed-ups."""
    outcome = prune_and_evaluate(
        original, tokenizer, None, config, model_name=model_name, pruned=pruned, pruned_dir=pruned_dir,
        original_dir=original_dir,
        step=lambda name: (lambda d, t, label: progress(d, t, f"{name.split()[-1]}: {label}")))
    return outcome.run


def perplexity_of_text(loaded: LoadedModel, text: str, config: EvalConfig, progress: Progress = no_progress):
    """Perplexity of `text` with the config's window length, batch size and limit (a `PerplexityResult`)."""
    from minillm_core.evaluation.perplexity import perplexity

    return perplexity(loaded.model, loaded.tokenizer, text, seq_len=config.seq_len, batch_size=config.batch_size,
                      limit=config.limit, progress=progress)


@dataclass
class PruneOutcome:
    """What `prune_and_evaluate` produced: the measurements, the pruned model and where it was saved."""

    run: RunMetrics
    pruned: nn.Module
    model_dir: Path | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def prune_and_evaluate(
    original: nn.Module,
    tokenizer: Any,
    plan: PruningPlan | None,
    config: EvalConfig,
    *,
    model_name: str = "",
    out_dir: str | os.PathLike | None = None,
    evaluate_original: bool = True,
    original_metrics: tuple[dict[str, float], dict[str, Any]] | None = None,
    pruned: nn.Module | None = None,
    pruned_dir: str | os.PathLike | None = None,
    original_dir: str | os.PathLike | None = None,
    reconstruction: tuple[ReconstructConfig, torch.Tensor] | None = None,
    step: StepHook = _no_steps,
) -> PruneOutcome:
    """Evaluate the original -> prune a copy -> (save) -> evaluate the pruned model -> compare.

    `original_metrics` reuses an earlier evaluation of the original (a search over ratios measures it once);
    `pruned` skips the pruning (an already pruned model, e.g. `minillm eval --compare-to`). `step(name)` is told when
    each step starts and returns its progress callback. `tokenizer` may be None only when `pruned` carries none.
    `reconstruction` (settings, calibration [n, seq]) re-fits the pruned copy after measuring its perplexity as
    pruned (`details["before_reconstruction"]`); the report goes into the saved plan's provenance and `extra`.
    """
    t0 = time.time()
    orig_m: dict[str, float] = {}
    details: dict[str, Any] = {}
    if original_metrics is not None:
        orig_m, details["original"] = dict(original_metrics[0]), original_metrics[1]  # the caller's stays as it was
    elif evaluate_original:  # its perplexity comes from the pass beside the pruned model's (below)
        orig_m, details["original"] = evaluate(original, tokenizer, dataclasses.replace(config, perplexity=()),
                                               original_dir, progress=step(EVALUATE_ORIGINAL))
    extra: dict[str, Any] = {}
    if pruned is None:
        if plan is None:
            raise MiniLLMError("prune_and_evaluate needs a plan or an already pruned model")
        step(PRUNE)
        refit = reconstruction is not None and reconstruction[0].enabled
        if not refit or config.perplexity:
            pruned = prune(original, plan)  # a copy: the original stays intact for the comparison
        if refit:
            settings, calibration = reconstruction
            progress = step(RECONSTRUCT)
            if pruned is not None:  # the model as cut, measured once, then pruned again with the re-fit
                quick = dataclasses.replace(config, tasks=(), speed=False)
                details["before_reconstruction"] = evaluate(pruned, tokenizer, quick, progress=progress)[0]
                del pruned
            pruned, plan, extra["reconstruction"] = prune_and_reconstruct(original, plan, calibration, settings,
                                                                          progress=progress)
    model_dir = None
    if out_dir is not None:
        step(SAVE)
        model_dir = save(pruned, tokenizer, out_dir, plan, overwrite=True)
    progress = step(EVALUATE_PRUNED)
    pairs = {}
    if orig_m and config.perplexity:  # one pass of both models: perplexities and KL / agreement from the same logits
        scored_here = original_metrics is None
        pairs = paired_perplexity(original, pruned, tokenizer, config, score_original=scored_here, progress=progress)
        if scored_here:
            for name, pair in pairs.items():
                orig_m[f"ppl/{name}"] = pair.original.ppl
                details["original"]["perplexity"][name] = pair.original.to_dict()
    pr_m, details["pruned"] = evaluate(pruned, tokenizer, config, model_dir or pruned_dir, progress=progress,
                                       perplexities={name: pair.pruned for name, pair in pairs.items()})
    comparison: dict[str, float] = {}
    if orig_m:
        comparison = compare_to_original(original, pruned, tokenizer, config, orig_m, pr_m, details,
                                         progress=step(COMPARE), agreements=agreement_metrics(pairs) if pairs else None)
    run = RunMetrics(model_name, config, orig_m, pr_m, comparison, details)
    return PruneOutcome(run, pruned, model_dir, time.time() - t0, extra)


def ab_test(original: LoadedModel, pruned: LoadedModel, suite: PromptSuite | str, config: ABConfig | None = None,
            data_dir: str | os.PathLike | None = None, progress: Progress = no_progress) -> ABResult:
    """A/B-test responses: every prompt of `suite` (a `PromptSuite`, or a name/path for `load_suite`) through the
    original and the pruned model with the same settings, compared prompt by prompt (`evaluation.ab`)."""
    config = config or ABConfig()
    check_same_tokenizer(original.tokenizer, pruned.tokenizer, original.model, pruned.model)
    if not isinstance(suite, PromptSuite):
        suite = load_suite(suite, config.limit, data_dir)
    return run_ab(original.model, pruned.model, original.tokenizer, suite, config, progress=progress)


def contract_templates() -> dict[str, str]:
    """The bundled quality-contract templates ({name: what it is for}); `Contract.load(name)` reads one."""
    from minillm_core.evaluation.gates import TEMPLATES

    return dict(TEMPLATES)


def load_search(data: bytes | str) -> dict[str, Any]:
    """A threshold-search curve saved by `minillm search --out search.json`, validated enough to plot."""
    from minillm_core.evaluation.gates import load_search as read_curve

    return read_curve(data)


def steps_of(evaluate_original: bool, save_model: bool = True, reconstruct: bool = False) -> list[str]:
    """The step names `prune_and_evaluate` reports, in order, for a progress display."""
    steps = [EVALUATE_ORIGINAL] if evaluate_original else []
    steps += [PRUNE] + ([RECONSTRUCT] if reconstruct else []) + ([SAVE] if save_model else []) + [EVALUATE_PRUNED]
    return steps + ([COMPARE] if evaluate_original else [])

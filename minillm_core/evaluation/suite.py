"""One evaluation suite for CLI, jobs and search: perplexity, zero-shot tasks, speed/size, KL/agreement vs original.

Results are flat metric dicts ("ppl/wikitext2", "acc/average", "speed/decode_tps/bs1", ...) in a stable run schema.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.ab import ABConfig, run_ab
from minillm_core.evaluation.compare import check_same_tokenizer, compare_models, retained
from minillm_core.evaluation.perplexity import (
    PairedPerplexity,
    PerplexityResult,
    perplexity_on,
    perplexity_pair,
    token_windows,
    tokenize_prefix,
)
from minillm_core.evaluation.speed import SpeedConfig, disk_mb, measure_speed
from minillm_core.evaluation.tasks import ALL_TASKS, TASKS
from minillm_core.evaluation.zeroshot import average_accuracy, evaluate_tasks, to_lm_eval_json
from minillm_core.modeling.base import count_params, max_context
from minillm_core.options import option
from minillm_core.outputs import write_json_atomic, write_text_atomic
from minillm_core.progress import Progress, no_progress
from minillm_core.prompts import load_suite

RUN_SCHEMA = "minillm.run/1"
PPL_DATASETS = ("wikitext2", "ptb")
#: Metrics where lower is better, and where higher is better (the rest, e.g. a parameter ratio, have no better side).
LOWER_IS_BETTER_PREFIXES = ("ppl/", "kl/", "params", "size_mb", "disk_mb", "memory/", "speed/prefill_ms",
                            "llamacpp/ppl/", "llamacpp/file_mb", "ab/kl", "ab/worst_kl")
HIGHER_IS_BETTER_PREFIXES = ("acc", "agreement/", "speed/decode_tps", "llamacpp/decode_tps/", "speedup/", "ab/")


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER_PREFIXES)


def direction(metric: str) -> int | None:
    """-1 when lower is better, +1 when higher is better, None when the metric has no better side."""
    return -1 if lower_is_better(metric) else 1 if metric.startswith(HIGHER_IS_BETTER_PREFIXES) else None


@dataclass(frozen=True)
class EvalConfig:
    """What to measure. `limit` caps perplexity windows and task items alike (None: full splits)."""

    perplexity: tuple[str, ...] = option(
        ("wikitext2",), "Perplexity set(s): wikitext2 (test), ptb (validation, the LLM-Pruner protocol).",
        choices=PPL_DATASETS, cli="ppl", label="perplexity on")
    seq_len: int = option(128, "Perplexity window: 128 (LLM-Pruner/FLAP/MINI-LLM tables) or 2048 (Wanda/SliceGPT).",
                          min=16, max=8192, label="window length (tokens)")
    tasks: tuple[str, ...] = option(
        (), "Zero-shot tasks, or 'all' for boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa "
        "(lm-eval prompts, acc and acc_norm).", choices=lambda: ALL_TASKS, label="zero-shot tasks")
    limit: int | None = option(None, "Quick runs: at most N perplexity windows and N items per task (0 or unset: all).",
                               min=1, label="windows per dataset / items per task")
    task_seed: int | None = option(None, "With --limit: a seeded random subset of items instead of the first N "
                                   "(lm-eval's --limit takes the first N).", unset="the first N")
    speed: bool = option(False, "Measure prefill latency and decode tokens/s at batch 1 and 8 (medians after "
                         "warm-up) and peak memory.", label="measure speed and memory")
    speed_config: SpeedConfig = field(default_factory=SpeedConfig)
    compare_windows: int = option(16, "Windows of each perplexity set used for KL divergence / top-1 agreement.",
                                  min=1, hidden=True)
    batch_size: int = option(8, "Sequences per forward pass.", min=1)
    data_dir: str | None = None
    ab: ABConfig | None = None  # with an original to compare to: also A/B-test responses on this prompt suite

    def __post_init__(self) -> None:
        for name in ("perplexity", "tasks"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise MiniLLMError(f"{name} must be a list of names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name, low in (("seq_len", 2), ("batch_size", 1), ("compare_windows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MiniLLMError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.speed, bool):
            raise MiniLLMError(f"speed must be true or false, got {self.speed!r}")
        if not isinstance(self.speed_config, SpeedConfig):
            raise MiniLLMError(f"speed_config must be a SpeedConfig, got {type(self.speed_config).__name__}")
        if self.task_seed is not None and (isinstance(self.task_seed, bool) or not isinstance(self.task_seed, int)):
            raise MiniLLMError(f"task_seed must be None or an integer, got {self.task_seed!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise MiniLLMError(f"data_dir must be None or a path, got {self.data_dir!r}")
        if self.ab is not None and not isinstance(self.ab, ABConfig):
            raise MiniLLMError(f"ab must be an ABConfig or None, got {type(self.ab).__name__}")
        bad = [d for d in self.perplexity if not isinstance(d, str) or d not in PPL_DATASETS]
        if bad:
            raise MiniLLMError(f"unknown perplexity dataset(s) {bad}; allowed: {', '.join(PPL_DATASETS)}")
        unknown = [t for t in self.tasks if not isinstance(t, str) or t not in TASKS]
        if unknown:
            raise MiniLLMError(f"unknown task(s) {unknown}; allowed: {', '.join(TASKS.names())}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise MiniLLMError(f"limit must be None (everything) or an integer >= 1, got {self.limit!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        """The inverse of `to_dict` (JSON lists back to tuples); unknown keys are an error naming the known ones."""
        if not isinstance(data, dict):
            raise MiniLLMError(f"evaluation settings must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(map(str, data)) - set(known))
        if unknown:
            raise MiniLLMError(f"unknown evaluation setting(s) {unknown}; known: {', '.join(known)}")
        try:
            speed = dict(data.get("speed_config") or {})
            if "batch_sizes" in speed:
                speed["batch_sizes"] = tuple(speed["batch_sizes"])
            ab = None if data.get("ab") is None else ABConfig(**data["ab"])
            return cls(**{**data, "speed_config": SpeedConfig(**speed), "ab": ab})
        except (TypeError, ValueError) as exc:
            raise MiniLLMError(f"malformed evaluation settings: {exc}") from None


def _size_metrics(model: Any, model_dir: str | os.PathLike | None) -> dict[str, float]:
    params = count_params(model)
    bytes_per = next(model.parameters()).element_size()
    out = {"params": params, "size_mb": params * bytes_per / 2**20}
    if model_dir is not None:
        out["disk_mb"] = disk_mb(model_dir)
    return out


def evaluate(model: Any, tokenizer: Any, config: EvalConfig, model_dir: str | os.PathLike | None = None,
             progress: Progress = no_progress, perplexities: dict[str, PerplexityResult] | None = None
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Measure one model. Returns (flat metrics, details: perplexity records and lm-eval JSON).

    `perplexities` are results already measured for some of the config's sets (a `paired_perplexity` pass)."""
    context = max_context(model)
    if config.perplexity and context is not None and config.seq_len > context:
        raise MiniLLMError(f"seq_len {config.seq_len} is longer than the model's context ({context} positions); "
                           f"allowed: 2..{context}")
    metrics = _size_metrics(model, model_dir)
    details: dict[str, Any] = {"perplexity": {}}
    for name in config.perplexity:
        r = (perplexities or {}).get(name) or perplexity_on(
            model, tokenizer, name, seq_len=config.seq_len, batch_size=config.batch_size, limit=config.limit,
            progress=lambda d, t, _l, n=name: progress(d, t, f"perplexity {n}"), data_dir=config.data_dir)
        metrics[f"ppl/{name}"] = r.ppl
        details["perplexity"][name] = r.to_dict()
    if config.tasks:
        results = evaluate_tasks(model, tokenizer, config.tasks, limit=config.limit, seed=config.task_seed,
                                 batch_size=config.batch_size, data_dir=config.data_dir, progress=progress)
        for task, r in results.items():
            for m, v in r.metrics.items():
                metrics[f"{m}/{task}"] = v
        metrics["acc/average"] = average_accuracy(results)
        details["lm_eval"] = to_lm_eval_json(results, str(getattr(model.config, "_name_or_path", "")),
                                             config.limit, config.task_seed)
        details["predictions"] = {t: r.predictions for t, r in results.items()}
    if config.speed:
        metrics.update(measure_speed(model, config.speed_config, progress))
    return metrics, details


def paired_perplexity(original: Any, pruned: Any, tokenizer: Any, config: EvalConfig, score_original: bool = True,
                      progress: Progress = no_progress) -> dict[str, PairedPerplexity]:
    """Per perplexity set, one pass of both models (`perplexity_pair`): the pruned model's perplexity, the original's
    (unless `score_original` is False) and KL / agreement on the first `compare_windows` windows."""
    from minillm_core.data import perplexity_text

    check_same_tokenizer(tokenizer, None, original, pruned)
    out = {}
    for name in config.perplexity:
        label = f"perplexity {name} ({'both models' if score_original else 'and KL to the original'})"
        out[name] = perplexity_pair(
            original, pruned, tokenizer, perplexity_text(name, data_dir=config.data_dir), seq_len=config.seq_len,
            batch_size=config.batch_size, limit=config.limit, compare_windows=config.compare_windows,
            score_original=score_original, progress=lambda d, t, _l, lab=label: progress(d, t, lab))
    return out


def agreement_metrics(pairs: dict[str, PairedPerplexity]) -> dict[str, float]:
    """`kl/<set>` and `agreement/<set>` of paired passes."""
    out = {}
    for name, pair in pairs.items():
        out[f"kl/{name}"] = pair.agreement.kl
        out[f"agreement/{name}"] = pair.agreement.agreement
    return out


def compare_metrics(original: Any, pruned: Any, tokenizer: Any, config: EvalConfig,
                    progress: Progress = no_progress) -> dict[str, float]:
    """KL / top-1 agreement of the pruned model vs the original on the first windows of each perplexity set (both
    models run on those windows only; `paired_perplexity` gets them from the perplexity pass instead)."""
    from minillm_core.data import perplexity_text

    out = {}
    for name in config.perplexity:
        ids = tokenize_prefix(tokenizer, perplexity_text(name, data_dir=config.data_dir),
                              config.seq_len * config.compare_windows)
        windows = token_windows(ids, config.seq_len, config.compare_windows)
        a = compare_models(original, pruned, windows, config.batch_size, progress)
        out[f"kl/{name}"] = a.kl
        out[f"agreement/{name}"] = a.agreement
    return out


def compare_to_original(original: Any, pruned: Any, tokenizer: Any, config: EvalConfig, orig_m: dict[str, float],
                        pr_m: dict[str, float], details: dict[str, Any], progress: Progress = no_progress,
                        agreements: dict[str, float] | None = None) -> dict[str, float]:
    """Everything measured against the original: KL/agreement on the perplexity sets (`agreements` when a paired
    pass measured them already), the A/B prompt suite (`config.ab`; its reference scores join `orig_m`/`pr_m`, its
    records `details["ab"]`) and the speed-ups."""
    if config.perplexity or config.ab is not None:
        check_same_tokenizer(tokenizer, None, original, pruned)
    comparison = dict(agreements) if agreements is not None else (
        compare_metrics(original, pruned, tokenizer, config, progress) if config.perplexity else {})
    if config.ab is not None:
        suite = load_suite(config.ab.prompts, config.ab.limit, config.data_dir)
        ab = run_ab(original, pruned, tokenizer, suite, config.ab, progress=progress)
        comparison |= ab.comparison()
        orig_m |= ab.model_metrics("original")
        pr_m |= ab.model_metrics("pruned")
        details["ab"] = ab.to_dict()
    return comparison | speedups(orig_m, pr_m)


def speedups(original: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    """Measured speed-up per batch size (decode tokens/s ratio, prefill latency ratio) and the parameter ratio."""
    out = {"param_ratio": original["params"] / pruned["params"]}
    for key, value in pruned.items():
        if key.startswith("speed/decode_tps/") and key in original:
            out[f"speedup/decode/{key.rsplit('/', 1)[1]}"] = value / original[key]
        if key.startswith("speed/prefill_ms/") and key in original:
            out[f"speedup/prefill/{key.rsplit('/', 1)[1]}"] = original[key] / value
    return out


def flat_metrics(original: dict[str, float], pruned: dict[str, float], comparison: dict[str, float]
                 ) -> dict[str, float]:
    """The names a contract clause can use: pruned values as is, `original/<m>`, `retained/<m>` (pruned / original)
    and the comparisons (`kl/...`, `speedup/...`, `ab/...`)."""
    out = dict(pruned)
    out |= {f"original/{k}": v for k, v in original.items()}
    out |= {f"retained/{k}": v for k, v in retained(original, pruned).items()}
    return out | comparison


@dataclass
class RunMetrics:
    """Original vs pruned measurements, in the run-directory schema the dashboard reads."""

    model: str
    config: EvalConfig
    original: dict[str, float]
    pruned: dict[str, float]
    comparison: dict[str, float]
    details: dict[str, Any]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def retained(self) -> dict[str, float]:
        return retained(self.original, self.pruned)

    def flat(self) -> dict[str, float]:
        """Every metric a contract can name: pruned values, `original/...`, `retained/...`, comparisons."""
        return flat_metrics(self.original, self.pruned, self.comparison)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RUN_SCHEMA, "created": self.created, "model": self.model,
                "eval_config": self.config.to_dict(),
                "original": self.original, "pruned": self.pruned, "retained": self.retained,
                "comparison": self.comparison, "details": self.details}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["metric", "original", "pruned", "retained"])
        for key in sorted(set(self.original) | set(self.pruned)):
            writer.writerow([key, self.original.get(key, ""), self.pruned.get(key, ""), self.retained.get(key, "")])
        for key, value in sorted(self.comparison.items()):
            writer.writerow([key, "", value, ""])
        return buf.getvalue()

    def side_files(self) -> dict[str, str]:
        """The files that go with metrics.json: `metrics.csv` and lm-eval's result JSON per measured model."""
        out = {"metrics.csv": self.to_csv()}
        if self.details.get("ab"):
            out["ab.json"] = json.dumps(self.details["ab"], indent=1)
        for which in ("original", "pruned"):
            lm = self.details.get(which, {}).get("lm_eval")
            if lm:
                out[f"lm_eval_{which}.json"] = json.dumps(lm, indent=1)
        return out

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Write metrics.json (schema minillm.run/1), metrics.csv and lm-eval result files into `run_dir`."""
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / "metrics.json", self.to_dict())
        for name, text in self.side_files().items():
            write_text_atomic(path / name, text)
        return path


def evaluate_pair(original: Any, pruned: Any, tokenizer: Any, config: EvalConfig, model_name: str = "",
                  pruned_dir: str | os.PathLike | None = None, original_dir: str | os.PathLike | None = None,
                  progress: Progress = no_progress) -> RunMetrics:
    """Evaluate original and pruned model with the same config, plus KL/agreement and measured speed-ups."""
    pairs = paired_perplexity(original, pruned, tokenizer, config, progress=progress)
    orig_m, orig_d = evaluate(original, tokenizer, config, original_dir,
                              lambda d, t, label: progress(d, t, f"original: {label}"),
                              perplexities={n: p.original for n, p in pairs.items()})
    pr_m, pr_d = evaluate(pruned, tokenizer, config, pruned_dir, lambda d, t, label: progress(d, t, f"pruned: {label}"),
                          perplexities={n: p.pruned for n, p in pairs.items()})
    details = {"original": orig_d, "pruned": pr_d}
    comparison = compare_to_original(original, pruned, tokenizer, config, orig_m, pr_m, details, progress,
                                     agreements=agreement_metrics(pairs))
    return RunMetrics(model_name, config, orig_m, pr_m, comparison, details)

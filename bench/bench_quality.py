"""Quality benchmark (issue 11): what re-fitting the kept weights, OBS selection and per-layer ratios buy.

SmolLM2-135M, the same c4 calibration for every variant (`--calib` rows x 128 tokens, seed 0), no recovery. Each
(variant, ratio) runs in a fresh process, the way `minillm prune` runs (pruned in place, re-fitted one layer at a
time): scoring, planning, surgery and reconstruction are timed together, the peak RSS is read before any
evaluation (so it is the prune's peak), then WikiText-2 test and PTB validation perplexity
with 128-token windows (`--limit` windows per data set, 0 = the full splits). `wanda-sp scoring` is the memory
reference of the issue's target (peak of loading the model and running Wanda-sp scoring alone).
Outputs: bench/results/quality.json and quality.md (rows from bench/results/quality_parts/, git-ignored).
Run: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python bench/bench_quality.py --limit 40`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = RESULTS / "quality_parts"
MODEL = "smollm2-135m"
BOTH = {"target": "both"}  # heads and channels in every layer (LLM-Pruner's rule): the default before target auto
VARIANTS = {  # label -> (scorer, options, allocation, re-fit (target, select[, damping]) or None, calibration source[,
    # PlanConfig overrides])
    "flap": ("flap", {}, "uniform", None, "c4"),
    "flap + reconstruct": ("flap", {}, "uniform", ("local", "plan"), "c4"),
    "flap + reconstruct, schedule": ("flap", {}, "schedule", ("local", "plan"), "c4"),
    "obs + reconstruct": ("obs", {}, "uniform", ("local", "plan"), "c4"),
    "obs + reconstruct, dense target": ("obs", {}, "uniform", ("dense", "plan"), "c4"),
    # "default..." rows: the default pipeline before target auto (target both; the label kept with its results)
    "default: flap + reconstruct, OBS re-selection": ("flap", {}, "uniform", ("local", "obs"), "c4", BOTH),
    "default (auto: channels first below 30%)": ("flap", {}, "uniform", ("local", "obs"), "c4", {"target": "auto"}),
    "obs sequential + reconstruct, global": ("obs", {}, "global", ("local", "obs"), "c4"),
    "obs sequential + reconstruct, searched": ("obs", {}, "search", ("local", "obs"), "c4"),
    "fms exact-layerwise + reconstruct": ("minillm", {"estimator": "exact-layerwise"}, "uniform", ("local", "plan"),
                                          "c4"),
    "default, self calibration": ("flap", {}, "uniform", ("local", "obs"), "self", BOTH),
    "default, dense target (every layer re-fitted)": ("flap", {}, "uniform", ("dense", "obs"), "c4", BOTH),
    "default, residual target (every layer re-fitted)": ("flap", {}, "uniform", ("residual", "obs"), "c4", BOTH),
    "default, MLP channels only": ("flap", {}, "uniform", ("local", "obs"), "c4", {"target": "channels"}),
    "obs global, MLP channels only": ("obs", {}, "global", ("local", "obs"), "c4", {"target": "channels"}),
    "default, channels first": ("flap", {}, "uniform", ("local", "obs"), "c4", {"target": "channels-first"}),
    "default, channels first, self calibration": ("flap", {}, "uniform", ("local", "obs"), "self",
                                                  {"target": "channels-first"}),
    "default, channels first, damping 0.1": ("flap", {}, "uniform", ("local", "obs", 0.1), "c4",
                                             {"target": "channels-first"}),
    "default, channels first, damping 0.001": ("flap", {}, "uniform", ("local", "obs", 0.001), "c4",
                                               {"target": "channels-first"}),
    "default, channels first, schedule": ("flap", {}, "schedule", ("local", "obs"), "c4",
                                          {"target": "channels-first"}),
    "default, channels first, protect 0 and 29": ("flap", {}, "uniform", ("local", "obs"), "c4",
                                                  {"target": "channels-first", "protected_layers": (0, 29)}),
    "default, channels first, protect none": ("flap", {}, "uniform", ("local", "obs"), "c4",
                                              {"target": "channels-first", "protected_layers": ()}),
    "obs sequential + reconstruct, searched over all layers": ("obs", {}, "search", ("local", "obs"), "c4",
                                                               {"protected_layers": ()}),
}
DEFAULT_VARIANTS = ("flap", "flap + reconstruct", "obs + reconstruct", "default: flap + reconstruct, OBS re-selection",
                    "obs sequential + reconstruct, global", "obs sequential + reconstruct, searched",
                    "fms exact-layerwise + reconstruct")
DATASETS = ("wikitext2", "ptb")
#: Dense SmolLM2-135M on the full splits with this perplexity code (bench/results/scoring.md), quoted when a full-split
#: run skips the dense row (`--no-references`) to save its ~16 CPU-minutes.
DENSE_FULL = (56.09, 99.01)
ZEROSHOT_SEED = 1234  # `--zeroshot N`: N items per task drawn with this seed (lm-eval --limit with a seeded subset)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _perplexities(model, tokenizer, limit: int | None) -> dict[str, float]:
    from minillm_core.evaluation.perplexity import perplexity_on

    out = {}
    for name in os.environ.get("BENCH_QUALITY_DATASETS", ",".join(DATASETS)).split(","):
        r = perplexity_on(model, tokenizer, name, seq_len=128, limit=limit)
        out[f"ppl/{name}"], out[f"windows/{name}"] = r.ppl, r.n_windows
    items = int(os.environ.get("BENCH_QUALITY_ZEROSHOT", "0"))
    if items:  # the 7 tasks on a fixed seeded subset (the same items for every variant)
        from minillm_core.evaluation.zeroshot import ALL_TASKS, average_accuracy, evaluate_tasks

        results = evaluate_tasks(model, tokenizer, ALL_TASKS, limit=items, seed=ZEROSHOT_SEED)
        out |= {f"acc/{t}": r.metrics["acc"] for t, r in results.items()}
        out["acc/mean7"], out["zeroshot_items"] = average_accuracy(results), items
    return out


def run_one(label: str, ratio: float, calib_rows: int, limit: int | None) -> dict:
    """One variant at one ratio in this process: prune (timed, peak memory), then evaluate."""
    from minillm_core import workflow
    from minillm_core.errors import MiniLLMError
    from minillm_core.workflow import CalibrationConfig, PlanConfig, ReconstructConfig, ScoreConfig, SearchConfig

    torch.manual_seed(0)
    loaded = workflow.load(MODEL, dtype="float32", device="cpu")
    row = {"variant": label, "ratio": ratio, "calibration_rows": calib_rows, "seq_len": 128}
    if label == "dense":
        return row | {"rss_prune_mb": _rss_mb()} | _perplexities(loaded.model, loaded.tokenizer, limit)
    if label == "wanda-sp scoring":
        calib = workflow.calibrate(loaded, CalibrationConfig("c4", n_samples=calib_rows, seq_len=128, seed=0))
        t0 = time.perf_counter()
        workflow.score(loaded.model, ScoreConfig("wanda-sp"), calib)
        return row | {"prune_s": time.perf_counter() - t0, "rss_prune_mb": _rss_mb()}
    scorer, options, allocation, refit, source, *more = VARIANTS[label]
    t0 = time.perf_counter()
    calib = workflow.calibrate(loaded, CalibrationConfig(source, n_samples=calib_rows, seq_len=128, seed=0))
    t_calib = time.perf_counter()
    scores = workflow.score(loaded.model, ScoreConfig(scorer, options), calib)
    t_score = time.perf_counter()
    base = workflow.plan_defaults(loaded.model)
    # target both unless the variant says otherwise: what every variant before target auto measured
    overrides = {"protected_layers": base.protected_layers, **BOTH, **(more[0] if more else {})}
    recon = ReconstructConfig(target=refit[0], select=refit[1], damping=refit[2] if len(refit) > 2 else 0.01) \
        if refit else ReconstructConfig(enabled=False)
    try:
        config = PlanConfig(ratio=ratio, allocation=allocation, **overrides)
        if allocation == "search":
            plan = workflow.search_plan(loaded, scores, config, calib, SearchConfig(), recon)
        else:
            plan = workflow.make_plan(loaded, scores, config)
    except MiniLLMError as exc:  # e.g. a ratio this variant cannot reach: recorded, not fatal
        return row | {"error": str(exc)}
    t_plan = time.perf_counter()
    summary = workflow.summary_of(plan, loaded.model)
    report = None
    if refit is None:  # in place, as `minillm prune` does: one model in memory
        pruned = workflow.prune(loaded.model, plan, inplace=True)
    else:
        pruned, plan, report = workflow.prune_and_reconstruct(loaded.model, plan, calib, recon, inplace=True)
    t_end = time.perf_counter()
    rss = _rss_mb()
    row |= {"scorer": scorer, "options": options, "allocation": allocation, "reconstruct": refit,
            "calibration": source, "removed_fraction": summary.removed_fraction,
            "removed_fraction_blocks": summary.removed_fraction_non_embedding,
            "widths": [[len(k.heads), len(k.channels)] for k in plan.layers],
            "calibrate_s": t_calib - t0, "score_s": t_score - t_calib, "prune_s": t_end - t0,
            "plan_s": t_plan - t_score, "reconstruct_s": t_end - t_plan if refit else 0.0, "rss_prune_mb": rss}
    if allocation == "search":
        row["search"] = plan.provenance["search"]
    if report is not None:
        errs = [(r["error_before"], r["error_after"]) for r in report["projections"]]
        row["mean_projection_error"] = [sum(e[0] for e in errs) / len(errs), sum(e[1] for e in errs) / len(errs)]
    return row | _perplexities(pruned, loaded.tokenizer, limit)


def _part(label: str, ratio: float, limit: int | None, calib: int) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in label)
    sets = os.environ.get("BENCH_QUALITY_DATASETS", ",".join(DATASETS)).replace(",", "+")
    zs = os.environ.get("BENCH_QUALITY_ZEROSHOT", "0")
    return PARTS / f"{safe}_{ratio}_{limit or 'full'}_{calib}_{sets}{'_zs' + zs if zs != '0' else ''}.json"


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    dense = next((r for r in rows if r["variant"] == "dense"), {})
    wanda = {r["calibration_rows"]: r for r in rows if r["variant"] == "wanda-sp scoring"}
    windows = "full splits" if not args.limit else f"first {args.limit} windows"
    quoted = not dense and not args.limit
    if quoted:
        dense = {"ppl/wikitext2": DENSE_FULL[0], "ppl/ptb": DENSE_FULL[1]}
    lines = [
        "# Quality: reconstruction, OBS selection and per-layer ratios (issue 11)", "",
        f"SmolLM2-135M (float32, CPU, {os.environ.get('OMP_NUM_THREADS', '?')} thread(s)), c4 calibration "
        f"{' / '.join(map(str, args.calib_curve or [args.calib]))} x 128 tokens (seed 0) for every variant unless "
        "stated, default protected layers, no recovery. "
        f"Perplexity: 128-token windows, {windows} of "
        + " and ".join({"wikitext2": "WikiText-2 test", "ptb": "PTB validation"}[d] for d in args.datasets)
        + ". Prune time = calibration "
        "+ scoring + planning + surgery + reconstruction; peak = process max RSS before evaluation (includes the "
        f"loaded model). Reproduce: `MINILLM_DATA_DIR=../shared/data "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python bench/bench_quality.py "
        f"--limit {args.limit} " + (f"--calib-curve {' '.join(map(str, args.calib_curve))}" if args.calib_curve
                                    else f"--calib {args.calib}")
        + (f" --pairs {' '.join(repr(p) for p in args.pairs)}" if args.pairs
           else f" --ratios {' '.join(map(str, args.ratios))} --variants {' '.join(repr(v) for v in args.variants)}")
        + f" --datasets {' '.join(args.datasets)}{' --no-references' if args.no_references else ''}"
        + (f" --zeroshot {args.zeroshot}" if args.zeroshot else "")
        + (f" --stem {args.stem}" if args.stem else "") + "`."
        + (f" Zero-shot: mean acc of the 7 tasks (lm-eval 0.4 prompts) on the same {args.zeroshot} seeded items per "
           f"task (seed {ZEROSHOT_SEED}); one item moves a task's acc by {1 / args.zeroshot:.1%}."
           if args.zeroshot else ""), "",
        f"Dense: WikiText-2 {_fmt(dense.get('ppl/wikitext2'), '.2f')}, PTB {_fmt(dense.get('ppl/ptb'), '.2f')}"
        + (f", zero-shot mean {_fmt(dense.get('acc/mean7'), '.3f')}" if args.zeroshot else "")
        + (" (quoted from scoring.md, not measured in this run). " if quoted else ". ")
        + "Wanda-sp scoring peak: "
        + ", ".join(f"{r['rss_prune_mb']:.0f} MB ({c} rows)" for c, r in sorted(wanda.items())) + ".", "",
        "| ratio | variant | calib rows | removed (all / blocks) | WikiText-2 | PTB | 0-shot mean | prune s | "
        "score s | plan s | re-fit s | peak MB | peak / wanda-sp |", "|---" * 13 + "|"]
    for r in sorted((r for r in rows if "removed_fraction" in r), key=lambda r: (
            r["ratio"], list(VARIANTS).index(r["variant"]), r["calibration_rows"])):
        ref = wanda.get(r["calibration_rows"])
        rel = r["rss_prune_mb"] / ref["rss_prune_mb"] if ref else None
        lines.append(
            f"| {r['ratio']:.0%} | {r['variant']} | {r['calibration_rows']} | "
            f"{r['removed_fraction']:.1%} / {r['removed_fraction_blocks']:.1%} "
            f"| {_fmt(r.get('ppl/wikitext2'))} | {_fmt(r.get('ppl/ptb'))} | {_fmt(r.get('acc/mean7'), '.3f')} "
            f"| {r['prune_s']:.0f} | {r['score_s']:.0f} | "
            f"{r.get('plan_s', 0):.0f} | {r['reconstruct_s']:.0f} | {r['rss_prune_mb']:.0f} | {_fmt(rel, '.2f')} |")
    lines += [f"| {r['ratio']:.0%} | {r['variant']} | {r['calibration_rows']} | not possible: {r['error']} |"
              for r in rows if "error" in r]
    lines += ["", "Targets (full WikiText-2 split): 20% <= 90, 50% <= 350; prune peak <= 1.3x Wanda-sp scoring; "
              "default pipeline under 5 minutes.", ""]
    meta = {"machine": platform.platform(), "torch": torch.__version__, "limit": args.limit, "calib": args.calib,
            "threads": os.environ.get("OMP_NUM_THREADS")}
    stem = args.stem or ("quality_calibration" if args.calib_curve else "quality" if args.limit else "quality_full")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=40, help="windows per data set; 0 = full splits")
    parser.add_argument("--calib", type=int, default=64, help="calibration rows (x 128 tokens)")
    parser.add_argument("--calib-curve", type=int, nargs="+", help="run each variant at these calibration sizes "
                        "instead (writes quality_calibration.*)")
    parser.add_argument("--one", nargs=2, metavar=("LABEL", "RATIO"), help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help="re-run rows already in quality_parts/")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--zeroshot", type=int, default=0, metavar="N",
                        help=f"also the 7-task zero-shot mean on N seeded items per task (seed {ZEROSHOT_SEED})")
    parser.add_argument("--stem", help="output name under bench/results/ (default by the kind of run)")
    parser.add_argument("--no-references", action="store_true", help="skip the dense and Wanda-sp rows")
    parser.add_argument("--pairs", nargs="+", metavar="VARIANT@RATIO", help="run just these (variant, ratio) pairs "
                        "instead of every variant at every ratio")
    parser.add_argument("--evidence", action="store_true", help="also write the risk band of the Plan page's ratio "
                        "slider, minillm_core/evidence/<model>.json, from the dense row and one variant per ratio")
    parser.add_argument("--evidence-label", default="default pipeline (FLAP widths, re-fit with OBS re-selection, "
                        "target auto)", help="what the evidence's variants are, in the words the Plan page shows")
    args = parser.parse_args()
    limit = args.limit or None
    if args.one:
        label, ratio = args.one[0], float(args.one[1])
        row = run_one(label, ratio, args.calib, limit)
        out = _part(label, ratio, limit, args.calib)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(row) + "\n")
        tmp.replace(out)
        return
    PARTS.mkdir(parents=True, exist_ok=True)
    sizes = args.calib_curve or [args.calib]
    os.environ["BENCH_QUALITY_DATASETS"] = ",".join(args.datasets)  # read by the per-variant processes
    os.environ["BENCH_QUALITY_ZEROSHOT"] = str(args.zeroshot)
    jobs = [] if args.no_references else [("dense", 0.0, sizes[0])] + [("wanda-sp scoring", 0.0, c) for c in sizes]
    if args.pairs:
        pairs = [(v, float(r)) for v, _, r in (p.rpartition("@") for p in args.pairs)]
        unknown = sorted({v for v, _ in pairs} - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
        jobs += [(v, r, c) for c in sizes for v, r in pairs]
    else:
        jobs += [(v, r, c) for c in sizes for r in args.ratios for v in args.variants]
    rows = []
    for label, ratio, calib in jobs:
        part = _part(label, ratio, limit, calib)
        if args.force or not part.exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", label, str(ratio), "--limit", str(args.limit),
                   "--calib", str(calib)]
            subprocess.run(cmd, check=True)
            print(f"{label} @ {ratio}, {calib} rows: {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(json.loads(part.read_text()))
    report(rows, args)
    if args.evidence:
        write_evidence(rows, args)


def write_evidence(rows: list[dict], args: argparse.Namespace) -> None:
    """The measured curve behind the Plan page's risk band (`minillm_core.runs.risk`): WikiText-2 perplexity of one
    variant per ratio beside the dense model's, on the same windows, with what was run and where the table is."""
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    points = sorted((r for r in rows if "removed_fraction" in r), key=lambda r: r["ratio"])
    if dense is None or len({r["ratio"] for r in points}) != len(points):
        raise SystemExit("--evidence needs the dense row (no --no-references) and one variant per ratio")
    windows = "the full test split" if not args.limit else f"the first {args.limit} windows of the test split"
    stem = args.stem or ("quality" if args.limit else "quality_full")
    data = {"model": MODEL, "metric": "ppl/wikitext2", "dense_ppl": dense["ppl/wikitext2"],
            "about": f"measured on SmolLM2-135M, {args.evidence_label}, c4 calibration {args.calib} x 128 tokens, "
                     f"WikiText-2 {windows} (128 tokens), no recovery; bench/results/{stem}.md",
            "points": [{"ratio": r["ratio"], "removed": r["removed_fraction"], "ppl": r["ppl/wikitext2"],
                        "variant": r["variant"]} for r in points]}
    path = Path(__file__).resolve().parent.parent / "minillm_core" / "evidence" / f"{MODEL}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"risk band evidence: {path}")


if __name__ == "__main__":
    main()

"""Scoring benchmark: every criterion and estimator on SmolLM2-135M, side by side, same calibration for all.

Stages (`--stage`, default all; outputs in bench/results/scoring_parts/, which `report` merges):
- score: each scorer `--repeats` times in a fresh process: wall time and peak memory of scoring alone;
- subset: 20% / 50% plans evaluated on the first `--limit` 128-token windows of WikiText-2 and PTB and a fixed
  zero-shot subset (every criterion);
- full: the whole WikiText-2 test / PTB validation splits (paper protocol) for `--labels` at `--full-ratios`
  (~16 min per model on one CPU core; runs of different labels may go in parallel);
- fidelity: forward-only estimators against exact FMS over probe counts;
- report: bench/results/scoring.json and scoring.md, with issue 3's targets computed from the rows.
Run: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python bench/bench_scoring.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = RESULTS / "scoring_parts"  # per-stage outputs (scores, rows), git-ignored; the report merges them
VARIANTS = {  # label -> (scorer, options, forward-only?, evaluate?)
    "magnitude": ("magnitude", {}, True, True),
    "random": ("random", {}, True, True),
    "wanda-sp": ("wanda-sp", {}, True, True),
    "flap": ("flap", {}, True, True),
    "taylor element (backprop, LLM-Pruner)": ("taylor", {"variant": "element"}, False, True),
    "taylor element, layer-streamed (backprop)": ("taylor", {"variant": "element", "stream": True}, False, False),
    "taylor vector (backprop)": ("taylor", {"variant": "vector"}, False, True),
    "minillm spsa (paper), 2 probes": ("minillm", {"estimator": "spsa", "n_probes": 2}, True, True),
    "minillm spsa (paper), 8 probes": ("minillm", {"estimator": "spsa", "n_probes": 8}, True, True),
    "minillm gates, 2 probes": ("minillm", {"estimator": "gates", "n_probes": 2}, True, True),
    "minillm exact-gates (backprop)": ("minillm", {"estimator": "exact-gates"}, False, True),
    "minillm exact-layerwise (FMS, exact G, backprop 1 layer at a time)": (
        "minillm", {"estimator": "exact-layerwise"}, False, True),
    "minillm exact-backprop (FMS, exact G, full backprop)": ("minillm", {"estimator": "exact-backprop"}, False, False),
}
FULL_SPLIT = ("flap", "taylor element (backprop, LLM-Pruner)",
              "minillm exact-layerwise (FMS, exact G, backprop 1 layer at a time)")
METRICS = ("ppl/wikitext2", "ppl/ptb", "acc/average", "params")


def _calibration(tok, n_samples: int):
    from minillm_core.calibration import CalibrationConfig, build_calibration

    return build_calibration(tok, CalibrationConfig("c4", n_samples=n_samples, seq_len=128, seed=0))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_one(scorer: str, options: dict, n_samples: int, out: Path, device: str = "cpu") -> dict:
    """In a fresh process: load, page every weight in, calibrate, score; report time and peak RSS (ru_maxrss).

    The weights are memory-mapped, so they are touched once before scoring: `loaded_rss_mb` is the resident model and
    `overhead_mb` = peak - loaded is what scoring itself added.
    """
    from minillm_core.loading import load_model
    from minillm_core.workflow import score

    lm = load_model("smollm2-135m", device=device, dtype="float32")
    with torch.no_grad():
        float(sum(p.detach().double().sum() for p in lm.model.parameters()))
    calibration = _calibration(lm.tokenizer, n_samples)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded, loaded_cuda = _rss_mb(), torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
    t0 = time.perf_counter()
    scores = score(lm.model, scorer, calibration, **options)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    scores.save(out)
    peak = _rss_mb()
    row = {"seconds": seconds, "peak_rss_mb": peak, "loaded_rss_mb": loaded, "overhead_mb": peak - loaded}
    if cuda:  # on GPU the figure that matters is device memory (torch.cuda.max_memory_allocated)
        peak_cuda = torch.cuda.max_memory_allocated() / 2**20
        row |= {"peak_cuda_mb": peak_cuda, "cuda_overhead_mb": peak_cuda - loaded_cuda}
    return row


def _run_scorers(n_samples: int, repeats: int, device: str = "cpu") -> dict[str, dict]:
    """Each scorer `repeats` times, each in a fresh process; medians. glibc's mmap threshold is fixed so freed
    tensors go back to the OS and peak RSS tracks live memory (with the default dynamic threshold the same run varied
    by over 400 MB here: 921-1354 MB for Wanda-sp)."""
    PARTS.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = {}
    for i, (label, (scorer, options, forward_only, evaluate)) in enumerate(VARIANTS.items()):
        out = PARTS / f"scores{i}.safetensors"
        cmd = [sys.executable, __file__, "--score-one", json.dumps([scorer, options, n_samples, str(out), device])]
        runs = []
        for _ in range(repeats):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                rows[label] = {"error": proc.stderr.strip().splitlines()[-1:]}
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if label in rows:
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows[label] = {"scorer": scorer, "options": options, "forward_only": forward_only, "evaluate": evaluate,
                       "scores": str(out), **med, "repeats": len(runs),
                       "peak_rss_mb_runs": [round(r["peak_rss_mb"], 1) for r in runs]}
        print(label, {k: v for k, v in rows[label].items() if k != "scores"}, flush=True)
    return rows


def _prune_and_evaluate(
    rows: dict[str, dict], labels, ratios: list[float], configs: dict, key: str, dense: bool = True,
) -> dict | None:
    """Evaluate the pruned model of every (label, ratio) under each EvalConfig in `configs`; returns dense metrics."""
    from minillm_core.evaluation.suite import evaluate
    from minillm_core.loading import load_model
    from minillm_core.planning import PlanConfig
    from minillm_core.scoring import GroupScores
    from minillm_core.workflow import make_plan as plan
    from minillm_core.workflow import prune as apply_plan

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")

    def measure(model) -> dict:
        merged = {}
        for config in configs.values():
            merged |= evaluate(model, lm.tokenizer, config)[0]
        return {k: merged[k] for k in METRICS if k in merged}

    dense_metrics = measure(lm.model) if dense else None
    print("dense", dense_metrics, flush=True)
    for label in labels:
        row = rows[label]
        scores = GroupScores.load(row["scores"])
        for ratio in ratios:
            pruned = apply_plan(lm.model, plan(lm.model, scores, PlanConfig(ratio=ratio)))
            row.setdefault(key, {})[f"{ratio:.0%}"] = measure(pruned)
            print(key, label, ratio, row[key][f"{ratio:.0%}"], flush=True)
    return dense_metrics


def _dense_full_split() -> dict | None:
    """The dense model's full-split perplexities, measured with the same protocol by bench_core.py (28 min here)."""
    path = RESULTS / "core.json"
    if not path.exists():
        return None
    row = next(r for r in json.loads(path.read_text())["rows"] if r["model"] == "dense")
    return {"ppl/wikitext2": row["wikitext2_ppl"], "ppl/ptb": row["ptb_ppl"], "params": row["params"],
            "source": "bench/results/core.json"}


def _fidelity(n_samples: int, probes: tuple[int, ...]) -> list[dict]:
    from minillm_core.loading import load_model
    from minillm_core.scoring.fidelity import probe_sweep
    from minillm_core.workflow import score

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    calibration = _calibration(lm.tokenizer, n_samples)
    reference = score(lm.model, "minillm", calibration, estimator="exact-layerwise")
    rows = []
    for estimator in ("spsa", "gates"):
        rows += probe_sweep(lm.model, lm.adapter, calibration, reference, probes=probes, estimator=estimator)
        print(rows[-1], flush=True)
    return rows


def _fmt(m: dict | None, keys=("ppl/wikitext2", "ppl/ptb", "acc/average")) -> str:
    if not m:
        return " | ".join("-" for _ in keys)
    return " | ".join(f"{m[k]:.3f}" if k.startswith("acc") else f"{m[k]:,.2f}" for k in keys)


def targets(result: dict, split: str) -> dict:
    """Issue 3's targets at 20%, computed from the measured rows of one split ("subset": every criterion; "full":
    the top criteria only)."""
    rows = {k: v for k, v in result["criteria"].items() if "error" not in v}
    ppl = {k: r[split]["20%"]["ppl/wikitext2"] for k, r in rows.items() if "20%" in r.get(split, {})}
    forward = {k: v for k, v in ppl.items() if rows[k]["forward_only"]}
    exact = next((k for k in ppl if "exact-layerwise" in k), None)
    if not forward:
        return {}
    best = min(forward, key=forward.get)
    peak = lambda label: rows[label]["peak_rss_mb"]  # noqa: E731
    taylor = next(k for k in rows if k.startswith("taylor element (backprop"))
    return {"split": split, "criteria": len(ppl), "recommended_forward_only": best, "wikitext2_ppl_20": forward[best],
            "lowest_of_all": forward[best] == min(ppl.values()), "best_overall": min(ppl, key=ppl.get),
            "exact_fms_ppl_20": ppl.get(exact), "vs_exact_fms": forward[best] / ppl[exact] - 1 if exact else None,
            "memory_vs_wanda_sp": peak(best) / peak("wanda-sp"), "memory_vs_taylor": peak(best) / peak(taylor)}


def _markdown(result: dict) -> str:
    ratios, rows, d = result["ratios"], result["criteria"], result["dense"]
    wanda = rows.get("wanda-sp", {}).get("peak_rss_mb")
    gpu = any("peak_cuda_mb" in r for r in rows.values())
    lines = ["## Scoring cost", "", "| criterion | forward-only | scoring s | peak RSS MB | scoring overhead MB | "
             "peak / Wanda-sp |" + (" peak CUDA MB | CUDA overhead MB |" if gpu else ""),
             "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "")]
    for label, row in rows.items():
        if "error" in row:
            lines.append(f"| {label} | failed: {row['error']} | | | | |")
            continue
        ratio = f"{row['peak_rss_mb'] / wanda:.2f}" if wanda else "-"
        cuda = f" {row['peak_cuda_mb']:.0f} | {row['cuda_overhead_mb']:.0f} |" if gpu else ""
        lines.append(f"| {label} | {'yes' if row['forward_only'] else 'no'} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['overhead_mb']:.0f} | {ratio} |{cuda}")
    lines += ["", f"## Quality on subsets ({result['eval']})", "",
              "| criterion | " + " | ".join(f"wiki2 ppl {r} | PTB ppl {r} | acc {r}" for r in ratios) + " |",
              "|---|" + "---:|---:|---:|" * len(ratios)]
    lines.append("| dense | " + " | ".join(_fmt(d.get("subset")) for _ in ratios) + " |")
    for label, row in rows.items():
        if "subset" in row:
            lines.append(f"| {label} | " + " | ".join(_fmt(row["subset"].get(r)) for r in ratios) + " |")
    full = [(label, row["full"]) for label, row in rows.items() if "full" in row]
    if full:
        fr = sorted({r for _, f in full for r in f})
        keys = ("ppl/wikitext2", "ppl/ptb")
        lines += ["", "## Full splits (WikiText-2 test, PTB validation; 128-token windows, paper protocol)", "",
                  "| criterion | " + " | ".join(f"wiki2 ppl {r} | PTB ppl {r}" for r in fr) + " |",
                  "|---|" + "---:|---:|" * len(fr),
                  "| dense | " + " | ".join(_fmt(d.get("full"), keys) for _ in fr) + " |"]
        lines += [f"| {label} | " + " | ".join(_fmt(f.get(r), keys) for r in fr) + " |" for label, f in full]
    for t in result.get("targets", []):
        ok = lambda good: "**met**" if good else "**missed**"  # noqa: E731
        vs = t["vs_exact_fms"]
        lines += ["", f"## Issue 3 targets at 20% ({t['split']} splits, {t['criteria']} criteria)", "",
                  f"- recommended forward-only method (lowest WikiText-2 perplexity among forward-only criteria): "
                  f"**{t['recommended_forward_only']}**, {t['wikitext2_ppl_20']:,.2f}",
                  f"- lowest perplexity of all criteria: {ok(t['lowest_of_all'])}"
                  + ("" if t["lowest_of_all"] else f" (best: {t['best_overall']})"),
                  "- within 2% of FMS with the exact gradient"
                  + ("" if vs is None else f" ({t['exact_fms_ppl_20']:,.2f}): {vs:+.1%}, {ok(vs <= 0.02)}"),
                  f"- peak scoring memory <= 1.25x Wanda-sp's: {t['memory_vs_wanda_sp']:.2f}x, "
                  f"{ok(t['memory_vs_wanda_sp'] <= 1.25)}",
                  f"- peak scoring memory <= 0.5x backprop Taylor's: {t['memory_vs_taylor']:.2f}x, "
                  f"{ok(t['memory_vs_taylor'] <= 0.5)}"]
    if result.get("fidelity"):
        lines += ["", "## Fidelity of forward-only estimators against exact FMS (exact-layerwise)", "",
                  f"{result.get('fidelity_note', '')}", "",
                  "| estimator | probes | seconds | cosine | mean Spearman heads | mean Spearman channels |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {f['estimator']} | {f['n_probes']} | {f['seconds']:.1f} | {f['cosine']:.3f} | "
                  f"{f['mean_spearman_heads']:.3f} | {f['mean_spearman_channels']:.3f} |" for f in result["fidelity"]]
    return "\n".join(lines) + "\n"


def _load(name: str):
    path = PARTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(name: str, value) -> None:
    PARTS.mkdir(parents=True, exist_ok=True)
    (PARTS / f"{name}.json").write_text(json.dumps(value, indent=1, default=str))


def main() -> None:
    from minillm_core.evaluation.suite import EvalConfig

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--score-one", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("all", "score", "subset", "full", "fidelity", "report"), default="all",
                        help="run one stage (outputs in bench/results/scoring_parts/) or all; report merges them")
    parser.add_argument("--n-samples", type=int, default=16, help="calibration sequences of 128 tokens (C4 sample)")
    parser.add_argument("--device", default="cpu", help="score stage: cpu or cuda (adds torch.cuda peak memory)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process scoring runs per criterion (median)")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--full-ratios", default="0.2", help="ratios evaluated on the full splits")
    parser.add_argument("--labels", help="full stage: ';'-separated criteria (default: the top ones); results merge")
    parser.add_argument("--limit", type=int, default=40, help="perplexity windows per set (subset stage)")
    parser.add_argument("--task-limit", type=int, default=50, help="items per zero-shot task")
    parser.add_argument("--tasks", default="arc_easy,piqa,winogrande")
    parser.add_argument("--fidelity-samples", type=int, default=8)
    parser.add_argument("--probes", default="4,16,64")
    args = parser.parse_args()
    if args.score_one:
        scorer, options, n, out, *rest = json.loads(args.score_one)
        print(json.dumps(score_one(scorer, options, n, Path(out), *rest)))
        return
    stages = ("score", "subset", "full", "fidelity", "report") if args.stage == "all" else (args.stage,)
    ratios = [float(r) for r in args.ratios.split(",")]
    tasks = tuple(args.tasks.split(","))
    if "score" in stages:
        _save("score", _run_scorers(args.n_samples, args.repeats, args.device))
    if "subset" in stages:
        rows = _load("score")
        configs = {"ppl": EvalConfig(perplexity=("wikitext2", "ptb"), limit=args.limit),
                   "zs": EvalConfig(perplexity=(), tasks=tasks, limit=args.task_limit)}
        labels = [k for k, r in rows.items() if r.get("evaluate") and "scores" in r]
        dense = _prune_and_evaluate(rows, labels, ratios, configs, "subset")
        _save("subset", {"dense": dense, "rows": {k: rows[k]["subset"] for k in labels}})
    if "full" in stages:
        rows = _load("score")
        configs = {"ppl": EvalConfig(perplexity=("wikitext2", "ptb"), limit=None)}
        labels = [k for k in (args.labels.split(";") if args.labels else FULL_SPLIT) if "scores" in rows.get(k, {})]
        ratios_full = [float(r) for r in args.full_ratios.split(",")]
        _prune_and_evaluate(rows, labels, ratios_full, configs, "full", False)
        part = "full-" + hashlib.sha1(json.dumps([labels, ratios_full]).encode()).hexdigest()[:8]  # parallel-safe
        _save(part, {"dense": _dense_full_split(), "rows": {k: rows[k]["full"] for k in labels}})
    if "fidelity" in stages:
        _save("fidelity", {"date": time.strftime("%Y-%m-%d"), "samples": args.fidelity_samples,
                           "rows": _fidelity(args.fidelity_samples, tuple(int(p) for p in args.probes.split(",")))})
    if "report" in stages:
        _report(args, ratios)


def _report(args, ratios: list[float]) -> None:
    rows, subset, fid = _load("score"), _load("subset") or {}, _load("fidelity")
    full: dict = {"rows": {}}
    for path in sorted(PARTS.glob("full*.json")):  # one file per full-split run; ratios merge per criterion
        part = json.loads(path.read_text())
        full["dense"] = part["dense"]
        for label, by_ratio in part["rows"].items():
            full["rows"].setdefault(label, {}).update(by_ratio)
    for label, row in rows.items():
        row.pop("scores", None)
        for key, part in (("subset", subset), ("full", full)):
            if label in part.get("rows", {}):
                row[key] = part["rows"][label]
    result = {"benchmark": "scoring", "model": "smollm2-135m", "calibration": f"c4 sample, {args.n_samples} x 128, "
              "seed 0", "plan": "uniform, default protected layers (0-3, 28-29), heads+channels, q-heads, round 8",
              "eval": f"first {args.limit} windows of WikiText-2 test and PTB validation (128 tokens); mean acc on "
                      f"the first {args.task_limit} items of {args.tasks}", "ratios": [f"{r:.0%}" for r in ratios],
              "dense": {"subset": subset.get("dense"), "full": full.get("dense")}, "criteria": rows,
              "fidelity": fid["rows"] if fid else [],
              "fidelity_note": f"{fid['samples']} x 128 calibration, measured {fid['date']}" if fid else "",
              "memory": "peak RSS (ru_maxrss) of a fresh process that loads the model, pages every weight in, "
                        "builds calibration and scores; overhead = peak - RSS before scoring",
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}, "date": time.strftime("%Y-%m-%d")}
    result["targets"] = [t for t in (targets(result, "subset"), targets(result, "full")) if t]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(result, indent=1, default=str))
    md = (f"# Scoring benchmark: SmolLM2-135M\n\nCalibration {result['calibration']}, the same for every criterion; "
          f"plan {result['plan']}; no recovery. Memory: {result['memory']}. {result['date']}, CPU fp32, "
          "one thread per process.\n\n" + _markdown(result))
    (RESULTS / "scoring.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()

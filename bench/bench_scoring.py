"""Scoring benchmark: every criterion and estimator on SmolLM2-135M, side by side in one run, same calibration.

Each scorer runs in a fresh process (peak RSS and wall time of scoring alone); then 20% / 50% plans are evaluated
(WikiText-2 + PTB perplexity on the first `--limit` 128-token windows, mean acc on a fixed zero-shot subset), and the
forward-only estimators' fidelity against backprop FMS is swept over probe counts.
Writes bench/results/scoring.json and scoring.md. Run: `MINILLM_DATA_DIR=../shared/data python bench/bench_scoring.py`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {  # label -> (scorer, options, forward-only?)
    "magnitude": ("magnitude", {}, True),
    "random": ("random", {}, True),
    "wanda-sp": ("wanda-sp", {}, True),
    "flap": ("flap", {}, True),
    "taylor (element, backprop)": ("taylor", {"variant": "element"}, False),
    "taylor (vector, backprop)": ("taylor", {"variant": "vector"}, False),
    "minillm spsa (paper, 4 probes)": ("minillm", {"estimator": "spsa", "n_probes": 4}, True),
    "minillm gates (default, 2 probes)": ("minillm", {"estimator": "gates"}, True),
    "minillm exact-gates (backprop)": ("minillm", {"estimator": "exact-gates"}, False),
    "FMS exact-layerwise (backprop)": ("minillm", {"estimator": "exact-layerwise"}, False),
}


def _calibration(tok, n_samples: int):
    from minillm_core.calibration import CalibrationConfig, build_calibration

    return build_calibration(tok, CalibrationConfig("c4", n_samples=n_samples, seq_len=128, seed=0))


def score_one(scorer: str, options: dict, n_samples: int, out: Path) -> dict:
    """In a fresh process: load, calibrate, score; report time and peak RSS (ru_maxrss, KiB on Linux)."""
    from minillm_core.loading import load_model
    from minillm_core.pipeline import score

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    calibration = _calibration(lm.tokenizer, n_samples)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    scores = score(lm.model, scorer, calibration, **options)
    seconds = time.perf_counter() - t0
    scores.save(out)
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_load_mb": rss_loaded}


def _run_scorers(n_samples: int, tmp: Path) -> dict[str, dict]:
    rows = {}
    for i, (label, (scorer, options, forward_only)) in enumerate(VARIANTS.items()):
        out = tmp / f"scores{i}.safetensors"
        cmd = [sys.executable, __file__, "--score-one", json.dumps([scorer, options, n_samples, str(out)])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            rows[label] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        rows[label] = {"scorer": scorer, "options": options, "forward_only": forward_only, "scores": str(out),
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(label, {k: v for k, v in rows[label].items() if k != "scores"}, flush=True)
    return rows


def _evaluate(rows: dict[str, dict], ratios: list[float], limit: int, task_limit: int, tasks: tuple[str, ...]):
    from minillm_core.evaluation.suite import EvalConfig, evaluate
    from minillm_core.loading import load_model
    from minillm_core.pipeline import apply_plan, plan
    from minillm_core.planning import PlanConfig
    from minillm_core.scoring import GroupScores

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    ppl = EvalConfig(perplexity=("wikitext2", "ptb"), limit=limit)
    zs = EvalConfig(perplexity=(), tasks=tasks, limit=task_limit)
    dense = evaluate(lm.model, lm.tokenizer, ppl)[0] | evaluate(lm.model, lm.tokenizer, zs)[0]
    for label, row in rows.items():
        if "scores" not in row:
            continue
        scores = GroupScores.load(row["scores"])
        for ratio in ratios:
            pruned = apply_plan(lm.model, plan(lm.model, scores, PlanConfig(ratio=ratio)))
            m = evaluate(pruned, lm.tokenizer, ppl)[0] | evaluate(pruned, lm.tokenizer, zs)[0]
            row[f"{ratio:.0%}"] = {k: m[k] for k in ("ppl/wikitext2", "ppl/ptb", "acc/average", "params")}
            print(label, ratio, row[f"{ratio:.0%}"], flush=True)
    return {k: dense[k] for k in ("ppl/wikitext2", "ppl/ptb", "acc/average", "params")}


def _fidelity(n_samples: int, probes: tuple[int, ...]) -> list[dict]:
    from minillm_core.loading import load_model
    from minillm_core.pipeline import score
    from minillm_core.scoring.fidelity import probe_sweep

    lm = load_model("smollm2-135m", device="cpu", dtype="float32")
    calibration = _calibration(lm.tokenizer, n_samples)
    reference = score(lm.model, "minillm", calibration, estimator="exact-layerwise")
    rows = []
    for estimator in ("spsa", "gates"):
        rows += probe_sweep(lm.model, lm.adapter, calibration, reference, probes=probes, estimator=estimator)
        print(rows[-1], flush=True)
    return rows


def _markdown(result: dict) -> str:
    ratios = result["ratios"]
    head = "| criterion | forward-only | scoring s | peak RSS MB | " + " | ".join(
        f"wiki2 ppl {r} | PTB ppl {r} | acc {r}" for r in ratios) + " |"
    lines = [head, "|---|---|---:|---:|" + "---:|---:|---:|" * len(ratios)]
    d = result["dense"]
    lines.append("| dense | - | - | - | " + " | ".join(
        f"{d['ppl/wikitext2']:.2f} | {d['ppl/ptb']:.2f} | {d['acc/average']:.3f}" for _ in ratios) + " |")
    for label, row in result["criteria"].items():
        if "error" in row:
            lines.append(f"| {label} | failed: {row['error']} |")
            continue
        cells = " | ".join(f"{row[r]['ppl/wikitext2']:.2f} | {row[r]['ppl/ptb']:.2f} | {row[r]['acc/average']:.3f}"
                           for r in ratios)
        lines.append(f"| {label} | {'yes' if row['forward_only'] else 'no'} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} | {cells} |")
    lines += ["", "Fidelity of forward-only estimators against backprop FMS (exact-layerwise), same calibration:", "",
              "| estimator | probes | seconds | cosine | mean Spearman heads | mean Spearman channels |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {f['estimator']} | {f['n_probes']} | {f['seconds']:.1f} | {f['cosine']:.3f} | "
              f"{f['mean_spearman_heads']:.3f} | {f['mean_spearman_channels']:.3f} |" for f in result["fidelity"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--score-one", help=argparse.SUPPRESS)
    parser.add_argument("--n-samples", type=int, default=16, help="calibration sequences of 128 tokens (C4 sample)")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--limit", type=int, default=40, help="perplexity windows per set")
    parser.add_argument("--task-limit", type=int, default=50, help="items per zero-shot task")
    parser.add_argument("--tasks", default="arc_easy,piqa,winogrande")
    parser.add_argument("--fidelity-samples", type=int, default=8)
    parser.add_argument("--probes", default="4,16,64")
    args = parser.parse_args()
    if args.score_one:
        scorer, options, n, out = json.loads(args.score_one)
        print(json.dumps(score_one(scorer, options, n, Path(out))))
        return
    ratios = [float(r) for r in args.ratios.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        criteria = _run_scorers(args.n_samples, Path(tmp))
        dense = _evaluate(criteria, ratios, args.limit, args.task_limit, tuple(args.tasks.split(",")))
    fidelity = _fidelity(args.fidelity_samples, tuple(int(p) for p in args.probes.split(",")))
    for row in criteria.values():
        row.pop("scores", None)
    result = {"benchmark": "scoring", "model": "smollm2-135m", "calibration": f"c4 sample, {args.n_samples} x 128, "
              "seed 0", "plan": "uniform, default protected layers (0-3, 28-29), heads+channels, q-heads, round 8",
              "eval": f"first {args.limit} windows of WikiText-2 test and PTB validation (128 tokens); mean acc on "
                      f"the first {args.task_limit} items of {args.tasks}", "ratios": [f"{r:.0%}" for r in ratios],
              "dense": dense, "criteria": criteria, "fidelity": fidelity,
              "memory": "peak RSS of a fresh process that loads the model, builds calibration and scores (ru_maxrss)",
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(result, indent=1, default=str))
    md = (f"# Scoring benchmark: SmolLM2-135M\n\nCalibration {result['calibration']}; plan {result['plan']}; "
          f"{result['eval']}. Memory: {result['memory']}. {result['date']}, CPU fp32.\n\n" + _markdown(result))
    (RESULTS / "scoring.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()

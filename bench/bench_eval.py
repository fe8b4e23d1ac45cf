"""Evaluation benchmark: SmolLM2-135M dense vs 20% and 50% pruned — 7 zero-shot tasks, perplexity, KL, agreement,
measured speed and size. Writes bench/results/eval.json and eval.md.

Run: `MINILLM_DATA_DIR=../shared/data python bench/bench_eval.py --scorer SCORER --limit 100`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from minillm_core.calibration import CalibrationConfig, build_calibration
from minillm_core.evaluation.speed import SpeedConfig
from minillm_core.evaluation.suite import EvalConfig, compare_metrics, evaluate, speedups
from minillm_core.evaluation.tasks import ALL_TASKS
from minillm_core.io import save_pruned
from minillm_core.loading import load_model
from minillm_core.planning import PlanConfig
from minillm_core.scoring import make_scorer
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan
from minillm_core.workflow import score

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scorer", default="magnitude")
    parser.add_argument("--option", action="append", default=[], help="scorer option key=value")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--limit", type=int, default=100, help="items per task and perplexity windows")
    parser.add_argument("--n-samples", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    calibration = None
    if make_scorer(args.scorer, **options).needs_calibration:
        calibration = build_calibration(tok, CalibrationConfig("c4", n_samples=args.n_samples, seq_len=128, seed=0))
    t0 = time.perf_counter()
    scores = score(model, args.scorer, calibration, **options)
    score_s = time.perf_counter() - t0
    config = EvalConfig(perplexity=("wikitext2", "ptb"), tasks=ALL_TASKS, limit=args.limit, speed=True,
                        speed_config=SpeedConfig(batch_sizes=(1, 8), prompt_len=128, new_tokens=32, repeats=5))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_dir = save_pruned(model, tok, Path(tmp) / "dense")
        dense, _ = evaluate(model, tok, config, dense_dir)
        rows.append({"model": "dense", "ratio": 0.0, **dense})
        print(rows[-1], flush=True)
        for ratio in (float(r) for r in args.ratios.split(",")):
            p = plan(model, scores, PlanConfig(ratio=ratio), model_name=args.model)
            pruned = apply_plan(model, p)
            out = save_pruned(pruned, tok, Path(tmp) / f"r{ratio}", plan=p)
            metrics, _ = evaluate(pruned, tok, config, out)
            metrics |= compare_metrics(model, pruned, tok, config) | speedups(dense, metrics)
            rows.append({"model": f"{args.scorer} {ratio:.0%}", "ratio": ratio, **metrics})
            print(rows[-1], flush=True)
    result = {"benchmark": "eval", "model": args.model, "scorer": args.scorer, "options": options,
              "scoring_seconds": score_s, "limit": args.limit, "tasks": list(ALL_TASKS),
              "protocol": "lm-eval 0.4 prompts, first `limit` items per task (HellaSwag: of the 1000-item mirror "
                          "subset); perplexity: first `limit` 128-token windows; KL/agreement: 16 windows",
              "rows": rows, "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                        "threads": torch.get_num_threads()}, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(result, indent=1))
    cols = ["params", "disk_mb", "ppl/wikitext2", "ppl/ptb", *[f"acc/{t}" for t in ALL_TASKS], "acc/average",
            "kl/wikitext2", "agreement/wikitext2", "speed/prefill_ms/bs1", "speed/decode_tps/bs1",
            "speed/decode_tps/bs8", "speedup/decode/bs1", "speedup/decode/bs8", "param_ratio"]
    lines = ["| metric | " + " | ".join(r["model"] for r in rows) + " |", "|---|" + "---:|" * len(rows)]
    for c in cols:
        lines.append(f"| {c} | " + " | ".join(_fmt(r.get(c)) for r in rows) + " |")
    header = (f"# Evaluation benchmark: {args.model}, scorer {args.scorer}\n\n{result['protocol']}; limit "
              f"{args.limit}; {result['date']}, CPU fp32, {result['machine']['threads']} threads. Speed-ups are "
              "measured (decode tokens/s ratio); `param_ratio` is the physical expectation.\n\n")
    (RESULTS / "eval.md").write_text(header + "\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


if __name__ == "__main__":
    main()

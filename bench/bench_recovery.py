"""Recovery benchmark: SmolLM2-135M pruned (magnitude) at 20% and 50%, then LoRA-recovered on the Alpaca subset.

Writes bench/results/recovery.json and .md: perplexity (zero-shot with --tasks) before/after, settings, wall time.
Run: `MINILLM_DATA_DIR=../shared/data python bench/bench_recovery.py [--ratios 0.2 0.5] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from minillm_core.calibration import CalibrationConfig, build_calibration
from minillm_core.evaluation.suite import EvalConfig, evaluate
from minillm_core.loading import load_model
from minillm_core.planning import PlanConfig
from minillm_core.recovery import RecoveryConfig, recover
from minillm_core.scoring import make_scorer
from minillm_core.workflow import count_params, score
from minillm_core.workflow import make_plan as plan
from minillm_core.workflow import prune as apply_plan

RESULTS = Path(__file__).resolve().parent / "results"


def _ppl(metrics: dict) -> float:
    return round(metrics["ppl/wikitext2"], 2)


def _acc(metrics: dict) -> float | None:
    value = metrics.get("acc/average")
    return None if value is None else round(100 * value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scorer", default="magnitude")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--limit", type=int, default=40, help="wikitext2 windows (128 tokens) and task items")
    parser.add_argument("--tasks", nargs="*", default=[], help="zero-shot tasks, e.g. arc_easy piqa (default: none)")
    parser.add_argument("--n-samples", type=int, default=RecoveryConfig.n_samples, help="Alpaca records")
    parser.add_argument("--epochs", type=int, default=RecoveryConfig.epochs)
    parser.add_argument("--learning-rate", type=float, default=RecoveryConfig.learning_rate)
    parser.add_argument("--calib-samples", type=int, default=32, help="C4 calibration sequences for data scorers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = RecoveryConfig(n_samples=args.n_samples, epochs=args.epochs, learning_rate=args.learning_rate)
    evaluation = EvalConfig(perplexity=("wikitext2",), tasks=tuple(args.tasks), limit=args.limit)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    dense_metrics, _ = evaluate(model, tok, evaluation)
    dense = dense_metrics["ppl/wikitext2"]
    print(f"dense wikitext2 ppl {dense:.2f}, zero-shot {_acc(dense_metrics)}", flush=True)
    calibration = None
    if make_scorer(args.scorer).needs_calibration:  # same calibration recipe as bench_scoring / bench_eval
        calibration = build_calibration(tok, CalibrationConfig("c4", n_samples=args.calib_samples, seq_len=128))
    scores = score(model, args.scorer, calibration)
    rows = []
    for ratio in args.ratios:
        p = plan(model, scores, PlanConfig(ratio=ratio), args.model)
        pruned = apply_plan(model, p)
        with tempfile.TemporaryDirectory() as tmp:
            result = recover(pruned, tok, config, out_dir=Path(tmp) / "recovered", evaluation=evaluation, plan=p,
                             on_step=lambda r: print(r.describe(), flush=True) if r.step % 5 == 0 else None)
        rec = result.record
        rows.append({
            "ratio": ratio, "params": count_params(pruned), "ppl_before": _ppl(result.before),
            "ppl_after": _ppl(result.after), "acc_before": _acc(result.before), "acc_after": _acc(result.after),
            "steps": rec["steps"], "examples": rec["examples"], "tokens": rec["tokens"],
            "train_seconds": rec["train_seconds"], "wall_seconds": rec["wall_seconds"],
            "tokens_per_second": rec["tokens_per_second"], "first_loss": rec["losses"][0]["loss"],
            "last_loss": rec["losses"][-1]["loss"], "losses": rec["losses"], "before": result.before,
            "after": result.after,
        })
        print({k: v for k, v in rows[-1].items() if k not in ("losses", "before", "after")}, flush=True)
    result = {
        "benchmark": "recovery", "model": args.model, "scorer": args.scorer, "dense_wikitext2_ppl": round(dense, 2),
        "dense_zeroshot_acc": _acc(dense_metrics), "evaluation": evaluation.to_dict(),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "protocol": f"wikitext2 test, '\\n\\n'.join(rows), first {args.limit} non-overlapping 128-token windows",
        "rows": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(result, indent=1))
    lines = ["| pruned | params | ppl before | ppl after | 0-shot acc before | after | updates | records | loss first "
             "-> last | train s | wall s | tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['ratio']:.0%} | {r['params']:,} | {r['ppl_before']} | {r['ppl_after']} | {r['acc_before']} | "
              f"{r['acc_after']} | {r['steps']} | {r['examples']} | {r['first_loss']:.2f} -> {r['last_loss']:.2f} | "
              f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['tokens_per_second']} |" for r in rows]
    lines += ["", f"Dense {args.model}: wikitext2 ppl {dense:.2f}. Scorer {args.scorer}, uniform allocation, default "
                  f"protected layers. LoRA rank {config.rank}, alpha {config.alpha}, dropout {config.dropout}, lr "
                  f"{config.learning_rate}, warmup {config.warmup_steps}, batch {config.batch_size} x accum "
                  f"{config.grad_accum}, max_length {config.max_length}, {config.passes} epoch(s), prompt masked, "
                  f"merged. Protocol: {result['protocol']}; {result['date']}, {result['machine']['platform']}, CPU "
                  f"fp32, {torch.get_num_threads()} thread(s)."]
    (RESULTS / "recovery.md").write_text("# Recovery benchmark: LoRA after pruning SmolLM2-135M\n\n"
                                         + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

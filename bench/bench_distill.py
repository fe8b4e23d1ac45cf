"""Distillation benchmark (issue 15, first measurement): LoRA-SFT vs LoRA-KD on the same data and token budget.

The pruned model is the default pipeline's (`minillm prune --model smollm2-135m --ratio R`, built once under
.cache/bench_ab/ like bench_ab.py). Both methods train the same LoRA (rank 8, lr 3e-4, warmup 5) on the same
seeded Alpaca records (prompt masked, `--max-length` tokens), for the same number of updates, so they see the same
tokens; `kd` distils the unpruned SmolLM2 (forward KL at T=1 at every token of the example). WikiText-2 test
perplexity on the first `--limit` 128-token windows before and after, train seconds, tokens. Outputs:
bench/results/distill.json and distill.md.
Run: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_distill.py`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ab import MODEL, pruned_dir

from minillm_core import workflow
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.io import load_plan
from minillm_core.recovery import RecoveryConfig, recover

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> (loss, trained weights)
METHODS = {"sft": ("sft", "lora"), "kd": ("kd", "lora"), "sft-full": ("sft", "full"), "kd-full": ("kd", "full"),
           "local": ("local", "full")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--methods", nargs="+", default=["sft", "kd"], choices=list(METHODS))
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="LoRA methods")
    parser.add_argument("--full-learning-rate", type=float, default=1e-4, help="methods that train every weight")
    parser.add_argument("--local-learning-rate", type=float, default=1e-3, help="block-local distillation")
    parser.add_argument("--local-epochs", type=int, default=4, help="block-local: passes over the rows per layer")
    parser.add_argument("--stem", default="distill", help="output name under bench/results/")
    args = parser.parse_args()
    path, _ = pruned_dir(args.ratio)
    pruned = workflow.load(str(path), device="cpu")
    teacher = workflow.load(MODEL, device="cpu").model
    evaluation = EvalConfig(perplexity=("wikitext2",), limit=args.limit)
    rows = []
    for method in args.methods:
        loss, trainable = METHODS[method]
        lr = args.local_learning_rate if loss == "local" else args.full_learning_rate if trainable == "full" \
            else args.learning_rate
        budget = {"epochs": args.local_epochs, "batch_size": 8} if loss == "local" else {"max_steps": args.updates}
        config = RecoveryConfig(method=loss, trainable=trainable, n_samples=args.records, max_length=args.max_length,
                                learning_rate=lr, **budget)
        with tempfile.TemporaryDirectory() as tmp:
            result = recover(pruned.model, pruned.tokenizer, config, out_dir=Path(tmp) / "r", evaluation=evaluation,
                             plan=load_plan(path), teacher=teacher if loss != "sft" else None)
        rec = result.record
        rows.append({"method": method, "learning_rate": lr, "trainable_params": rec["trainable_params"],
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                     "ppl_before": result.before["ppl/wikitext2"],
                     "ppl_after": result.after["ppl/wikitext2"], "updates": rec["steps"], "tokens": rec["tokens"],
                     "train_seconds": rec["train_seconds"], "first_loss": rec["losses"][0]["loss"],
                     "last_loss": rec["losses"][-1]["loss"], "losses": rec["losses"]})
        print({k: v for k, v in rows[-1].items() if k != "losses"}, file=sys.stderr, flush=True)
    protocol = (f"SmolLM2-135M-Instruct, `minillm prune --ratio {args.ratio}` defaults (no recovery before), then LoRA "
                f"rank 8 / alpha 16 / lr {args.learning_rate:g} (`-full`: every weight, AdamW lr "
                f"{args.full_learning_rate:g}) / warmup 5 / batch 4, {args.updates} updates on "
                f"{args.records} seeded "
                f"Alpaca records (prompt masked, {args.max_length} tokens), merged; kd = forward KL to the unpruned "
                f"model at T=1 at every token (prompt included). WikiText-2 test, first {args.limit} windows of 128 "
                f"tokens. local = block-local distillation of every pruned layer (its weights, AdamW lr "
                f"{args.local_learning_rate:g}, {args.local_epochs} passes per layer over the same records packed "
                f"into rows of {args.max_length} tokens, batch 8; tokens counted per layer pass). "
                f"Peak RSS: the process's maximum after the method (monotone: run LoRA methods first). "
                f"CPU float32, {torch.get_num_threads()} thread(s), {platform.machine()}.")
    payload = {"protocol": protocol, "ratio": args.ratio, "rows": rows,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    lines = ["# Recovery: SFT vs KD, LoRA vs every weight, at equal tokens (issue 15)", "", protocol, "",
             "| method | trained params | WikiText-2 before | after | updates | tokens | train loss first -> last | "
             "train s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['trainable_params']:,} | {r['ppl_before']:.1f} | {r['ppl_after']:.1f} | "
              f"{r['updates']} | {r['tokens']:,} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
              f"{r['train_seconds']:.0f} | {r['peak_rss_mb']:,} |" for r in rows]
    lines += ["", "The train losses are not comparable across methods (next-token NLL vs KL to the teacher)."]
    (RESULTS / f"{args.stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

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
import subprocess
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
from minillm_core.outputs import write_text_atomic
from minillm_core.recovery import RecoveryConfig, recover

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> (loss, trained weights, other RecoveryConfig settings)
METHODS = {"sft": ("sft", "lora", {}), "kd": ("kd", "lora", {}), "sft-full": ("sft", "full", {}),
           "kd-full": ("kd", "full", {}), "local": ("local", "full", {}),
           "kd-topk": ("kd", "lora", {"kd_top_k": 64}), "kd-self": ("kd", "lora", {"data": "self"})}


def run_one(method: str, args: argparse.Namespace) -> dict:
    """One method in this process (its peak RSS is its own): recover the pruned model, return its row."""
    loss, trainable, extra = METHODS[method]
    path, _ = pruned_dir(args.ratio)
    pruned = workflow.load(str(path), device="cpu")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def teacher():
        return workflow.load(MODEL, device="cpu").model

    lr = args.local_learning_rate if loss == "local" else args.full_learning_rate if trainable == "full" \
        else args.learning_rate
    budget = {"epochs": args.local_epochs, "batch_size": 8} if loss == "local" else {
        "max_steps": args.updates, "eval_every": args.eval_every or None}
    if args.minutes and loss != "local":  # a time box: the data cycled until the minutes are spent
        budget |= {"max_steps": None, "epochs": None, "max_minutes": args.minutes}
    config = RecoveryConfig(method=loss, trainable=trainable, n_samples=args.records, max_length=args.max_length,
                            data=args.data,
                            learning_rate=lr, **budget, **extra)
    evaluation = EvalConfig(perplexity=("wikitext2",), limit=args.limit)
    needs_teacher = loss != "sft" or extra.get("data") == "self"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # the top-k cache gets the loader (the teacher is freed once its targets are written); the others the model
        given = (teacher if "kd_top_k" in extra else teacher()) if needs_teacher else None
        result = recover(pruned.model, pruned.tokenizer, config, out_dir=Path(tmp) / "r", evaluation=evaluation,
                         plan=load_plan(path), teacher=given)
    wall = time.perf_counter() - t0
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # before the KL check loads the original
    rec = result.record
    from minillm_core.evaluation.suite import compare_metrics  # how close to the original each method gets

    reference = given if isinstance(given, torch.nn.Module) else teacher()  # loaded once per process
    before = compare_metrics(reference, pruned.model, pruned.tokenizer, evaluation)
    after = compare_metrics(reference, result.model, pruned.tokenizer, evaluation)
    losses = rec["losses"]
    full = {"ppl_full_after": _full_split(result.model, pruned.tokenizer)} if args.full_split else {}
    return full | {"method": method, "learning_rate": lr, "trainable_params": rec["trainable_params"], **extra,
            "peak_rss_mb": peak,
            "rss_after_load_mb": round(rss_loaded), "ppl_before": result.before["ppl/wikitext2"],
            "ppl_after": result.after["ppl/wikitext2"], "kl_before": before["kl/wikitext2"],
            "kl_after": after["kl/wikitext2"], "agreement_before": before["agreement/wikitext2"],
            "agreement_after": after["agreement/wikitext2"], "updates": rec["steps"], "tokens": rec["tokens"],
            "train_seconds": rec["train_seconds"], "time_budget_spent": rec.get("time_budget_spent", False),
            "wall_seconds": round(wall, 1), "first_loss": losses[0]["loss"] if losses else None,
            "last_loss": losses[-1]["loss"] if losses else None, "curve": rec.get("curve", []),
            "losses": losses[:: max(1, len(losses) // 40)]}  # at most ~40 points of the loss curve


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _full_split(model, tokenizer) -> float:
    """WikiText-2 perplexity on the whole test split (128-token windows): the headline points."""
    from minillm_core.evaluation.perplexity import perplexity_on

    return perplexity_on(model, tokenizer, "wikitext2", seq_len=128, limit=None).ppl


def _pruned_full_split(ratio: float) -> float:
    """The pruned model's full-split perplexity, measured once per pruned model (cached beside it)."""
    path, _ = pruned_dir(ratio)
    cache = path.parent / f"{path.name}.wikitext2_full.json"
    if not cache.is_file():
        pruned = workflow.load(str(path), device="cpu")
        cache.write_text(json.dumps({"ppl": _full_split(pruned.model, pruned.tokenizer)}), encoding="utf-8")
    return json.loads(cache.read_text(encoding="utf-8"))["ppl"]


def _argv() -> list[str]:
    """This command's arguments without `--rerun` and its methods (the command that measures every row)."""
    out, skipping = [], False
    for a in sys.argv[1:]:
        if a.startswith("--"):
            skipping = a == "--rerun"
        if not skipping:
            out.append(a)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=0, help="perplexity every N updates (0: before/after)")
    parser.add_argument("--full-split", action="store_true", help="also the whole WikiText-2 test split after "
                        "training (and once for the pruned model): the headline points")
    parser.add_argument("--data", default="alpaca", help="training data of every method but kd-self (a "
                        "RecoveryConfig data source: alpaca, c4, wikitext2, ptb or a file)")
    parser.add_argument("--minutes", type=float, default=0.0, help="train each method (not local) for this many "
                        "minutes (--max-minutes; the data cycled) instead of --updates")
    parser.add_argument("--methods", nargs="+", default=["sft", "kd"], choices=list(METHODS))
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="LoRA methods")
    parser.add_argument("--full-learning-rate", type=float, default=1e-4, help="methods that train every weight")
    parser.add_argument("--local-learning-rate", type=float, default=1e-3, help="block-local distillation")
    parser.add_argument("--local-epochs", type=int, default=4, help="block-local: passes over the rows per layer")
    parser.add_argument("--stem", default="distill", help="output name under bench/results/")
    parser.add_argument("--rerun", nargs="+", choices=list(METHODS), help="re-measure only these methods; the other "
                        "rows of --methods come from the existing <stem>.json (same settings)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    pruned_dir(args.ratio)  # built once, before the methods' processes
    full_before = _pruned_full_split(args.ratio) if args.full_split else None
    protocol = (f"SmolLM2-135M-Instruct, `minillm prune --ratio {args.ratio}` defaults (no recovery before), then LoRA "
                f"rank 8 / alpha 16 / lr {args.learning_rate:g} (`-full`: every weight, AdamW lr "
                f"{args.full_learning_rate:g}) / warmup 5 / batch 4, "
                + (f"{args.minutes:g} minutes of training each (`--max-minutes`, the LR decaying over them, the "
                   f"records cycled)" if args.minutes else f"{args.updates} updates") + " on "
                f"{args.records} seeded "
                + ("Alpaca records (prompt masked, " if args.data == "alpaca" else f"{args.data} blocks (train split, ")
                + f"{args.max_length} tokens), merged; kd = forward KL to the unpruned "
                f"model at T=1 at every token (prompt included); kd-topk = the same from the teacher's top-64 "
                f"log-probs + tail mass cached on disk (the teacher freed before training); kd-self = kd on "
                f"{args.records} rows of {args.max_length} tokens the unpruned model sampled itself (no data set). "
                f"WikiText-2 test, first {args.limit} windows of 128 tokens"
                + (" (and the whole test split, 2,382 windows, before and after: the `full split` columns)"
                   if args.full_split else "")
                + (f", measured every {args.eval_every} updates" if args.eval_every else "") + "; KL to "
                f"the original and next tokens unchanged on the first 16 of them (after training, peak RSS is read "
                f"before). "
                f"local = block-local distillation of every pruned layer (its weights, AdamW lr "
                f"{args.local_learning_rate:g}, {args.local_epochs} passes per layer over the same records packed "
                f"into rows of {args.max_length} tokens, batch 8; tokens counted per layer pass). "
                f"Each method in its own process; peak RSS = that process's maximum (pruned model, teacher if held, "
                f"training). CPU float32, {torch.get_num_threads()} thread(s), {platform.machine()}. Reproduce: "
                f"`MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_distill.py "
                f"{' '.join(_argv())}`.")
    rows = []
    kept = {}
    if args.rerun:
        kept = {r["method"]: r for r in json.loads((RESULTS / f"{args.stem}.json").read_text())["rows"]}
    for method in args.methods:  # each in its own process: its peak memory is its own
        if args.rerun and method not in args.rerun:
            rows.append(kept[method])
        else:
            out = subprocess.run([sys.executable, __file__, *_argv(), "--one", method], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print({k: v for k, v in rows[-1].items() if k not in ("losses", "curve")}, file=sys.stderr, flush=True)
        write(rows, args, protocol, full_before)  # after every method: a stopped run keeps what it measured


def write(rows: list[dict], args: argparse.Namespace, protocol: str, full_before: float | None) -> None:
    """bench/results/<stem>.json and .md from the rows measured so far."""
    payload = {"protocol": protocol, "ratio": args.ratio, "rows": rows, "ppl_full_before": full_before,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(RESULTS / f"{args.stem}.json", json.dumps(payload, indent=1))
    budget = f"{args.minutes:g} minutes of training each (local: its passes)" if args.minutes else "equal tokens"
    lines = [f"# Recovery: SFT vs KD, LoRA vs every weight, at {budget} (issue 15)", "", protocol, "",
             "| method | trained params | WikiText-2 before | after | KL to original before -> after | next tokens "
             "unchanged before -> after | updates | tokens | train loss first -> last | train s | wall s | "
             "peak RSS MB |", "|---" * 12 + "|"]
    full = (lambda r: f" {full_before:.1f} -> {r['ppl_full_after']:.1f} |") if args.full_split else (lambda r: "")
    if args.full_split:
        lines[-2:] = [lines[-2].replace("| KL to", "| full split before -> after | KL to"), "|---" * 13 + "|"]
    lines += [f"| {r['method']} | {r['trainable_params']:,} | {r['ppl_before']:.1f} | {r['ppl_after']:.1f} |{full(r)} "
              f"{r['kl_before']:.3f} -> {r['kl_after']:.3f} | {r['agreement_before']:.1%} -> "
              f"{r['agreement_after']:.1%} | {r['updates']} | {r['tokens']:,} | {_loss(r['first_loss'])} -> "
              f"{_loss(r['last_loss'])} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:,} |"
              for r in rows]
    curves = [r for r in rows if len(r["curve"]) > 2]
    if curves:
        steps = sorted({c["step"] for r in curves for c in r["curve"]})
        lines += ["", "Perplexity against training (WikiText-2, same windows; cell: perplexity (tokens seen)):", "",
                  "| method | " + " | ".join(f"update {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for r in curves:
            at = {c["step"]: c for c in r["curve"]}
            lines.append(f"| {r['method']} | " + " | ".join(
                f"{at[s]['ppl/wikitext2']:.1f} ({at[s]['tokens']:,})" if s in at else "-" for s in steps) + " |")
    lines += ["", "The train losses are not comparable across methods (next-token NLL vs KL to the teacher)."]
    write_text_atomic(RESULTS / f"{args.stem}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

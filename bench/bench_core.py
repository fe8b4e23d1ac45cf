"""Core benchmark: SmolLM2-135M dense vs 20% pruned (magnitude) — perplexity, parameters, disk size, preview time.

Writes bench/results/core.json and core.md. Run: `python bench/bench_core.py [--limit N]` with MINILLM_DATA_DIR set.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minillm_core.allocation import build_plan
from minillm_core.evaluation.perplexity import perplexity_on
from minillm_core.io import save_pruned
from minillm_core.loading import load_model
from minillm_core.planning import PlanConfig, summarize
from minillm_core.workflow import count_params, geometry_of, score
from minillm_core.workflow import prune as apply_plan

RESULTS = Path(__file__).resolve().parent / "results"


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def preview_ms(model, scores, repeats: int = 50) -> dict[str, float]:
    """Median wall time of build_plan + summarize from cached scores (what the app's slider does)."""
    geometry = geometry_of(model)
    out = {}
    for allocation in ("uniform", "global"):
        times = []
        for i in range(repeats):
            config = PlanConfig(ratio=0.1 + 0.4 * i / repeats, allocation=allocation)
            t0 = time.perf_counter()
            summarize(build_plan(geometry, scores, config), geometry)
            times.append((time.perf_counter() - t0) * 1000)
        out[allocation] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--limit", type=int, default=None, help="windows per perplexity set (default: full split)")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    scores = score(model, "magnitude")
    plan = build_plan(geometry_of(model), scores, PlanConfig(ratio=args.ratio), args.model)
    pruned = apply_plan(model, plan)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in (("dense", model), (f"magnitude {args.ratio:.0%}", pruned)):
            out = save_pruned(m, tok, Path(tmp) / label.replace(" ", "_").replace("%", ""))
            row = {"model": label, "params": count_params(m), "disk_mb": round(_dir_mb(out), 1)}
            for name in ("wikitext2", "ptb"):
                t0 = time.perf_counter()
                r = perplexity_on(m, tok, name, seq_len=128, batch_size=8, limit=args.limit,
                                  progress=lambda d, t, _l, n=name, m_=label: print(f"  {m_} {n}: {d}/{t}", flush=True)
                                  if d % 400 < 8 else None)
                row[f"{name}_ppl"] = round(r.ppl, 2)
                row[f"{name}_windows"] = r.n_windows
                row[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(row, flush=True)
    preview = preview_ms(model, scores)
    result = {
        "benchmark": "core", "model": args.model, "ratio": args.ratio, "scorer": "magnitude (L2)",
        "protocol": "wikitext2 test + ptb validation, '\\n\\n'.join(rows), non-overlapping 128-token windows",
        "plan": {"allocation": "uniform", "protected_layers": list(plan.config.protected(30)), "target": "both",
                 "head_granularity": "q-heads", "round_to": 8},
        "rows": rows, "plan_preview_ms_median": preview,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps(result, indent=1))
    lines = ["| model | params | disk MB | WikiText-2 ppl | PTB ppl |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['disk_mb']} | {r['wikitext2_ppl']} "
              f"({r['wikitext2_windows']} win) | {r['ptb_ppl']} ({r['ptb_windows']} win) |" for r in rows]
    lines += ["", f"Plan preview (build_plan + summarize from cached scores, median of 50): "
                  f"uniform {preview['uniform']:.1f} ms, global {preview['global']:.1f} ms.",
              f"Protocol: {result['protocol']}; {result['date']}, {result['machine']['platform']}, CPU fp32."]
    (RESULTS / "core.md").write_text("# Core benchmark: SmolLM2-135M dense vs magnitude-pruned\n\n" + "\n".join(lines)
                                     + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

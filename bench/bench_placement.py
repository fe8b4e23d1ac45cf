"""Evaluation of a model spread over devices (issue 16): `minillm eval --device-map auto --max-memory ...`.

The bundled SmolLM2-135M (float32, 540 MB of weights) evaluated in one piece and with a CPU budget too small for it,
so accelerate keeps what fits in memory and reads the rest from a disk offload folder for every forward pass. Each in
its own process: WikiText-2 perplexity (first --limit windows of 128 tokens), wall time, peak RSS (ru_maxrss).
On this CPU-only machine the "devices" are CPU memory and disk; with GPUs the same flags spread over them first.
Outputs: bench/results/placement.json and placement.md. Run: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2
python bench/bench_placement.py` (about 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from bench_outofcore import MINILLM, WORK, run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    parser.add_argument("--budgets", nargs="+", default=["cpu=300MB", "cpu=100MB"],
                        help="--max-memory values to try besides the model in one piece")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for budget in (None, *args.budgets):
        out = WORK / "placement-result.json"
        cmd = [MINILLM, "eval", "--model", "smollm2-135m", "--dtype", "float32", "--ppl", "wikitext2",
               "--limit", str(args.limit), "--out", str(out), "--json"]
        if budget:
            cmd += ["--device-map", "auto", "--max-memory", budget]
        row = run(cmd)
        if row["rc"] == 0:
            metrics = json.loads(out.read_text())["metrics"]
            row["ppl_wikitext2"] = metrics["ppl/wikitext2"]
        row["max_memory"] = budget or "(one piece)"
        placed = [line for line in row["stderr_tail"] if "loaded " in line]
        row["placement"] = placed[-1].split(" on ", 1)[-1] if placed else None
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    doc = {"model": "smollm2-135m", "dtype": "float32", "limit": args.limit, "seq_len": 128,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "placement.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Evaluating a model spread over devices (issue 16)", "",
             f"SmolLM2-135M float32 (540 MB of weights), `minillm eval --ppl wikitext2 --limit {args.limit}` "
             "(first windows of 128 tokens of the WikiText-2 test split), each in its own process on this CPU-only "
             "machine: in one piece, and with `--device-map auto --max-memory cpu=...` so accelerate keeps what fits "
             "the budget in memory and reads the rest from a disk offload folder at every forward pass. Peak RSS is "
             "the process's ru_maxrss (includes Python, torch, the tokenizer and the pages of memory-mapped weight "
             "files read so far, which the system can reclaim). Reproduce: "
             "`MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_placement.py`.", "",
             "| placement | where the modules went | WikiText-2 ppl | wall s | peak RSS MB |", "|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['ppl_wikitext2']:.4f}" if "ppl_wikitext2" in r else f"failed (rc {r['rc']})"
        lines.append(f"| {r['max_memory']} | {r['placement'] or '-'} | {ppl} | {r['seconds']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    (RESULTS / "placement.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

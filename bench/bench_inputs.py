"""Bounded memory for user files (issue 14): peak RSS of building calibration rows from a 20 MB text file.

The file is 20 MB (the dashboard's upload limit) of short lines, the case that once took 5.8 GB and 64 s: no line
reaches 128 tokens, so every line is tokenized looking for long documents, then the joined stream is sampled.
SmolLM2-135M's tokenizer, default calibration (32 x 128 tokens, seed 0); the script runs in its own process, so
its peak RSS is the tokenizer's and the calibration's. Writes bench/results/inputs.json and inputs.md.
Run: `python bench/bench_inputs.py`.
"""

from __future__ import annotations

import json
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MB = 1024


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from transformers import AutoTokenizer

    from minillm_core.calibration import CalibrationConfig, build_calibration
    from minillm_core.loading import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m"))
    words = ["pruning", "model", "layer", "head", "channel", "the", "of", "a", "to", "is", "in", "and", "quality"]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "short_lines.txt"
        with path.open("w", encoding="utf-8") as f:
            while f.tell() < 20 * 2**20:
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n")
        size_mb = path.stat().st_size / 2**20
        before = _rss_mb()
        t0 = time.perf_counter()
        rows = build_calibration(tokenizer, CalibrationConfig(source="file", path=str(path)))
        seconds = time.perf_counter() - t0
    peak = _rss_mb()
    result = {"machine": platform.platform(), "file_mb": size_mb, "rows": list(rows.shape), "seconds": seconds,
              "rss_before_mb": before, "peak_rss_mb": peak, "target_mb": TARGET_MB}
    lines = ["# Bounded memory for user files (issue 14)", "",
             f"A {size_mb:.1f} MB calibration text of short lines (3-12 words each), SmolLM2-135M's tokenizer, "
             "default calibration 32 x 128 tokens (seed 0), in its own process. Reproduce: "
             "`python bench/bench_inputs.py`.", "",
             "| file | calibration rows | time | peak RSS (process) | RSS before | target |",
             "|---|---|---|---|---|---|",
             f"| {size_mb:.1f} MB | {rows.shape[0]} x {rows.shape[1]} | {seconds:.1f} s | {peak:,.0f} MB | "
             f"{before:,.0f} MB | < {TARGET_MB:,} MB |", "",
             "Before the fix (issue 14's campaign): 5.8 GB and 64 s for the same kind of file.", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inputs.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "inputs.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

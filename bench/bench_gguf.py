"""Deployment benchmark (issue 12): SmolLM2-135M dense vs pruned 20% and 50%, exported to GGUF and run in llama.cpp.

The pruned models come from the product's own command, `minillm prune --ratio R --gguf-compatible` (the default
pipeline: FLAP widths, OBS re-selection and re-fit on 32 x 128 c4 calibration tokens, seed 0, MLP widths rounded to
multiples of 32 so quantized files stay quantized). Each model is written with `minillm_core.workflow.export_gguf` as
f32, f16, q8_0 and q4_0: file sizes; WikiText-2 test perplexity with 128-token windows (the first `--limit`) in
llama.cpp (xllamacpp, prebuilt CPU llama.cpp) next to PyTorch float32 on the same windows; decode tokens/s at batch
1 (a 32-token prompt, 64 generated tokens, EOS ignored) with 1 and 2 threads, the three models interleaved run by
run, `--repeats` runs each after one warm-up, median and quartiles; the measured speed-up next to the parameter ratio.
Outputs: bench/results/gguf.json and gguf.md. Run:
`MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_gguf.py --limit 40`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from minillm_core import workflow
from minillm_core.data import perplexity_text
from minillm_core.evaluation.llamacpp import LlamaCppConfig, decode_speed, perplexity_llamacpp
from minillm_core.evaluation.perplexity import perplexity

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent.parent / ".cache" / "bench_gguf"
MODEL = "smollm2-135m"
DTYPES = ("f32", "f16", "q8_0", "q4_0")
SPEED_DTYPES = ("f16", "q8_0", "q4_0")


def pruned_dir(ratio: float) -> Path:
    """The default pipeline's pruned model at `ratio`, built once with the CLI (kept under .cache/)."""
    out = WORK / f"p{int(ratio * 100)}"
    if not (out / "minillm_manifest.json").is_file():
        cmd = [str(Path(sys.executable).with_name("minillm")), "prune", "--model", MODEL, "--ratio", str(ratio),
               "--gguf-compatible", "--device", "cpu", "--out", str(out), "--overwrite"]
        subprocess.run(cmd, check=True)
    return out


def measure_model(label: str, name: str, ratio: float, limit: int, text: str) -> tuple[dict, dict[str, Path]]:
    loaded = workflow.load(name, device="cpu")
    ids = loaded.tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    row = {"model": label, "ratio": ratio, "params": workflow.count_params(loaded.model),
           "ppl/torch_f32": perplexity(loaded.model, loaded.tokenizer, text, 128, limit=limit).ppl}
    files = {}
    for dtype in DTYPES:
        t0 = time.perf_counter()
        r = workflow.export_gguf(loaded, WORK / f"{label}-{dtype}.gguf", workflow.GGUFConfig(dtype=dtype),
                                 overwrite=True)
        row[f"export_s/{dtype}"] = time.perf_counter() - t0
        row[f"arch/{dtype}"], row[f"mb/{dtype}"], row[f"fallbacks/{dtype}"] = r.arch, r.size_bytes / 1e6, r.fallbacks
        row[f"ppl/llamacpp_{dtype}"] = perplexity_llamacpp(r.path, ids, 128, limit).ppl
        files[dtype] = r.path
        print(f"{label} {dtype}: {row[f'mb/{dtype}']:.1f} MB, ppl {row[f'ppl/llamacpp_{dtype}']:.2f} "
              f"(torch f32 {row['ppl/torch_f32']:.2f})", flush=True)
    return row, files


def report(rows: list[dict], speed: dict, args: argparse.Namespace) -> None:
    dense = next(r for r in rows if r["ratio"] == 0)
    lines = [
        "# GGUF export and llama.cpp (issue 12)", "",
        f"SmolLM2-135M; pruned with `minillm prune --ratio R --gguf-compatible` (default pipeline, c4 32 x 128 "
        f"calibration, seed 0). llama.cpp: xllamacpp 2026.10.11549 (prebuilt CPU build) on {platform.machine()}, "
        f"torch {torch.__version__}. Perplexity: WikiText-2 test, 128-token windows, the first {args.limit} "
        "(llama.cpp's hidden states with the GGUF's own output matrix applied in PyTorch, see "
        "`minillm_core/evaluation/llamacpp.py`). Decode: batch 1, 32-token prompt, 64 new tokens (EOS ignored), "
        f"{args.repeats} runs per model after a warm-up, models interleaved; median [quartiles] tokens/s. "
        f"Reproduce: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_gguf.py --limit "
        f"{args.limit} --repeats {args.repeats}`.", "",
        "## Size and perplexity", "",
        "| model | params | removed | GGUF graph | f16 MB | q8_0 MB | q4_0 MB | PyTorch f32 ppl | llama.cpp f32 | "
        "f16 | q8_0 | q4_0 | f32 / PyTorch |", "|---" * 13 + "|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {1 - r['params'] / dense['params']:.1%} | {r['arch/f16']} | "
            f"{r['mb/f16']:.1f} | {r['mb/q8_0']:.1f} | {r['mb/q4_0']:.1f} | {r['ppl/torch_f32']:.2f} | "
            f"{r['ppl/llamacpp_f32']:.2f} | {r['ppl/llamacpp_f16']:.2f} | {r['ppl/llamacpp_q8_0']:.2f} | "
            f"{r['ppl/llamacpp_q4_0']:.2f} | {r['ppl/llamacpp_f32'] / r['ppl/torch_f32'] - 1:+.3%} |")
    lines += ["", "## Decode speed in llama.cpp (batch 1)", "",
              "| dtype | threads | model | tokens/s | speed-up | parameter ratio | speed-up / parameter ratio |",
              "|---|---|---|---|---|---|---|"]
    for dtype, per_model in speed.items():
        for threads in args.threads:
            key = f"llamacpp/decode_tps/t{threads}"
            base = per_model["dense"][key]
            for r in rows:
                s = per_model[r["model"]]
                up, pr = s[key] / base, dense["params"] / r["params"]
                q1, q3 = s[f"llamacpp/decode_tps_q1/t{threads}"], s[f"llamacpp/decode_tps_q3/t{threads}"]
                lines.append(f"| {dtype} | {threads} | {r['model']} | {s[key]:.1f} [{q1:.1f}-{q3:.1f}] | x{up:.2f} | "
                             f"x{pr:.2f} | {up / pr:.2f} |")
    lines += ["", "Targets: llama.cpp perplexity within 1% of PyTorch at f32/f16; decode speed-up >= 0.9x the "
              "parameter ratio; a 50%-pruned q4_0 file under 60 MB.", ""]
    meta = {"machine": platform.platform(), "torch": torch.__version__, "limit": args.limit,
            "repeats": args.repeats, "threads": list(args.threads), "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    (RESULTS / "gguf.json").write_text(json.dumps({"meta": meta, "rows": rows, "speed": speed}, indent=1) + "\n")
    (RESULTS / "gguf.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="WikiText-2 windows for perplexity")
    parser.add_argument("--repeats", type=int, default=5, help="decode runs per model, dtype and thread count")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    text = perplexity_text("wikitext2")
    models = [("dense", MODEL, 0.0)] + [(f"pruned {r:.0%}", str(pruned_dir(r)), r) for r in args.ratios]
    rows, files = [], {}
    for label, name, ratio in models:
        row, files[label] = measure_model(label, name, ratio, args.limit, text)
        rows.append(row)
    config = LlamaCppConfig(threads=tuple(args.threads), speed_repeats=args.repeats)
    prompt = workflow.load(MODEL, device="cpu").tokenizer(text[:2000]).input_ids[:32]
    speed = {dtype: decode_speed({label: f[dtype] for label, f in files.items()}, prompt, config)
             for dtype in SPEED_DTYPES}
    report(rows, speed, args)


if __name__ == "__main__":
    main()

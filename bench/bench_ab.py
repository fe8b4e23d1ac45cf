"""A/B benchmark (issue 17): the bundled prompt suites through SmolLM2-135M dense and its default 20% / 50% prunes.

The pruned models come from the product's own command with its defaults, `minillm prune --model smollm2-135m --ratio R`
(FLAP widths, OBS re-selection and re-fit on 128 x 128 c4 calibration tokens, seed 0; no recovery). Every bundled
suite (facts, instructions, code, chat) is answered by the dense model and each pruned one with `minillm ab`'s
defaults: greedy decoding, at most 32 new tokens, the tokenizer's chat template, batches of 8, float32 on the CPU.
Per suite: identical answers, teacher-forced token agreement and KL on the dense model's answer (mean and worst
prompt), shared prefix, ROUGE-L and chrF between the answers, and how often a reference answer appears in each
model's response; then the bundled contract templates that A/B alone decides (chat-assistant, extraction) checked
on those numbers, and the prompt that differs most per suite. Outputs: bench/results/ab.json and ab.md. Run:
`MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_ab.py`.
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
from minillm_core.evaluation.gates import Contract
from minillm_core.evaluation.suite import flat_metrics

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent.parent / ".cache" / "bench_ab"
MODEL = "smollm2-135m"
SUITES = ("facts", "instructions", "code", "chat")
TEMPLATES = ("chat-assistant", "extraction")  # decided by A/B metrics alone (size-first also needs perplexity)


def pruned_dir(ratio: float) -> tuple[Path, float]:
    """The default pipeline's pruned model at `ratio`, built once with the CLI (kept under .cache/), and the
    seconds the prune took (0 when it was reused)."""
    out = WORK / f"p{int(ratio * 100)}"
    if (out / "minillm_manifest.json").is_file():
        return out, 0.0
    t0 = time.perf_counter()
    cmd = [str(Path(sys.executable).with_name("minillm")), "prune", "--model", MODEL, "--ratio", str(ratio),
           "--device", "cpu", "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True)
    return out, time.perf_counter() - t0


def suite_row(ratio: float, result: workflow.ABResult) -> dict:
    worst = result.worst(1)[0]
    return {"ratio": ratio, "suite": result.suite, "n_prompts": len(result.records), "seconds": result.seconds,
            **result.comparison(), **{f"original/{k}": v for k, v in result.model_metrics("original").items()},
            **{f"pruned/{k}": v for k, v in result.model_metrics("pruned").items()},
            "worst": {"id": worst.id, "prompt": worst.prompt, "original": worst.original, "pruned": worst.pruned,
                      "agreement": worst.agreement, "kl": worst.kl}}


def contract_rows(ratio: float, results: dict[str, workflow.ABResult]) -> list[dict]:
    """The A/B-only templates checked on the suite each one names (retained = pruned / dense)."""
    out = []
    for name in TEMPLATES:
        contract = Contract.load(name)
        r = results[contract.prompts]
        checks = contract.check(flat_metrics(r.model_metrics("original"), r.model_metrics("pruned"), r.comparison()))
        out.append({"ratio": ratio, "template": name, "suite": contract.prompts,
                    "passed": all(c.passed for c in checks), "clauses": [c.to_dict() for c in checks]})
    return out


def _clause_text(clause: dict) -> str:
    """"ab/agreement >= 0.6: 0.713 ok" """
    bound = f">= {clause['min']:g}" if clause["min"] is not None else f"<= {clause['max']:g}"
    value = "not measured" if clause["value"] is None else f"{clause['value']:.3g}"
    return f"{clause['metric']} {bound}: {value} {'ok' if clause['passed'] else 'FAIL'}"


def write_markdown(payload: dict) -> None:
    lines = ["# A/B testing of responses: SmolLM2-135M dense vs the default pipeline (issue 17)", "",
             payload["protocol"], "",
             "| ratio | suite | prompts | identical | token agreement (worst) | shared prefix | KL/token (worst) | "
             "ROUGE-L | chrF | reference found: dense -> pruned | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["suites"]:
        ref = (f"{r['original/ab/ref_match']:.0%} -> {r['pruned/ab/ref_match']:.0%}"
               if "original/ab/ref_match" in r else "-")
        lines.append(f"| {r['ratio']:.0%} | {r['suite']} | {r['n_prompts']} | {r['ab/exact_match']:.0%} | "
                     f"{r['ab/agreement']:.1%} ({r['ab/min_agreement']:.0%}) | {r['ab/prefix']:.1%} | "
                     f"{r['ab/kl']:.3f} ({r['ab/worst_kl']:.2f}) | {r['ab/rougeL']:.2f} | {r['ab/chrf']:.0f} | "
                     f"{ref} | {r['seconds']:.0f} |")
    lines += ["", "Contract templates decided by A/B alone (`minillm check --contract NAME`):", "",
              "| ratio | template | suite | verdict | clauses (measured) |", "|---|---|---|---|---|"]
    for c in payload["contracts"]:
        clauses = "; ".join(_clause_text(x) for x in c["clauses"])
        lines.append(f"| {c['ratio']:.0%} | {c['template']} | {c['suite']} | {'pass' if c['passed'] else 'FAIL'} | "
                     f"{clauses} |")
    lines += ["", "The prompt that differs most per suite (lowest agreement):", ""]
    for r in payload["suites"]:
        w = r["worst"]
        lines += [f"- **{r['ratio']:.0%}, {r['suite']}, `{w['id']}`** (agreement {w['agreement']:.0%}, KL "
                  f"{w['kl']:.2f}): {w['prompt'][:90]!r}", f"  - dense: {w['original'][:150]!r}",
                  f"  - pruned: {w['pruned'][:150]!r}"]
    (RESULTS / "ab.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    dense = workflow.load(MODEL, device="cpu")
    suites, contracts, prunes = [], [], {}
    for ratio in args.ratios:
        path, prune_s = pruned_dir(ratio)
        prunes[f"{ratio:.2f}"] = prune_s
        pruned = workflow.load(str(path), device="cpu")
        results = {}
        for name in args.suites:
            results[name] = workflow.ab_test(dense, pruned, name)
            suites.append(suite_row(ratio, results[name]))
            print(f"{ratio:.0%} {name}: agreement {results[name].comparison()['ab/agreement']:.3f}", file=sys.stderr)
        if all(Contract.load(t).prompts in results for t in TEMPLATES):
            contracts += contract_rows(ratio, results)
    protocol = (f"SmolLM2-135M-Instruct (float32, CPU, {threads} thread(s), {platform.processor() or 'cpu'}); "
                f"pruned with `minillm prune --ratio R` defaults (128 x 128 c4 calibration tokens, seed 0, re-fit, no "
                f"recovery); every bundled suite answered with `minillm ab` defaults: greedy, <= 32 new tokens, chat "
                f"template, batches of 8. Token agreement and KL are teacher-forced on the dense model's answer. "
                f"Reproduce: `MINILLM_DATA_DIR=../shared/data OMP_NUM_THREADS=2 python bench/bench_ab.py`.")
    payload = {"protocol": protocol, "model": MODEL, "threads": threads, "torch": torch.__version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prune_seconds": prunes,
               "suites": suites, "contracts": contracts, "data_dir": os.environ.get("MINILLM_DATA_DIR")}
    (RESULTS / "ab.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    write_markdown(payload)


if __name__ == "__main__":
    main()

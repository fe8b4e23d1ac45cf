"""Sweep benchmark (issue 16): one grid on the bundled model, run by the local backend and by Ray on this machine.

The grid is `minillm sweep`'s: scorers x ratios of all parameters, one score pass per scorer, every point a full run
(prune, re-fit the kept weights unless --refit off, save, evaluate the original and the pruned model on the first
--limit WikiText-2 test windows of 128 tokens, KL/agreement on up to 16 of them), each point with --cpus-per-point
threads. The local backend runs the points one after the other; Ray (a local instance with this machine's cores)
runs as many at once as the cores allow. Both start from an empty run store; the points' quality and size metrics
must be identical (same code, same threads). Outputs: bench/results/sweep.json and sweep.md. Run:
`MINILLM_DATA_DIR=../shared/data python bench/bench_sweep.py` (about 15 minutes on 2 cores with the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from minillm_core.runs import eval_config
from minillm_core.runs.sweep import Resources, SweepSpec, run_sweep
from minillm_core.workflow import CalibrationConfig

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent.parent / ".cache" / "bench_sweep"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--scorers", default="flap,wanda-sp,magnitude")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--refit", choices=("on", "off"), default="on")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--calib", type=int, default=32, help="calibration rows of 128 tokens (c4, seed 0)")
    ap.add_argument("--cpus-per-point", type=int, default=1)
    ap.add_argument("--backends", default="local,ray")
    ap.add_argument("--stem", default="sweep")
    args = ap.parse_args()
    spec = SweepSpec(model=args.model, scorers=tuple(args.scorers.split(",")),
                     ratios=tuple(float(r) for r in args.ratios.split(",")), reconstruct=(args.refit == "on",),
                     calibration=CalibrationConfig(n_samples=args.calib), device="cpu",
                     evaluation=eval_config(limit=args.limit, measure_speed=False,
                                            data_dir=os.environ.get("MINILLM_DATA_DIR")))
    resources = Resources(cpus=args.cpus_per_point)
    backends = {}
    for backend in args.backends.split(","):
        root = WORK / backend
        shutil.rmtree(root, ignore_errors=True)  # our own cache folder: a fresh run store per backend
        t0 = time.perf_counter()
        result = run_sweep(spec, backend, root=root, resources=resources,
                           progress=lambda d, t, _label, b=backend: print(f"{b}: {d}/{t} points", file=sys.stderr))
        backends[backend] = {"seconds": round(time.perf_counter() - t0, 1), "points": result.points}
        print(f"{backend}: {backends[backend]['seconds']} s", file=sys.stderr)
    names = list(backends)
    same = None
    if len(names) == 2:
        a, b = (backends[n]["points"] for n in names)
        same = [pa["metrics"] == pb["metrics"] and pa["state"] == pb["state"] for pa, pb in zip(a, b, strict=True)]
    payload = {"spec": spec.to_dict(), "sweep_key": spec.key, "cpus_per_point": args.cpus_per_point,
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()},
               "backends": backends, "identical_points": same}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(payload, indent=1))
    write_markdown(payload, args)


def write_markdown(payload: dict, args: argparse.Namespace) -> None:
    backends = payload["backends"]
    first = next(iter(backends.values()))["points"]
    lines = [
        "# Sweep: the same grid on the local backend and on Ray (issue 16)", "",
        f"{args.model}, float32, CPU ({payload['machine']['cpus']} cores); scorers {args.scorers}, ratios "
        f"{args.ratios} of all parameters, re-fit {args.refit} (units kept as scored), c4 calibration {args.calib} x "
        f"128 tokens (seed 0); WikiText-2 test, first {args.limit} windows of 128 tokens; "
        f"{args.cpus_per_point} thread(s) per point. Every point is a full run: load, prune, re-fit, save, evaluate "
        "the original and the pruned model, KL/agreement. Reproduce: `MINILLM_DATA_DIR=../shared/data python "
        f"bench/bench_sweep.py --scorers {args.scorers} --ratios {args.ratios} --refit {args.refit} --limit "
        f"{args.limit} --calib {args.calib}`.", "",
        "| backend | points | wall time (s) | s per point |", "|---|---|---|---|"]
    for name, b in backends.items():
        n = len(b["points"])
        lines.append(f"| {name} | {n} | {b['seconds']:.0f} | {b['seconds'] / max(n, 1):.1f} |")
    if payload["identical_points"] is not None:
        same = payload["identical_points"]
        lines += ["", f"Quality and size metrics identical between the backends: {sum(same)} of {len(same)} points."]
    lines += ["", "| scorer | removed | state | parameters | size (MB) | WikiText-2 ppl | KL to original |",
              "|---|---|---|---|---|---|---|"]
    for p in first:
        m = p["metrics"]
        ppl, kl = m.get("ppl/wikitext2"), m.get("kl/wikitext2")
        lines.append(f"| {p['scorer']} | {p['ratio']:.0%} | {p['state']} | {m.get('params', 0):,} | "
                     f"{m.get('size_mb', 0):.1f} | {'-' if ppl is None else f'{ppl:.2f}'} | "
                     f"{'-' if kl is None else f'{kl:.3f}'} |")
    (RESULTS / f"{args.stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

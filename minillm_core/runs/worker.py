"""The worker, run in the run's own process (`python -m minillm_core.runs.worker run DIR`): load, prune, evaluate.

It reports each step into `status.json`, calls the `workflow` facade, and writes the plan and metrics once, at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from minillm_core import workflow
from minillm_core.errors import MiniLLMError
from minillm_core.progress import Progress
from minillm_core.runs import files, process
from minillm_core.runs.spec import EVALUATE_RECOVERED, LLAMACPP_STEP, LOAD_STEP, RECOVER_STEP, RunSpec
from minillm_core.runs.store import read_spec, read_status, write_status

logger = logging.getLogger(__name__)

GGUF_RUN_DTYPE = "q8_0"  # what a run's llama.cpp measurement writes: the usual deployment choice
_STATUS_EVERY_S = 0.25  # throttle for progress writes; step and state changes are always written


class Reporter:
    """Writes the running step and its progress into status.json (progress throttled)."""

    def __init__(self, folder: Path, steps: list[str]) -> None:
        self.folder, self.steps = folder, steps
        self.st = read_status(folder)
        self.st.state, self.st.pid, self.st.started, self.st.steps = "running", os.getpid(), time.time(), len(steps)
        self._last = 0.0
        self._flush()

    def _flush(self) -> None:
        self.st.updated = self._last = time.time()
        write_status(self.folder, self.st)

    def begin(self, step: str) -> Progress:
        """Mark `step` as running; returns its progress callback (a `workflow.StepHook`)."""
        self.st.step, self.st.step_index = step, self.steps.index(step) + 1
        self.st.done, self.st.total = 0, 0
        self._flush()

        def progress(done: int, total: int, label: str) -> None:
            self.st.done, self.st.total = done, total
            if done >= total or time.time() - self._last >= _STATUS_EVERY_S:
                self._flush()

        return progress

    def finish(self, state: str, error: str = "") -> None:
        self.st.state, self.st.error, self.st.finished = state, error, time.time()
        if state == "done":
            self.st.done = self.st.total = 1
            self.st.step_index = self.st.steps
        self._flush()


def run(folder: str | os.PathLike) -> int:
    """Execute the run in `folder` (in the worker process). Returns the exit code."""
    folder = Path(folder).resolve()
    spec = read_spec(folder)
    rep = Reporter(folder, spec.steps())
    try:
        metrics, side_files = execute(spec, folder, rep)
    except MiniLLMError as exc:
        rep.finish("failed", str(exc))
        return 2
    except Exception as exc:  # a bug or an environment problem: still recorded, with the traceback in job.log
        logger.exception("run failed")
        rep.finish("failed", f"{type(exc).__name__}: {exc}")
        return 1
    for name, text in side_files.items():
        files.write_text(folder / name, text)
    files.write_json(folder / files.METRICS_FILE, metrics)  # last: its presence means the run's files are complete
    rep.finish("done")
    return 0


def execute(spec: RunSpec, folder: Path, rep: Reporter) -> tuple[dict[str, Any], dict[str, str]]:
    """Load, prune and evaluate (and recover); returns metrics.json's content (schema `minillm.run/1` plus the run's
    scorer, ratio, plan summary, model_dir, seconds, recovery) and the side files (metrics.csv, lm-eval JSON)."""
    t0 = time.time()
    rep.begin(LOAD_STEP)
    loaded = workflow.load(spec.model, dtype=spec.dtype, device=spec.device)
    spec.plan.validate(workflow.geometry_of(loaded.model))  # fail before minutes of evaluating the original
    files.write_text(folder / files.PLAN_FILE, spec.plan.to_json())
    reconstruction = None
    if spec.reconstructs:
        calibration = workflow.calibrate(loaded, spec.calibration, spec.evaluation.data_dir)
        reconstruction = (spec.reconstruct, calibration)
    outcome = workflow.prune_and_evaluate(
        loaded.model, loaded.tokenizer, spec.plan, spec.evaluation, model_name=spec.model,
        out_dir=folder / files.MODEL_SUBDIR, evaluate_original=spec.evaluate_original,
        original_dir=workflow.model_dir_of(spec.model),  # the original's size on disk beside the pruned one
        reconstruction=reconstruction, step=rep.begin)
    out = {**outcome.run.to_dict(), "scorer": spec.plan.scorer, "ratio": spec.plan.config.ratio,
           "summary": workflow.summary_of(spec.plan, loaded.model).to_dict(),
           "model_dir": str(folder / files.MODEL_SUBDIR), **outcome.extra}
    if "reconstruction" in outcome.extra:
        out["before_reconstruction"] = outcome.run.details.get("before_reconstruction", {})
    if spec.llamacpp:
        _llamacpp(spec, folder, out, rep.begin(LLAMACPP_STEP))
    if spec.recovery is not None:
        out |= _recover(spec, folder, loaded.tokenizer, outcome.pruned, rep, teacher=loaded.model,
                        before=outcome.run.pruned)
    out["seconds"] = time.time() - t0
    return out, outcome.run.side_files()


def _llamacpp(spec: RunSpec, folder: Path, out: dict[str, Any], progress: Progress) -> None:
    """Both models as q8_0 GGUF files measured in llama.cpp (decode speed on one thread, 3 interleaved runs); the
    metrics join the run's original/pruned columns (scalars only), the decode speed-ups its comparison. The pruned
    model's file stays for the Runs page."""
    engine = workflow.LlamaCppConfig(gguf_dtype=GGUF_RUN_DTYPE, threads=(1,), speed_repeats=3,
                                     decode_tokens=32)
    models = {"pruned": str(folder / files.MODEL_SUBDIR)}
    if spec.evaluate_original:
        models["original"] = spec.model
    gguf_dir = folder / files.GGUF_SUBDIR
    gguf_dir.mkdir(exist_ok=True)
    results = workflow.evaluate_llamacpp(models, spec.evaluation, engine, gguf_dir, progress=progress)
    for label, r in results.items():
        out.setdefault(label, {}).update({k: v for k, v in r.items() if k.startswith("llamacpp/")
                                          and isinstance(v, (int, float))})
    os.replace(results["pruned"]["gguf"], gguf_dir / f"model-{GGUF_RUN_DTYPE}.gguf")
    if "original" in results:
        Path(results["original"]["gguf"]).unlink(missing_ok=True)
        out.setdefault("comparison", {}).update({
            f"speedup/llamacpp_{k.removeprefix('llamacpp/')}": v / results["original"][k]
            for k, v in results["pruned"].items() if k.startswith("llamacpp/decode_tps/")})


def _recover(spec: RunSpec, folder: Path, tokenizer: Any, pruned: Any, rep: Reporter, teacher: Any = None,
             before: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoRA-tune the pruned model (the pruned metrics are its `before`; `teacher`, the loaded original, for
    distillation), save it, and evaluate it the same way; the perplexity curve runs from `before` to the recovered
    model through the points measured every `eval_every` updates."""
    from minillm_core.recovery import recover

    out_dir = folder / files.RECOVERED_SUBDIR
    result = recover(pruned, tokenizer, spec.recovery, out_dir=out_dir, plan=spec.plan,
                     progress=rep.begin(RECOVER_STEP), evaluation=None, teacher=teacher, curve=spec.evaluation)
    recovered, _ = workflow.evaluate(result.model, tokenizer, spec.evaluation,
                                     out_dir if spec.recovery.merge else None, progress=rep.begin(EVALUATE_RECOVERED))
    tokens = result.record.get("tokens", 0)
    middle = [c for c in result.record.get("curve", []) if 0 < c["step"] < result.steps]  # the ends are below
    curve = [{"step": 0, "tokens": 0, **{k: v for k, v in (before or {}).items() if k.startswith("ppl/")}}, *middle,
             {"step": result.steps, "tokens": tokens, **{k: v for k, v in recovered.items() if k.startswith("ppl/")}}]
    return {"recovered": recovered, "recovered_dir": str(out_dir),
            "recovery": {"steps": result.steps, "total_steps": result.total_steps, "tokens": tokens,
                         "train_seconds": result.train_seconds, "losses": result.losses, "curve": curve,
                         "settings": asdict(spec.recovery),
                         "time_budget_spent": bool(result.record.get("time_budget_spent"))}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m minillm_core.runs.worker run RUN_DIR", file=sys.stderr)
        return 64
    process.die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(argv[1])


if __name__ == "__main__":
    raise SystemExit(main())

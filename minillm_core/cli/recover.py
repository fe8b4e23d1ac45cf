"""`minillm recover`: LoRA fine-tuning of a pruned model, evaluated before and after.

Options come from `RecoveryConfig` and `EvalConfig`; Ctrl-C stops after the current update with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core.cli.app import Bar, DataDirOpt, JsonOpt, app, emit, load, stderr, user_errors
from minillm_core.cli.options import Only, config_command
from minillm_core.errors import MiniLLMError
from minillm_core.recovery import DEFAULT_EVAL, RecoveryConfig, RecoveryResult
from minillm_core.recovery.config import SELF_DATA
from minillm_core.workflow import EvalConfig, LoadConfig


def _payload(out: Path, result: RecoveryResult) -> dict[str, Any]:
    return {"out": str(out), "stopped": result.stopped, "steps": result.steps, "total_steps": result.total_steps,
            "before": result.before, "after": result.after,
            "first_loss": result.losses[0]["loss"] if result.losses else None,
            "last_loss": result.losses[-1]["loss"] if result.losses else None,
            "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(result.wall_seconds, 1),
            "tokens": result.record.get("tokens"), "time_budget_spent": result.record.get("time_budget_spent", False)}


def _render(out: Path, result: RecoveryResult) -> None:
    spent = ", stopped by --max-minutes" if result.record.get("time_budget_spent") else ""
    typer.echo("\n".join(
        [f"{k}: before {result.before[k]:.3f} -> after {result.after[k]:.3f}"
         for k in result.before if k.startswith(("ppl/", "acc/")) and result.after]
        + [f"{result.steps} updates ({result.record.get('tokens', 0):,} tokens) in {result.train_seconds:.0f} s "
           f"(wall {result.wall_seconds:.0f} s){spent}; saved to {out}"]))


def _teacher(load_config: LoadConfig) -> Any:
    return load(load_config).model


@app.command("recover")
@config_command
def recover_cmd(
    out: Annotated[Path, typer.Option(help="Run directory: epoch checkpoints while training, then the recovered model "
                                           "(or adapter) and recovery.json. Rerun the same command to resume.")],
    load_config: LoadConfig,
    config: RecoveryConfig,
    evaluation: Annotated[EvalConfig, Only("perplexity", "tasks", "limit")] = DEFAULT_EVAL,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue --out's checkpoint.")] = True,
    teacher: Annotated[str | None, typer.Option(help="With --method kd or local, or --data self: the unpruned model "
                                                     "to distil or to write the training text (name, path or Hub id); "
                                                     "default: the model the pruning plan was made from.")] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a pruned model to win back quality: LoRA or every weight (--trainable full), on the next-token loss
    or distilling the original (--method kd: its logits; --method local: each pruned layer's output, one layer at a
    time); evaluate before/after; save it (LoRA: merged or as an adapter).

    Defaults are a CPU run of minutes (200 Alpaca records, 50 updates, lr 3e-4). Paper-scale recipe (LLM-Pruner:
    rank 8, Alpaca-cleaned 50k, 2 epochs, lr 1e-4, batch 64): unset MINILLM_DATA_DIR and pass --n-samples 0
    --epochs 2 --learning-rate 1e-4 --grad-accum 16 --warmup-steps 100. Ctrl-C stops after the current update with
    a checkpoint; the same command resumes.

    Example: minillm recover --model runs/p20 --out runs/p20-lora
    """
    import signal
    import threading

    from minillm_core.io import load_plan
    from minillm_core.recovery import recover

    with user_errors():
        folder = str(data_dir) if data_dir else None
        config = dataclasses.replace(config, data_dir=folder)
        evaluation = dataclasses.replace(evaluation, data_dir=folder)
        loaded = load(load_config)
        source = Path(loaded.source)
        plan = load_plan(source) if source.is_dir() else None
        original = None
        if config.method in ("kd", "local") or config.data == SELF_DATA:
            name = teacher or (plan.model if plan is not None else None)
            if not name:
                needs = f"--method {config.method}" if config.method != "sft" else "--data self"
                raise MiniLLMError(f"{needs} needs the original model: pass --teacher (this model carries no pruning "
                                   "plan naming it)")
            # loaded when needed: with --kd-top-k only to compute its targets, not at all when a resumed run has them
            original = functools.partial(_teacher, dataclasses.replace(load_config, model=name))
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            with Bar(not as_json) as bar:
                result = recover(loaded.model, loaded.tokenizer, config, out_dir=out, plan=plan, progress=bar,
                                 should_stop=stop.is_set, resume=resume, evaluation=evaluation, teacher=original,
                                 on_step=lambda r: bar.describe("recover", r.describe()))
        finally:
            signal.signal(signal.SIGINT, previous)
        if result.stopped:
            stderr(f"stopped after update {result.steps}/{result.total_steps}; checkpoint in {out}/checkpoint — "
                   f"run the same command again to resume")
        emit(as_json, _payload(out, result), lambda: _render(out, result))

"""`minillm recover`: LoRA fine-tuning of a pruned model, evaluated before and after.

Registered on the app of `minillm_core.cli`; Ctrl-C stops after the current update with a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from minillm_core.cli import (
    DataDirOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    SeedOpt,
    _Bar,
    _emit,
    _load,
    _stderr,
    _user_errors,
    app,
)


@app.command("recover")
def recover_cmd(
    out: Annotated[Path, typer.Option(help="Run directory: epoch checkpoints while training, then the recovered model "
                                           "(or adapter) and recovery.json. Rerun the same command to resume.")],
    model: ModelOpt = "smollm2-135m",
    data: Annotated[str, typer.Option(help="alpaca (Alpaca-cleaned: data mirror, else the Hub), c4/ptb/wikitext2 "
                                           "(plain text, train split), or a .json/.jsonl file of Alpaca records "
                                           "(instruction, input, output) or a .txt file.")] = "alpaca",
    n_samples: Annotated[int, typer.Option(help="Seeded subset of records (plain text: max-length blocks); "
                                                "0 = all.")] = 200,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 16.0,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    target_modules: Annotated[str | None, typer.Option(
        help="Comma-separated linear names; default: every attention and MLP linear of the architecture.")] = None,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup updates, then linear decay to 0.")] = 5,
    epochs: Annotated[int, typer.Option(help="Passes over the records.")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many updates (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per forward pass (micro-batch).")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per update.")] = 1,
    max_length: Annotated[int, typer.Option(help="Tokens per record (LLM-Pruner cutoff_len).")] = 256,
    train_on_inputs: Annotated[bool, typer.Option(help="Also train on the prompt tokens (LLM-Pruner: off).")] = False,
    merge: Annotated[bool, typer.Option("--merge/--keep-adapter", help="Merge LoRA into the pruned weights, or save "
                                                                         "the PEFT adapter on its own.")] = True,
    ppl: Annotated[list[str] | None, typer.Option(help="Perplexity set(s) before/after (default wikitext2).")] = None,
    tasks: Annotated[list[str] | None, typer.Option(help="Zero-shot task(s) before/after (default none).")] = None,
    limit: Annotated[int | None, typer.Option(help="Windows / task items per evaluation (0 = all).")] = 40,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue --out's checkpoint.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out (its checkpoint included).")] = False,
    data_dir: DataDirOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """LoRA-tune a pruned model to win back quality; evaluate before/after; save it merged or as an adapter.

    Defaults are a CPU run of minutes (200 Alpaca records, 50 updates, lr 3e-4). Paper-scale recipe (LLM-Pruner:
    rank 8, Alpaca-cleaned 50k, 2 epochs, lr 1e-4, batch 64): unset MINILLM_DATA_DIR and pass --n-samples 0
    --epochs 2 --learning-rate 1e-4 --grad-accum 16 --warmup-steps 100. Ctrl-C stops after the current update with
    a checkpoint; the same command resumes.

    Example: minillm recover --model runs/p20 --out runs/p20-lora
    """
    import signal
    import threading

    from minillm_core.evaluation.suite import EvalConfig
    from minillm_core.io import load_plan
    from minillm_core.recovery import RecoveryConfig, recover

    with _user_errors():
        config = RecoveryConfig(
            rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules, learning_rate=learning_rate,
            warmup_steps=warmup_steps, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
            grad_accum=grad_accum, max_length=max_length, data=data, n_samples=n_samples or None,
            train_on_inputs=train_on_inputs, seed=seed, merge=merge,
            data_dir=str(data_dir) if data_dir else None, overwrite=overwrite)
        evaluation = EvalConfig(perplexity=tuple(ppl or ["wikitext2"]), tasks=tuple(tasks or []), limit=limit or None,
                                data_dir=str(data_dir) if data_dir else None)
        loaded = _load(model, dtype, device)
        source = Path(loaded.source)
        plan = load_plan(source) if source.is_dir() else None
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            with _Bar(not as_json) as bar:
                result = recover(loaded.model, loaded.tokenizer, config, out_dir=out, plan=plan, progress=bar,
                                 should_stop=stop.is_set, resume=resume, evaluation=evaluation,
                                 on_step=lambda r: bar.describe("recover", r.describe()))
        finally:
            signal.signal(signal.SIGINT, previous)
        payload = {"out": str(out), "stopped": result.stopped, "steps": result.steps,
                   "total_steps": result.total_steps, "before": result.before, "after": result.after,
                   "first_loss": result.losses[0]["loss"] if result.losses else None,
                   "last_loss": result.losses[-1]["loss"] if result.losses else None,
                   "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(result.wall_seconds, 1)}
        if result.stopped:
            _stderr(f"stopped after update {result.steps}/{result.total_steps}; checkpoint in {out}/checkpoint — "
                    f"run the same command again to resume")
        _emit(as_json, payload, lambda: typer.echo("\n".join(
            [f"{k}: before {result.before[k]:.3f} -> after {result.after[k]:.3f}"
             for k in result.before if k.startswith(("ppl/", "acc/")) and result.after]
            + [f"{result.steps} updates in {result.train_seconds:.0f} s (wall {result.wall_seconds:.0f} s); "
               f"saved to {out}"])))

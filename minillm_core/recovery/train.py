"""Recovery training of a pruned model: LoRA adapters (`peft`, merged after or kept) or every weight (`trainable
full`); epochs, checkpoints, resume.

`recover()` trains on Alpaca-format or plain text, checkpoints each epoch, resumes, and records before/after metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.compare import check_same_tokenizer
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.evaluation.suite import evaluate as evaluate_model
from minillm_core.modeling import get_adapter
from minillm_core.planning import PruningPlan
from minillm_core.progress import Progress, no_progress
from minillm_core.recovery.config import DEFAULT_EVAL, SELF_DATA, RecoveryConfig, _jsonable, lr_at
from minillm_core.recovery.data import collate, encode_examples, fingerprint, load_training_data, self_examples
from minillm_core.recovery.distill import training_loss
from minillm_core.recovery.teacher_cache import TeacherCache
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)

RECOVERY_FILE = "recovery.json"
CHECKPOINT_DIR = "checkpoint"
LIVE_LOG = "live_losses.jsonl"
LIVE_CURVE = "live_perplexity.jsonl"  # the perplexity points measured so far (eval_every), while training
STATE_FILE = "state.json"
ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TEACHER_DIR = "teacher_topk"  # the teacher's cached top-k targets (kd_top_k), removed with the finished run's save
FORMAT = 1
@dataclass(frozen=True)
class StepReport:
    """What `on_step` receives after every optimizer update (also the rows of the loss curve)."""

    step: int
    total: int
    epoch: int
    loss: float
    lr: float
    tokens_per_second: float
    eta_seconds: float

    def describe(self) -> str:
        eta = time.strftime("%H:%M:%S", time.gmtime(self.eta_seconds)) if math.isfinite(self.eta_seconds) else "?"
        return (f"step {self.step}/{self.total} · epoch {self.epoch + 1} · loss {self.loss:.4f} · "
                f"{self.tokens_per_second:,.0f} tok/s · ETA {eta}")


@dataclass
class RecoveryResult:
    """Outcome of `recover`: the merged model (or the PEFT model when `merge` is off or the run stopped early)."""

    model: nn.Module
    steps: int
    total_steps: int
    epochs_done: int
    stopped: bool
    losses: list[dict[str, float]]
    before: dict[str, Any]
    after: dict[str, Any] | None
    wall_seconds: float
    train_seconds: float
    out_dir: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)  # what recovery.json holds


# --- LoRA ------------------------------------------------------------------------------------------------------


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """Names of the attention and MLP linears of `model`'s architecture, as its adapter reports them."""
    adapter = get_adapter(model)
    layer = adapter.layers()[0]
    return tuple(dict.fromkeys(s.name for s in adapter.attention_slices(layer) + adapter.mlp_slices(layer)))


def _resolve_targets(model: nn.Module, wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    if wanted is None:
        return default_target_modules(model)
    linears = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = [t for t in wanted if t not in linears]
    if unknown or not wanted:
        default = ", ".join(default_target_modules(model))
        raise MiniLLMError(f"unknown LoRA target module {unknown[0] if unknown else '(none)'!r}; this model's "
                           f"linears: {', '.join(sorted(linears))} (default: {default})")
    return wanted


def _wrap(model: nn.Module, config: RecoveryConfig, targets: tuple[str, ...]) -> nn.Module:
    """The model to train: with LoRA adapters on `targets` (a PEFT model), or itself with every weight trainable."""
    from peft import LoraConfig, get_peft_model

    if config.trainable == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    lora = LoraConfig(task_type="CAUSAL_LM", r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(targets), bias="none")
    return get_peft_model(model, lora)


def merge_adapters(peft_model: nn.Module) -> nn.Module:
    """Fold the LoRA deltas into the base weights (`merge_and_unload`); the result is the plain base model class."""
    return peft_model.merge_and_unload()


def load_adapter(base_model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """A model saved with `merge=False`: its pruned base (e.g. from `load_pruned`) plus the adapter directory."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval()


# --- checkpoints ------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Counters a checkpoint restores: optimizer updates, finished epochs, micro-batches of the current epoch."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)  # perplexity against training tokens (eval_every)
    out_of_time: bool = False  # the max_minutes budget ended training
    curve_ends: bool = False  # the curve measured its own first and last points (its windows differ from `before`'s)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    meta: dict[str, Any]) -> None:
    """Adapter weights, AdamW moments and the RNG (safetensors) + counters (JSON), replaced atomically."""
    from safetensors.torch import save_file

    from minillm_core.outputs import staging_dir

    params = _trainable(model)
    tmp = staging_dir(path)
    try:
        save_file({n: p.detach().contiguous().cpu() for n, p in params}, str(tmp / ADAPTER_FILE))
        moments = {"rng": torch.get_rng_state()}
        for i, (_, p) in enumerate(params):
            for key, value in optimizer.state.get(p, {}).items():
                moments[f"{i}.{key}"] = value.detach().contiguous().cpu()
        save_file(moments, str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **asdict(state), **meta}, indent=1), "utf-8")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state.json, or None when `path` holds no checkpoint."""
    file = path / STATE_FILE
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MiniLLMError(f"checkpoint {file} is unreadable ({exc}); delete {path} to start over") from exc
    if meta.get("format") != FORMAT:
        raise MiniLLMError(f"checkpoint {file} has unsupported format {meta.get('format')!r}")
    return meta


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; a missing, truncated or corrupt one is bad input that names the remedy."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise MiniLLMError(f"checkpoint file {file} is unreadable ({exc}); delete {file.parent} to start over "
                           "(or pass overwrite)") from None


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    params = _trainable(model)
    weights = _load_tensors(path / ADAPTER_FILE)
    if sorted(weights) != sorted(n for n, _ in params):
        raise MiniLLMError(f"checkpoint {path} does not hold this model's adapter; delete it to start over")
    with torch.no_grad():
        for name, p in params:
            p.copy_(weights[name])
    moments = _load_tensors(path / OPTIMIZER_FILE)
    torch.set_rng_state(moments.pop("rng"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _check_resumable(meta: dict[str, Any], config: RecoveryConfig, fingerprint: str, path: Path) -> None:
    # a checkpoint written before a setting existed was made with that setting's default
    defaults = RecoveryConfig(data_dir=config.data_dir).training_settings()
    saved, now = defaults | meta.get("settings", {}), config.training_settings()
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if meta.get("data_fingerprint") != fingerprint:
        diffs.append("the training examples differ")
    if diffs:
        raise MiniLLMError(f"checkpoint {path} was made with other settings ({'; '.join(diffs)}); use the same "
                           f"settings to resume, or pass overwrite to start over")


def _prepare_out_dir(out: Path, config: RecoveryConfig, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume, if any; refuses a non-empty directory that is not a resumable run."""
    from minillm_core.io import check_output_dir
    from minillm_core.outputs import clean_leftovers

    if out.exists() and not out.is_dir():
        raise MiniLLMError(f"{out} exists and is a file, not a directory")
    if out.is_dir():  # a run killed while writing its checkpoint or the teacher's targets
        clean_leftovers(out / CHECKPOINT_DIR)
        clean_leftovers(out / TEACHER_DIR)
    meta = read_checkpoint(out / CHECKPOINT_DIR)
    if meta is not None and resume and not config.overwrite:
        return meta
    if resume and not config.overwrite and out.is_dir() and {p.name for p in out.iterdir()} <= {
            TEACHER_DIR, LIVE_LOG, LIVE_CURVE}:
        return None  # stopped before its first checkpoint: the teacher's targets are kept and reused
    if out.is_dir() and any(out.iterdir()) and not config.overwrite:
        hint = "pass resume to continue its checkpoint or " if meta is not None else ""
        raise MiniLLMError(f"{out} exists and is not empty; {hint}choose another directory or pass overwrite")
    check_output_dir(out, config.overwrite)  # overwrite replaces only what minillm wrote
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return None


# --- training ---------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the training loop needs, bundled so its helpers stay short."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    examples: list[tuple[list[int], list[int]]]
    config: RecoveryConfig
    state: TrainState
    total: int
    pad_id: int
    device: torch.device
    checkpoint: Callable[[], None]
    progress: Progress
    on_step: Callable[[StepReport], None]
    should_stop: Callable[[], bool]
    teacher: nn.Module | None = None  # the original model, for method "kd"
    cache: TeacherCache | None = None  # or its top-k targets on disk (kd_top_k)
    measure: Callable[[], None] | None = None  # perplexity now, onto the curve (eval_every)


def steps_per_epoch(n_examples: int, config: RecoveryConfig) -> int:
    """Optimizer updates in one pass: ceil(micro-batches / grad_accum); a short last group still makes an update."""
    return math.ceil(math.ceil(n_examples / config.batch_size) / config.grad_accum)


def _epoch_groups(n_examples: int, config: RecoveryConfig, epoch: int) -> list[list[list[int]]]:
    """Example indices per micro-batch, grouped per update; the order is a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=gen).tolist()
    micro = [order[i:i + config.batch_size] for i in range(0, n_examples, config.batch_size)]
    return [micro[i:i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]


def _update(run: _Run, group: list[list[int]], lr: float) -> tuple[float, int]:
    """One optimizer update over `group`'s micro-batches; returns the mean micro-batch loss and the tokens seen."""
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens = 0.0, 0
    for indices in group:
        batch = collate([run.examples[i] for i in indices], run.pad_id, run.device)
        cfg = run.config  # sft: mean NLL over the batch's unmasked labels; kd: KL to the teacher on those positions
        cached = run.cache.targets(indices, batch["input_ids"].shape[1]) if run.cache is not None else None
        loss = training_loss(run.model, run.teacher, batch, cfg.method, cfg.kd_temperature, cfg.kd_alpha, cached)
        (loss / len(group)).backward()
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    run.optimizer.step()
    return loss_sum / len(group), tokens


def steps_for_tokens(examples: list[tuple[list[int], list[int]]], config: RecoveryConfig, budget: int) -> int:
    """Updates until `budget` training tokens have been seen, in the run's own order (the data cycled): whole
    passes at once, then the groups of the last pass one by one."""
    per_pass = sum(len(ids) for ids, _ in examples)
    passes, left = divmod(budget, per_pass)
    steps = passes * steps_per_epoch(len(examples), config)
    for group in _epoch_groups(len(examples), config, passes) if left else ():
        steps, left = steps + 1, left - sum(len(examples[i][0]) for indices in group for i in indices)
        if left <= 0:
            break
    return steps


def _train(run: _Run) -> bool:
    """Update until `run.total` or the time budget; True when `should_stop` ended it early (a checkpoint is written
    first)."""
    s, cfg = run.state, run.config
    t0, step0, tokens0, base = time.perf_counter(), s.step, s.tokens, s.train_seconds
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    run.model.train()
    while s.step < run.total and not s.out_of_time:
        groups = _epoch_groups(len(run.examples), cfg, s.epoch)
        for group in groups[math.ceil(s.micro_in_epoch / cfg.grad_accum):]:
            spent = base + time.perf_counter() - t0
            if s.step >= run.total or spent >= budget:
                s.out_of_time = spent >= budget
                break
            if run.should_stop():
                s.train_seconds = spent
                run.checkpoint()
                return True
            lr = lr_at(s.step, run.total, cfg.warmup_steps, cfg.learning_rate, 1.0 - spent / budget)
            loss, tokens = _update(run, group, lr)
            s.step, s.micro_in_epoch, s.tokens = s.step + 1, s.micro_in_epoch + len(group), s.tokens + tokens
            elapsed = time.perf_counter() - t0
            s.losses.append({"step": s.step, "epoch": s.epoch, "loss": loss, "lr": lr})
            if run.measure is not None and cfg.eval_every and s.step % cfg.eval_every == 0 and s.step < run.total:
                measuring = time.perf_counter()
                run.measure()
                t0 += time.perf_counter() - measuring  # evaluations are not training time
            # under a time budget the updates it will allow at this pace, when fewer than planned
            expected = min(run.total, max(s.step, round(s.step * budget / (base + elapsed)))) if budget < math.inf \
                else run.total
            run.progress(s.step, expected, "recover")
            eta = min(elapsed / (s.step - step0) * (run.total - s.step), max(budget - base - elapsed, 0.0))
            run.on_step(StepReport(s.step, expected, s.epoch, loss, lr, (s.tokens - tokens0) / elapsed, eta))
        if s.micro_in_epoch >= len(run.examples) / cfg.batch_size:  # the pass is complete
            s.epoch, s.micro_in_epoch = s.epoch + 1, 0
            saving = time.perf_counter()
            s.train_seconds = base + saving - t0
            run.checkpoint()
            t0 += time.perf_counter() - saving  # nor are checkpoints
    s.train_seconds = base + time.perf_counter() - t0
    return False


# --- evaluation and the run -------------------------------------------------------------------------------------


def _evaluate(model: nn.Module, tokenizer: Any, evaluation: EvalConfig | None, progress: Progress, phase: str
              ) -> dict[str, float]:
    """The evaluation suite's flat metrics ("ppl/wikitext2", "acc/average", ...); {} when `evaluation` is None."""
    if evaluation is None:
        return {}
    model.eval()
    metrics, _ = evaluate_model(model, tokenizer, evaluation,
                                progress=lambda d, t, label: progress(d, t, f"{label} {phase}"))
    return metrics


def recover(
    model: nn.Module,
    tokenizer: Any,
    config: RecoveryConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    plan: PruningPlan | None = None,
    progress: Progress = no_progress,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = True,
    on_step: Callable[[StepReport], None] | None = None,
    inplace: bool = False,
    evaluation: EvalConfig | None = DEFAULT_EVAL,
    teacher: nn.Module | Callable[[], nn.Module] | None = None,
    curve: EvalConfig | None = None,
) -> RecoveryResult:
    """Train a copy of `model` (the caller's model is untouched unless `inplace`), evaluate before and after.

    `config.method`: `sft` trains on the data's next tokens; `kd` distils `teacher` (the unpruned original, same
    vocabulary; read only, never trained) on the same tokens (`recovery.distill`); `local` trains each pruned layer
    to reproduce `teacher`'s layer on its own inputs, one layer at a time (`recovery.local`; no checkpoints: a
    stopped run starts over). `teacher` may be a loader (called only when the model is needed). With
    `config.kd_top_k`, the teacher's top-k targets are computed once into `out_dir/teacher_topk` (a temporary folder
    without `out_dir`; reused on resume without loading the teacher) and training runs without it
    (`recovery.teacher_cache`).

    With `out_dir`: a checkpoint after each epoch (and on stop) in `out_dir/checkpoint`, resumed when `resume`; at the
    end `out_dir` becomes the merged pruned model (`io.save_pruned`, carrying `plan`) or
    the PEFT adapter (`merge=False`), plus `recovery.json`. `progress(step, total, "recover")` after each update;
    `on_step` gets loss, learning rate, tokens/s and ETA. A stopped run returns `stopped=True` and the PEFT model.
    `evaluation` runs the evaluation suite before and after (None: skip; default `DEFAULT_EVAL`). With
    `config.eval_every`, the perplexity sets of `curve` (default: `evaluation`, else `DEFAULT_EVAL`) are measured every
    that many updates: `record["curve"]`, perplexity against training tokens, with the before/after points (measured
    on the curve's own windows when they differ from `evaluation`'s; none without `evaluation`: the caller has them).
    """
    config = config or RecoveryConfig()
    if config.method in ("kd", "local") and teacher is None:
        raise MiniLLMError(f"method {config.method} distils the original model: pass teacher= (CLI: --teacher, by "
                           "default the model the pruning plan was made from)")
    if config.data == SELF_DATA and teacher is None:
        raise MiniLLMError("training data 'self' is written by the original model: pass teacher= (CLI: --teacher, "
                           "by default the model the pruning plan was made from)")
    t_start = time.perf_counter()
    out = user_path(out_dir) if out_dir is not None else None
    meta = _prepare_out_dir(out, config, resume) if out is not None else None
    if config.data == SELF_DATA:
        teacher = _materialize(teacher)
        check_same_tokenizer(tokenizer, None, teacher, model)
        examples = self_examples(teacher, tokenizer, config)
    else:
        examples = encode_examples(load_training_data(config.data, config.data_dir), tokenizer, config)
    data_hash = fingerprint(examples)
    if meta is not None:
        _check_resumable(meta, config, data_hash, out / CHECKPOINT_DIR)
    with contextlib.ExitStack() as scratch:
        cache = None
        if config.kd_top_k:  # the teacher's targets once, on disk; the teacher itself is not kept
            folder = out / TEACHER_DIR if out is not None else Path(scratch.enter_context(
                tempfile.TemporaryDirectory(prefix="minillm-teacher-"))) / TEACHER_DIR
            cache = _teacher_targets(teacher, tokenizer, model, examples, config, data_hash, folder, progress)
            teacher = None
        elif teacher is not None:
            teacher = _materialize(teacher)
            check_same_tokenizer(tokenizer, None, teacher, model)
            teacher.eval()
        curve = curve or evaluation or dataclasses.replace(DEFAULT_EVAL, data_dir=config.data_dir)
        return _recover(model, tokenizer, config, out, plan, progress, should_stop, on_step, inplace,
                        (evaluation, curve), teacher, cache, meta, examples, data_hash, t_start)


def _materialize(teacher: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """The teacher model: itself, or what its loader returns (so a run that needs only its cache never loads it)."""
    return teacher if isinstance(teacher, nn.Module) else teacher()


def _teacher_targets(teacher: nn.Module | Callable[[], nn.Module], tokenizer: Any, model: nn.Module,
                     examples: list, config: RecoveryConfig, data_hash: str, folder: Path, progress: Progress
                     ) -> TeacherCache:
    """The teacher's top-k targets in `folder`: reused when made from the same data, k and T (and, when the teacher
    is at hand as a model, the same teacher), else computed now."""
    from minillm_core.recovery import teacher_cache

    def identity_of(module: nn.Module) -> dict[str, Any]:  # checked and checksummed once per model
        check_same_tokenizer(tokenizer, None, module, model)
        return teacher_cache.identity(module, data_hash, config.kd_top_k, config.kd_temperature)

    identity = identity_of(teacher) if isinstance(teacher, nn.Module) else None
    wanted = identity or {"data_fingerprint": data_hash, "k": config.kd_top_k, "temperature": config.kd_temperature}
    found = teacher_cache.TeacherCache.open(folder, wanted)
    if found is not None:
        logger.info("reusing the teacher's top-%d targets in %s", config.kd_top_k, folder)
        return found
    teacher = _materialize(teacher)
    identity = identity or identity_of(teacher)
    return teacher_cache.build(teacher, examples, config.kd_top_k, config.kd_temperature, folder, identity,
                               batch_size=config.batch_size, progress=progress)


def _recover(model: nn.Module, tokenizer: Any, config: RecoveryConfig, out: Path | None, plan: PruningPlan | None,
             progress: Progress, should_stop: Callable[[], bool], on_step: Callable[[StepReport], None] | None,
             inplace: bool, evaluations: tuple[EvalConfig | None, EvalConfig], teacher: nn.Module | None,
             cache: TeacherCache | None, meta: dict[str, Any] | None, examples: list, data_hash: str, t_start: float
             ) -> RecoveryResult:
    """`recover` once its inputs are ready (the examples, the teacher or its cached targets, the checkpoint);
    `evaluations`: (before/after suite or None, the perplexity sets of the curve)."""
    from minillm_core.surgery import copy_model

    evaluation, curve = evaluations

    work = model if inplace else copy_model(model)
    targets = _resolve_targets(work, config.target_modules)
    device = next(work.parameters()).device
    # a checkpoint written before a counter existed starts it empty
    state = TrainState(**{f.name: meta[f.name] for f in fields(TrainState) if f.name in meta}) if meta else TrainState()
    if meta is None:
        state.before = _evaluate(work, tokenizer, evaluation, progress, "(before)")
    wall0 = state.wall_seconds
    total = config.max_steps or (steps_for_tokens(examples, config, config.max_tokens) if config.max_tokens
                                 else config.passes * steps_per_epoch(len(examples), config))
    live = _live_logger(out, state.losses, on_step)
    if config.method == "local":
        trained = _recover_local(work, teacher, examples, config, state, device, progress, live)
        return _finish(work, tokenizer, config, state, state.step, trained, evaluation, progress, out, plan,
                       data_hash, len(examples), t_start - wall0)

    # The caller's RNG is untouched. Checkpoints keep the CPU RNG only: a CUDA run resumes close to, not bit-exactly
    # on, its uninterrupted trajectory (LoRA dropout draws from the CUDA generator).
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        peft_model = _wrap(work, config, targets)
        optimizer = torch.optim.AdamW([p for _, p in _trainable(peft_model)], lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        if meta is not None:
            _restore(out / CHECKPOINT_DIR, peft_model, optimizer)
            logger.info("resuming %s at update %d/%d (epoch %d)", out, state.step, total, state.epoch + 1)
        # the curve starts and ends on its own windows (a resumed run that turns this on has no start point)
        state.curve_ends = state.curve_ends or bool(
            config.eval_every and evaluation is not None and not _same_perplexity(evaluation, curve))

        def checkpoint() -> None:
            state.wall_seconds = wall0 + time.perf_counter() - t_start
            if out is not None:
                save_checkpoint(out / CHECKPOINT_DIR, peft_model, optimizer, state,
                                {"settings": config.training_settings(), "data_fingerprint": data_hash})

        live_curve = _live_curve(out if config.eval_every else None, state.curve)

        def measure() -> None:  # perplexity now: a point of the curve, also in the live file
            from minillm_core.evaluation.perplexity import perplexity_on

            peft_model.eval()
            live_curve({"step": state.step, "tokens": state.tokens, **{
                f"ppl/{name}": perplexity_on(peft_model, tokenizer, name, seq_len=curve.seq_len,
                                             batch_size=curve.batch_size, limit=curve.limit,
                                             data_dir=curve.data_dir).ppl for name in curve.perplexity}})
            peft_model.train()

        if state.curve_ends and not state.curve and state.step == 0:
            measure()
        run = _Run(peft_model, optimizer, examples, config, state, total, _pad_id(tokenizer), device, checkpoint,
                   progress, live, should_stop, teacher if config.method == "kd" else None, cache,
                   measure if config.eval_every else None)
        stopped = _train(run)
        if state.curve_ends and not stopped and state.curve[-1]["step"] != state.step:
            measure()
    peft_model.eval()
    trained = {"target_modules": list(targets) if config.trainable == "lora" else "all",
               "trainable_params": sum(p.numel() for _, p in _trainable(peft_model))}
    if config.trainable == "full":
        peft_model.requires_grad_(False)  # trained: a model like any other from here
    if stopped:
        return _result(peft_model, state, total, True, None, wall0 + time.perf_counter() - t_start, out, {})
    final = merge_adapters(peft_model) if config.merge and config.trainable == "lora" else peft_model
    return _finish(final, tokenizer, config, state, total, trained, evaluation, progress, out, plan, data_hash,
                   len(examples), t_start - wall0)


def _recover_local(work: nn.Module, teacher: nn.Module, examples: list, config: RecoveryConfig, state: TrainState,
                   device: torch.device, progress: Progress, live: Callable[[StepReport], None]) -> dict[str, Any]:
    """Block-local distillation of `work` in place (`recovery.local`); fills `state` as the LoRA loop does."""
    from minillm_core.recovery.local import distill_layers, pack_rows

    rows = pack_rows(examples, config.max_length).to(device)
    t0 = time.perf_counter()

    def report(row: dict[str, Any]) -> None:
        elapsed, step, total = time.perf_counter() - t0, row["step"], row["total"]
        live(StepReport(step, total, row["epoch"], row["loss"], row["lr"],
                        step * config.batch_size * config.max_length / elapsed, elapsed / step * (total - step)))

    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        local = distill_layers(work, teacher, rows, config.passes, config.learning_rate, config.batch_size,
                               config.weight_decay, progress, report)
    state.step, state.tokens, state.losses, state.train_seconds = local.steps, local.tokens, local.losses, \
        local.seconds
    state.epoch = config.passes
    return {"target_modules": "pruned layers", "layers": local.layers, "rows": rows.shape[0],
            "trainable_params": local.trainable_params}


def _finish(final: nn.Module, tokenizer: Any, config: RecoveryConfig, state: TrainState, total: int,
            trained: dict[str, Any], evaluation: EvalConfig | None, progress: Progress, out: Path | None,
            plan: PruningPlan | None, data_hash: str, n_examples: int, started: float) -> RecoveryResult:
    """Evaluate the trained model, record the run and save it (every method ends here); `started`: the
    `perf_counter` time the run would have started at without interruptions (wall time includes the evaluations)."""
    summary = {"evaluation": evaluation.to_dict() if evaluation else None, **trained, "method": config.method,
               "trainable": config.trainable, "examples": n_examples, "fingerprint": data_hash}
    after = _evaluate(final, tokenizer, evaluation, progress, "(after)")
    state.wall_seconds = time.perf_counter() - started
    record = _record(config, state, total, after, summary)
    if out is not None:
        _save(final, tokenizer, out, plan, config.merge)
        _write_json(out / RECOVERY_FILE, record)
    return _result(final, state, total, False, after, state.wall_seconds, out, record)


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0  # any id: padded positions are masked out of attention and loss


def _live_logger(out: Path | None, history: list[dict[str, float]], on_step: Callable[[StepReport], None] | None
                 ) -> Callable[[StepReport], None]:
    """Forward reports to `on_step` and append them to `out/live_losses.jsonl` (the dashboard's live curve)."""
    log = out / LIVE_LOG if out is not None else None
    if log is not None:  # restart the live log from the checkpoint's history (a crash may have left extra rows)
        log.write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")

    def report(r: StepReport) -> None:
        if log is not None:
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": r.step, "epoch": r.epoch, "loss": r.loss, "lr": r.lr}) + "\n")
        if on_step is not None:
            on_step(r)

    return report


def _live_curve(out: Path | None, curve: list[dict[str, float]]) -> Callable[[dict[str, float]], None]:
    """Append points to `curve` and to `out/live_perplexity.jsonl` (restarted from `curve`, as the live loss log)."""
    log = out / LIVE_CURVE if out is not None else None
    if log is not None:
        log.write_text("".join(json.dumps(point) + "\n" for point in curve), encoding="utf-8")

    def add(point: dict[str, float]) -> None:
        curve.append(point)
        if log is not None:
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(point) + "\n")

    return add


def perplexity_curve(out_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Perplexity against training tokens of a run directory: final (`recovery.json`; with its before/after points
    when the run evaluated before and after) or the points measured so far while it trains (`eval_every`); [] when
    none."""
    out = Path(out_dir)
    if (out / RECOVERY_FILE).is_file():
        return json.loads((out / RECOVERY_FILE).read_text(encoding="utf-8")).get("curve", [])
    return _jsonl(out / LIVE_CURVE)


def _jsonl(path: Path) -> list[dict[str, float]]:
    """The rows of a live log another process appends to (a last line caught half-written is left out)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_curve(out_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The loss curve of a run directory: final (`recovery.json`) or live while it trains."""
    out = Path(out_dir)
    if (out / RECOVERY_FILE).is_file():
        return json.loads((out / RECOVERY_FILE).read_text(encoding="utf-8"))["losses"]
    return _jsonl(out / LIVE_LOG)


def _record(config: RecoveryConfig, state: TrainState, total: int, after: dict[str, Any], summary: dict[str, Any]
            ) -> dict[str, Any]:
    import peft
    import transformers

    return {
        "format": FORMAT, "settings": {f.name: _jsonable(getattr(config, f.name)) for f in fields(config)},
        **summary, "output": "merged" if config.merge else "adapter", "steps": state.step, "total_steps": total,
        "epochs_done": state.epoch, "tokens": state.tokens, "time_budget_spent": state.out_of_time,
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(state.wall_seconds, 2),
        "tokens_per_second": round(state.tokens / state.train_seconds, 1) if state.train_seconds else None,
        "losses": state.losses, "before": state.before, "after": after, "curve": _curve(state, after),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def _curve(state: TrainState, after: dict[str, Any]) -> list[dict[str, float]]:
    """Perplexity against training tokens: before (0 tokens), every `eval_every` updates, after (all tokens); the
    first and last points are the before/after evaluation's unless the curve measured them on its own windows."""
    def point(step: int, tokens: int, metrics: dict[str, Any]) -> list[dict[str, float]]:
        ppl = {k: v for k, v in (metrics or {}).items() if k.startswith("ppl/")}
        return [{"step": step, "tokens": tokens, **ppl}] if ppl else []

    if state.curve_ends:
        return state.curve
    end = point(state.step, state.tokens, after)  # replaces a point measured at the last update (time budget)
    middle = [c for c in state.curve if not (end and c["step"] == state.step)]
    return point(0, 0, state.before) + middle + end


def _same_perplexity(a: EvalConfig, b: EvalConfig) -> bool:
    """Whether `a` measures perplexity on the same sets and windows as `b` (then the curve reuses its numbers)."""
    return all(getattr(a, k) == getattr(b, k) for k in ("perplexity", "limit", "seq_len", "batch_size", "data_dir"))


def _result(model: nn.Module, state: TrainState, total: int, stopped: bool, after: dict[str, Any] | None,
            wall: float, out: Path | None, record: dict[str, Any]) -> RecoveryResult:
    return RecoveryResult(model=model, steps=state.step, total_steps=total, epochs_done=state.epoch, stopped=stopped,
                          losses=state.losses, before=state.before, after=after, wall_seconds=wall,
                          train_seconds=state.train_seconds, out_dir=out, record=record)


def _save(model: nn.Module, tokenizer: Any, out: Path, plan: PruningPlan | None, merged: bool) -> None:
    """Replace `out` (checkpoint included) by the merged pruned model or by the adapter, atomically."""
    from minillm_core.io import PLAN_FILE, _swap_in, save_pruned
    from minillm_core.outputs import staging_dir

    if merged:
        save_pruned(model, tokenizer, out, plan=plan, overwrite=True)
        return
    tmp = staging_dir(out)
    try:
        model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from minillm_core.outputs import write_json_atomic

    write_json_atomic(path, payload)


__all__ = ["RecoveryConfig", "RecoveryResult", "StepReport", "default_target_modules", "encode_examples",
           "load_adapter", "load_training_data", "loss_curve", "lr_at", "merge_adapters",
           "perplexity_curve", "recover", "steps_for_tokens", "steps_per_epoch"]

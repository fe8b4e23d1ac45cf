"""Settings of a LoRA recovery run (`RecoveryConfig`) and what it measures before and after by default.

Validated on construction (errors name the allowed values); the CLI and the dashboard generate their inputs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.options import option

# Settings that may change when a run resumes: everything else must match the checkpoint.
_RESUMABLE_CHANGES = ("epochs", "max_steps", "max_tokens", "max_minutes", "merge", "data_dir", "overwrite",
                      "eval_every")
#: lora: PEFT adapters on the linears; full: every parameter of the pruned model.
TRAINABLE = ("lora", "full")
#: sft: next-token loss; kd: logit distillation; local: block-local distillation, layer by layer.
METHODS = ("sft", "kd", "local")
#: The most passes over the records a run makes (`epochs`; a time-boxed run without another budget).
MAX_EPOCHS = 100
#: Training data the original model writes itself (`data.self_examples`).
SELF_DATA = "self"
#: What `recover` measures before and after unless told otherwise: WikiText-2 perplexity on the first 40 windows.
DEFAULT_EVAL = EvalConfig(perplexity=("wikitext2",), limit=40)


@dataclass(frozen=True)
class RecoveryConfig:
    """Settings of one LoRA recovery run; validated on construction (errors name the allowed values).

    Paper-scale recipe (LLM-Pruner, Ma et al. 2023, `post_training.py`): rank 8, alpha 16, dropout 0.05 on every
    attention and MLP linear, Alpaca-cleaned (~50k records), 2 epochs, lr 1e-4, batch 64 (micro-batch 4), cutoff
    256 tokens, prompt tokens masked (`train_on_inputs` False): `RecoveryConfig(learning_rate=1e-4, epochs=2,
    n_samples=None, batch_size=4, grad_accum=16, warmup_steps=100)` with `MINILLM_DATA_DIR` unset (the Hub copy).
    The defaults here are a CPU-sized run (50 updates of 4 records, 200 Alpaca records, one epoch): lr 3e-4, the
    default of LLM-Pruner's and Alpaca-LoRA's scripts, because 1e-4 barely moves an adapter in so few updates.

    `data`: a registered text dataset (`alpaca` is instruction data; wikitext2, ptb, c4 are plain text, their train
    split), or a path to a `.json`/`.jsonl` file of Alpaca records (`instruction`, `output`, optional `input`) or to a
    `.txt` file of plain text. `n_samples` keeps a seeded random subset of records (plain text: of `max_length`
    blocks); None keeps all. `target_modules` None means every attention and MLP linear, named by the adapter.
    """

    rank: int = option(8, "LoRA rank.", min=1)
    alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank).", min=0.0)
    dropout: float = option(0.05, "LoRA dropout.", min=0.0, max=0.99)
    target_modules: tuple[str, ...] | None = option(
        None, "Linear names to adapt; default: every attention and MLP linear of the architecture.")
    learning_rate: float = option(3e-4, "Peak AdamW learning rate.", min=0.0)
    warmup_steps: int = option(5, "Linear warmup updates, then linear decay to 0.", min=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", min=0.0)
    epochs: int | None = option(None, "Passes over the records. Empty or 0: one, or with --max-minutes (and no "
                                "other budget) as many as the time allows, at most 100.", min=0, max=MAX_EPOCHS,
                                unset="one, or as time allows")
    max_steps: int | None = option(None, "Stop after this many updates (overrides --epochs; the data is cycled).",
                                   min=1, unset="by epochs")
    max_tokens: int | None = option(
        None, "Training budget in tokens: the updates it takes are counted from the data before training (so the "
        "learning rate decays to 0 there), overriding --epochs; the data is cycled. Empty or 0: --epochs / "
        "--max-steps decide.", min=0, label="budget: training tokens", unset="by epochs")
    max_minutes: float | None = option(
        None, "Training budget in minutes (evaluations and checkpoints not counted): training ends when they are "
        "spent or when the updates --epochs / --max-steps / --max-tokens set are done, whichever comes first "
        "(alone, the records are repeated until the time is spent), then the model is evaluated and saved as usual; "
        "after warmup the learning rate decays over whichever budget is closer to its end. Depends on the machine's "
        "speed, so two runs may differ. Empty or 0: no time limit.", min=0.0, label="budget: minutes",
        unset="no limit")
    batch_size: int = option(4, "Records per forward pass (micro-batch).", min=1)
    grad_accum: int = option(1, "Micro-batches per update.", min=1)
    max_length: int = option(256, "Tokens per record (LLM-Pruner cutoff_len).", min=2)
    data: str = option("alpaca", "alpaca (Alpaca-cleaned: data mirror, else the Hub), c4/ptb/wikitext2 (plain text, "
                       "train split), self (the original model writes the text, sampled from its BOS token: no data "
                       "at all; needs the teacher), or a .json/.jsonl file of Alpaca records (instruction, input, "
                       "output) or a .txt file.", label="training data")
    n_samples: int | None = option(200, "Seeded subset of records (plain text: max-length blocks); 0 or empty = all.",
                                   min=0, label="records")
    train_on_inputs: bool = option(False, "Also train on the prompt tokens (LLM-Pruner: off).")
    seed: int = option(0, "Seed for the record subset, dropout and shuffling.")
    method: str = option("sft", "sft: next-token loss on the data's labels; kd: distil the original model (forward "
                         "KL on the logits of the trained tokens, Minitron-style; needs the teacher); local: train "
                         "each pruned layer to reproduce the original layer on its own inputs, one layer at a time "
                         "(block-local; --trainable full, --epochs passes per layer, no checkpoints).",
                         choices=METHODS, label="recovery method")
    kd_temperature: float = option(1.0, "Distillation temperature T (the KL is scaled by T^2).", min=0.05, max=20.0,
                                   label="KD temperature")
    kd_alpha: float = option(1.0, "Weight of the distillation term; 1 - alpha goes to the next-token loss.",
                             min=0.0, max=1.0, label="KD weight")
    kd_top_k: int | None = option(
        None, "With --method kd: compute the teacher's top-k log-probs per token once, keep them on disk (safetensors "
        "beside the checkpoint) and train without the teacher in memory; the loss is then the KL over those k tokens "
        "plus one bucket for the rest (a lower bound of the full KL). Empty or 0: the full distribution, teacher in "
        "memory.", min=0, label="KD top-k cache", unset="off")
    trainable: str = option("lora", "What trains: lora (adapters on the linears, merged after; low memory) or full "
                            "(every remaining weight, embeddings included; AdamW keeps two more copies of the model, "
                            "Minitron's setting).", choices=TRAINABLE, label="trained weights")
    eval_every: int | None = option(
        None, "Also measure perplexity every N updates while training (the curve of perplexity against training "
        "tokens, in recovery.json and on the Run page); each costs one evaluation. Empty or 0: before and after only.",
        min=0, label="perplexity every N updates", unset="before/after only")
    merge: bool = option(True, "Merge LoRA into the pruned weights, or save the PEFT adapter on its own.",
                         cli="merge/--keep-adapter", label="merge adapters into the weights")
    data_dir: str | None = None  # None: MINILLM_DATA_DIR, else the Hub
    overwrite: bool = option(False, "Replace a non-empty --out (its checkpoint included).")

    def __post_init__(self) -> None:
        if self.epochs == 0:
            object.__setattr__(self, "epochs", None)
        for name in ("rank", "batch_size", "grad_accum", "max_length"):
            _check_int(name, getattr(self, name), 1)
        if self.epochs is not None:
            _check_int("epochs", self.epochs, 1)
            if self.epochs > MAX_EPOCHS:
                raise MiniLLMError(f"epochs must be at most {MAX_EPOCHS}, got {self.epochs}")
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.n_samples == 0:  # 0 = every record, as on the command line
            object.__setattr__(self, "n_samples", None)
        for name in ("max_steps", "n_samples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.max_length < 2:
            raise MiniLLMError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise MiniLLMError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.learning_rate > 0 and self.alpha > 0 and self.weight_decay >= 0):
            raise MiniLLMError("learning_rate and alpha must be > 0 and weight_decay >= 0")
        if self.method not in METHODS:
            raise MiniLLMError(f"unknown recovery method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.method == "local" and (self.trainable != "full" or self.max_steps is not None):
            raise MiniLLMError("method local trains each pruned layer's own weights for --epochs passes over the "
                               "rows: pass --trainable full, and no --max-steps")
        for name in ("max_tokens", "max_minutes", "eval_every"):  # 0 = none, as on the command line
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
            if self.max_steps is not None:
                raise MiniLLMError("max_tokens and max_steps both set the number of updates: pass one of them")
        if self.max_minutes is not None and (isinstance(self.max_minutes, bool) or not isinstance(
                self.max_minutes, (int, float)) or not 0 < self.max_minutes < math.inf):
            raise MiniLLMError(f"max_minutes must be a number > 0, got {self.max_minutes!r}")
        if self.method == "local" and (self.max_tokens is not None or self.max_minutes is not None):
            raise MiniLLMError("method local trains each pruned layer for --epochs passes over the rows: drop "
                               "--max-tokens and --max-minutes")
        if self.eval_every is not None:
            _check_int("eval_every", self.eval_every, 1)
            if self.method == "local":
                raise MiniLLMError("eval_every measures the model between updates; method local trains one layer at a "
                                   "time (the model is whole only at the end): drop --eval-every")
        if self.kd_top_k == 0:
            object.__setattr__(self, "kd_top_k", None)
        if self.kd_top_k is not None:
            _check_int("kd_top_k", self.kd_top_k, 1)
            if self.method != "kd":
                raise MiniLLMError(f"kd_top_k caches the teacher's logits for --method kd, not {self.method}; "
                                   "drop --kd-top-k or pass --method kd")
        if self.trainable not in TRAINABLE:
            raise MiniLLMError(f"unknown trainable {self.trainable!r}; allowed: {', '.join(TRAINABLE)}")
        if self.trainable == "full" and not self.merge:
            raise MiniLLMError("--keep-adapter keeps a LoRA adapter apart; with trainable full there is none (the "
                               "weights themselves are trained): use --merge or --trainable lora")
        for name, low, high in (("kd_temperature", 0.05, 20.0), ("kd_alpha", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise MiniLLMError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules.split(",")))
        elif self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def passes(self) -> int:
        """Passes over the records: `epochs`, else one, or as many as a time budget allows (`MAX_EPOCHS`)."""
        if self.epochs is not None:
            return self.epochs
        return MAX_EPOCHS if self.max_minutes and not (self.max_steps or self.max_tokens) else 1

    def training_settings(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in _RESUMABLE_CHANGES}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MiniLLMError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def lr_at(step: int, total: int, warmup: int, peak: float, time_left: float = 1.0) -> float:
    """Learning rate of update `step` (0-based): linear warmup to `peak`, then linear decay (HF Trainer's default).

    `time_left`: the fraction of a time budget not yet spent; after warmup the decay follows whichever budget is
    closer to its end, so a time-boxed run also ends near 0 (budgeted training, Li et al. 2020)."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    return peak * max(min(max(total - step, 0) / max(total - warmup, 1), time_left), 0.0)

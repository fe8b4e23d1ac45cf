"""LoRA recovery of a pruned model: settings (`config`), training data (`data`) and training with checkpoints (`train`).

`recover(model, tokenizer, RecoveryConfig(...))` fine-tunes low-rank adapters with `peft`, then merges or keeps them.
"""

from minillm_core.recovery.config import DEFAULT_EVAL, RecoveryConfig
from minillm_core.recovery.data import (
    FILE_KINDS,
    IGNORE,
    RESPONSE_MARKER,
    collate,
    encode_examples,
    fingerprint,
    load_training_data,
)
from minillm_core.recovery.train import (
    CHECKPOINT_DIR,
    RECOVERY_FILE,
    RecoveryResult,
    StepReport,
    default_target_modules,
    load_adapter,
    loss_curve,
    lr_at,
    merge_adapters,
    perplexity_curve,
    read_checkpoint,
    recover,
    save_checkpoint,
    steps_per_epoch,
)

__all__ = [
    "CHECKPOINT_DIR", "DEFAULT_EVAL", "FILE_KINDS", "IGNORE", "RECOVERY_FILE", "RESPONSE_MARKER", "RecoveryConfig",
    "RecoveryResult", "StepReport", "collate", "default_target_modules", "encode_examples", "fingerprint",
    "load_adapter", "load_training_data", "loss_curve", "lr_at", "merge_adapters", "perplexity_curve",
    "read_checkpoint", "recover", "save_checkpoint", "steps_per_epoch",
]

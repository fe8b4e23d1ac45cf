"""Knowledge distillation from the unpruned model: forward KL between the original's and the pruned model's logits.

Minitron (Sreenivas et al. 2024) recovers width-pruned Llama-3.1 by distilling the original's logits; this is that
loss at temperature T, scaled by T^2 (Hinton et al. 2015) so its gradients keep their size as T changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from minillm_core.recovery.data import IGNORE
from minillm_core.recovery.teacher_cache import kd_loss_top_k


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the positions that predict a trained
    token (labels != IGNORE after the causal shift: prompt and padding do not count, as in the next-token loss).

    student_logits, teacher_logits: [batch, seq, vocab]; labels: [batch, seq] -> scalar (0 with no trained token).
    """
    mask = labels[:, 1:] != IGNORE
    if not bool(mask.any()):
        return student_logits.sum() * 0.0  # keeps the graph: a batch of prompts only contributes nothing
    s = F.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def training_loss(student: Any, teacher: Any, batch: dict[str, torch.Tensor], method: str, temperature: float,
                  alpha: float, cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """The loss of one micro-batch: the next-token loss (`sft`), or `alpha` x KD + (1 - alpha) x next-token loss
    (`kd`; alpha 1 is pure distillation). The teacher runs without gradients on the student's batch, or its top-k
    targets come from `cached` (`teacher_cache.TeacherCache.targets`, the top-k approximation). KD covers every
    real token of the example, prompt included (the teacher has a distribution at each position, as in Minitron's
    distillation on the whole sequence); the next-token loss keeps the labels' masking."""
    out = student(**batch, use_cache=False)
    if method == "sft":
        return out.loss
    every_token = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    if cached is not None:
        values, ids, tail = (t.to(out.logits.device) for t in cached)
        kd = kd_loss_top_k(out.logits[:, :-1], values, ids, tail, every_token[:, 1:] != IGNORE, temperature)
    else:
        device = next(teacher.parameters()).device
        with torch.no_grad():
            target = teacher(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
        kd = kd_loss(out.logits, target.to(out.logits.device), every_token, temperature)
    return kd if alpha >= 1.0 else alpha * kd + (1.0 - alpha) * out.loss

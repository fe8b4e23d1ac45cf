"""Compressed-model metrics against the original on the same text: per-token KL divergence and top-1 agreement.

Both models see identical windows; KL(P_original || P_pruned) is averaged over every predicted position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from minillm_core.devices import input_device
from minillm_core.errors import MiniLLMError
from minillm_core.progress import Progress, no_progress


@dataclass(frozen=True)
class Agreement:
    """kl: mean per-token KL(original || pruned) in nats; agreement: fraction of equal argmax next tokens."""

    kl: float
    agreement: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kl_and_agreement_from_logits(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KL(softmax(reference) || softmax(candidate)) and argmax equality.

    reference, candidate: [..., vocab] logits -> ([...] KL in nats, [...] bool).
    """
    ref_logp = F.log_softmax(reference.double(), dim=-1)
    cand_logp = F.log_softmax(candidate.double(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1)
    return kl, reference.argmax(-1) == candidate.argmax(-1)


@torch.inference_mode()
def compare_models(
    original: Any, pruned: Any, windows: torch.Tensor, batch_size: int = 8, progress: Progress = no_progress
) -> Agreement:
    """KL and top-1 agreement of `pruned` against `original` on token windows [n, seq_len] (all positions)."""
    kl_sum, agree, n = 0.0, 0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size]
        ref = original(batch.to(input_device(original))).logits.float().cpu()
        cand = pruned(batch.to(input_device(pruned))).logits.float().cpu()
        kl, same = kl_and_agreement_from_logits(ref, cand)
        kl_sum += float(kl.sum())
        agree += int(same.sum())
        n += same.numel()
        progress(min(start + batch_size, windows.shape[0]), windows.shape[0], "KL / agreement")
    return Agreement(kl=kl_sum / n, agreement=agree / n, n_tokens=n)


def check_same_tokenizer(tokenizer_a: Any, tokenizer_b: Any, model_a: Any, model_b: Any) -> None:
    """Comparisons are token by token (KL, agreement, A/B): both models must share one vocabulary, as a pruned
    model shares its original's. `tokenizer_b` may be None when only one tokenizer is at hand."""
    size_a = model_a.get_output_embeddings().weight.shape[0]
    size_b = model_b.get_output_embeddings().weight.shape[0]
    if size_a != size_b or (tokenizer_b is not None and tokenizer_a.get_vocab() != tokenizer_b.get_vocab()):
        raise MiniLLMError(f"the two models use different vocabularies ({size_a:,} vs {size_b:,} output tokens, "
                           f"{len(tokenizer_a):,} vs {len(tokenizer_b or tokenizer_a):,} tokenizer entries); a "
                           "compressed model is compared with its own original")


def retained(original: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    """pruned / original for every metric both have (perplexity retained > 1 means worse; accuracy < 1 worse)."""
    return {k: pruned[k] / original[k] for k in original if k in pruned and original[k] not in (0, None)}

"""Perplexity with the pruning-paper protocol: non-overlapping windows over one tokenized text.

`perplexity` scores any text; `perplexity_on` fetches a registered benchmark (wikitext2, ptb) through `data`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from minillm_core.data import perplexity_text
from minillm_core.devices import input_device
from minillm_core.errors import DataError
from minillm_core.evaluation.compare import Agreement, kl_and_agreement_from_logits
from minillm_core.progress import Progress, no_progress

logger = logging.getLogger(__name__)

_MAX_EXP_ARG = math.log(torch.finfo(torch.float64).max)


@dataclass(frozen=True)
class PerplexityResult:
    """exp(nll_sum / n_tokens); n_tokens = n_windows * (seq_len - 1) predicted tokens."""

    ppl: float
    nll_sum: float
    n_tokens: int
    n_windows: int
    seq_len: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_nll(cls, nll_sum: float, n_windows: int, seq_len: int) -> PerplexityResult:
        """The result of `n_windows` windows whose predicted tokens summed to `nll_sum` (any engine)."""
        n_tokens = n_windows * (seq_len - 1)
        mean_nll = nll_sum / n_tokens
        # A badly broken model can exceed exp()'s float range; that is an infinite perplexity, not a crash.
        ppl = math.exp(mean_nll) if mean_nll < _MAX_EXP_ARG else math.inf
        return cls(ppl=ppl, nll_sum=nll_sum, n_tokens=n_tokens, n_windows=n_windows, seq_len=seq_len)


def token_windows(input_ids: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """`[n]` token ids -> `[n_windows, seq_len]` non-overlapping windows; the final partial window is dropped.

    `limit` keeps at most that many windows (the first ones). A text shorter than one window is a `DataError`.
    """
    n_windows = input_ids.numel() // seq_len
    if n_windows == 0:
        raise DataError(f"the text has {input_ids.numel()} tokens, fewer than one window of seq_len={seq_len}")
    if limit is not None:
        n_windows = min(n_windows, limit)
    return input_ids[: n_windows * seq_len].reshape(n_windows, seq_len)


#: Tokens tokenized beyond the ones needed: a tokenizer merges across a cut only near it (within a word), so the
#: needed tokens of a prefix are those of the whole text.
_PREFIX_MARGIN = 64


def tokenize_prefix(tokenizer: Any, text: str, needed: int | None) -> torch.Tensor:
    """`tokenizer(text).input_ids` as a `[n]` tensor, or, when only the first `needed` tokens are used, those of a
    prefix of `text` long enough to hold them plus a margin (the same ids: a limited evaluation of a long test set
    does not tokenize all of it; the prefix grows 4x until it is long enough)."""
    chars = max(4096, 8 * (needed or 0))
    while needed is not None and chars < len(text):
        ids = tokenizer(text[:chars], return_tensors="pt", verbose=False).input_ids[0]
        if ids.numel() >= needed + _PREFIX_MARGIN:
            return ids
        chars *= 4
    return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]


def _check_args(seq_len: int, batch_size: int, limit: int | None) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise DataError(f"seq_len must be an integer >= 2 (one token to predict from), got {seq_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be None (all windows) or an integer >= 1, got {limit!r}")


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while scoring; the caller's train/eval mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _batch_nll(model: Any, batch: torch.Tensor) -> float:
    """Summed next-token NLL of `[b, seq_len]` windows; each window predicts its tokens 1..seq_len-1."""
    return _nll(model(input_ids=batch, use_cache=False).logits, batch)


def _nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed next-token NLL of `[b, seq_len, vocab]` logits of the windows `batch`."""
    total = 0.0
    batch = batch.to(logits.device)
    for row_logits, row_ids in zip(logits, batch, strict=True):  # upcast one window at a time to bound memory
        total += F.cross_entropy(row_logits[:-1].float(), row_ids[1:], reduction="sum").item()
    return total


@torch.inference_mode()
def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    seq_len: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    progress: Progress = no_progress,
    device: torch.device | str | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `text` with the LLM-Pruner / Wanda protocol.

    The whole text is tokenized once with the tokenizer's default encoding, `tokenizer(text).input_ids`, exactly as
    LLM-Pruner's `process_data` does: special tokens are whatever the tokenizer adds by default (for Llama one BOS
    at the start of the text, so only the first window begins with it). The ids are cut into non-overlapping
    `seq_len` windows (`[n_windows, seq_len]`), the final partial window is dropped, `limit` keeps the first
    windows. Each window is scored on its own: tokens 1..seq_len-1 are predicted from the window's prefix, and
    ppl = exp(sum of NLL / (n_windows * (seq_len - 1))), i.e. LLM-Pruner's mean over every predicted token.
    Windows are moved to `device` (default: the device of the model's first parameter; the model is not moved),
    the model scores in eval mode and gets its train/eval mode back, and `progress(windows_done, n_windows,
    "perplexity")` is called after each batch.
    """
    _check_args(seq_len, batch_size, limit)
    ids = tokenize_prefix(tokenizer, text, None if limit is None else limit * seq_len)
    windows = token_windows(ids, seq_len, limit)
    n_windows = windows.shape[0]
    device = torch.device(device) if device is not None else input_device(model)
    logger.info("perplexity: %d windows of %d tokens (%d tokens in the text)", n_windows, seq_len, ids.numel())
    nll_sum = 0.0
    with _eval_mode(model):
        for start in range(0, n_windows, batch_size):
            nll_sum += _batch_nll(model, windows[start : start + batch_size].to(device))
            progress(min(start + batch_size, n_windows), n_windows, "perplexity")
    return PerplexityResult.from_nll(nll_sum, n_windows, seq_len)


@dataclass(frozen=True)
class PairedPerplexity:
    """One pass of two models over the same windows: both perplexities (`original` None when only the pruned model
    was scored) and KL / top-1 agreement of the pruned model against the original on the first windows."""

    original: PerplexityResult | None
    pruned: PerplexityResult
    agreement: Agreement


@torch.inference_mode()
def perplexity_pair(
    original: Any,
    pruned: Any,
    tokenizer: Any,
    text: str,
    seq_len: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    compare_windows: int = 16,
    score_original: bool = True,
    progress: Progress = no_progress,
) -> PairedPerplexity:
    """`perplexity` of both models and their KL / agreement (`compare.compare_models`) from the same forward passes.

    Each batch of windows goes through both models once: their logits give both perplexities and, on the first
    `compare_windows` windows, KL(original || pruned) and top-1 agreement, so nothing is run twice. With
    `score_original=False` (its perplexity is already known) the original runs only on those first windows.
    """
    _check_args(seq_len, batch_size, limit)
    if isinstance(compare_windows, bool) or not isinstance(compare_windows, int) or compare_windows < 1:
        raise DataError(f"compare_windows must be an integer >= 1, got {compare_windows!r}")
    ids = tokenize_prefix(tokenizer, text, None if limit is None else limit * seq_len)
    windows = token_windows(ids, seq_len, limit)
    n_windows = windows.shape[0]
    nll = {"original": 0.0, "pruned": 0.0}
    kl_sum, agree, n_compared = 0.0, 0, 0
    with _eval_mode(original), _eval_mode(pruned):
        for start in range(0, n_windows, batch_size):
            batch = windows[start:start + batch_size]
            cand = pruned(input_ids=batch.to(input_device(pruned)), use_cache=False).logits
            nll["pruned"] += _nll(cand, batch)
            compared = max(0, min(compare_windows - start, batch.shape[0]))
            cand = cand[:compared].clone() if compared < batch.shape[0] else cand  # only what the KL reads stays
            if score_original or compared:
                rows = batch if score_original else batch[:compared]
                ref = original(input_ids=rows.to(input_device(original)), use_cache=False).logits
                if score_original:
                    nll["original"] += _nll(ref, rows)
                for i in range(compared):  # one window at a time: bounded memory at float64
                    kl, same = kl_and_agreement_from_logits(ref[i].float().cpu(), cand[i].float().cpu())
                    kl_sum += float(kl.sum())
                    agree += int(same.sum())
                    n_compared += same.numel()
            progress(min(start + batch_size, n_windows), n_windows, "perplexity")
    return PairedPerplexity(
        original=PerplexityResult.from_nll(nll["original"], n_windows, seq_len) if score_original else None,
        pruned=PerplexityResult.from_nll(nll["pruned"], n_windows, seq_len),
        agreement=Agreement(kl=kl_sum / n_compared, agreement=agree / n_compared, n_tokens=n_compared))


def perplexity_on(
    model: Any,
    tokenizer: Any,
    dataset: str,
    seq_len: int = 128,
    batch_size: int = 8,
    limit: int | None = None,
    progress: Progress = no_progress,
    device: torch.device | str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
) -> PerplexityResult:
    """`perplexity` on a registered benchmark's `data.perplexity_text` (`"\\n\\n".join(rows)`; ptb: validation)."""
    text = perplexity_text(dataset, data_dir=data_dir, split=split)
    return perplexity(model, tokenizer, text, seq_len, batch_size, limit, progress, device)

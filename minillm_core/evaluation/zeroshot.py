"""Zero-shot accuracy with lm-evaluation-harness's protocol: log-likelihood of each choice, `acc` and `acc_norm`.

Requests are tokenized like lm-eval's HFLM (`_encode_pair`, no BOS), batched, and results use lm-eval's JSON layout.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from minillm_core.devices import input_device
from minillm_core.errors import DataError
from minillm_core.evaluation.tasks import ALL_TASKS, TASKS, Item, build_items, load_docs
from minillm_core.modeling.base import max_context
from minillm_core.progress import Progress, no_progress

logger = logging.getLogger(__name__)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval HFLM `_encode_pair`: trailing spaces of the context move to the continuation; the continuation's
    tokens are those of `context + continuation` beyond the context's (no special tokens added)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


def _prefix_token(tokenizer: Any) -> int:
    """lm-eval scores an empty context from the end-of-text (else BOS) token."""
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    raise DataError("the tokenizer has neither an EOS nor a BOS token to start an empty context")


@torch.inference_mode()
def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: Progress = no_progress,
) -> list[tuple[float, bool]]:
    """Sum of log-probabilities of each continuation given its context, and whether it is the greedy choice.

    Inputs are (context + continuation)[-(max_length + 1):][:-1] as in lm-eval; longest first, right-padded.
    """
    device = input_device(model)
    max_length = max_length or max_context(model) or 2048  # lm-eval HFLM's default when the model states none
    encoded = []
    for context, continuation in requests:
        if context:
            ctx, cont = encode_pair(tokenizer, context, continuation)
        else:
            ctx, cont = [_prefix_token(tokenizer)], tokenizer(continuation, add_special_tokens=False).input_ids
        if not cont:
            raise DataError(f"empty continuation after tokenization for context {context[-40:]!r}")
        encoded.append(((ctx + cont)[-(max_length + 1):][:-1], cont))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = len(encoded[idx[0]][0])
        batch = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i][0]
            batch[row, : len(ids)] = torch.tensor(ids)
        logprobs = F.log_softmax(model(batch.to(device)).logits.float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            inp, cont = encoded[i]
            positions = torch.arange(len(inp) - len(cont), len(inp))
            lp = logprobs[row, positions]
            target = torch.tensor(cont)
            greedy = bool((lp.argmax(-1) == target).all())
            out[i] = (float(lp.gather(1, target[:, None]).sum()), greedy)
        progress(min(start + batch_size, len(order)), len(order), "log-likelihoods")
    return out


@dataclass
class TaskResult:
    """Per-task metrics plus per-item predictions (for cross-checks and the dashboard)."""

    task: str
    metrics: dict[str, float]
    stderr: dict[str, float]
    n: int
    n_total: int
    predictions: list[dict[str, Any]]
    seconds: float


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and lm-eval's sample standard error of the mean."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def select_items(items: list[Item], limit: int | None, seed: int | None) -> list[Item]:
    """The first `limit` items (lm-eval's --limit) or, with a seed, a seeded random subset in original order."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    if seed is None:
        return items[:limit]
    picked = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in picked]


def score_items(model: Any, tokenizer: Any, task: str, items: list[Item], batch_size: int = 16,
                progress: Progress = no_progress) -> TaskResult:
    t0 = time.perf_counter()
    requests = [r for item in items for r in item.requests]
    lls = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=progress)
    metrics_names = TASKS.get(task).metrics
    preds, acc, acc_norm = [], [], []
    k = 0
    for item in items:
        ll = [v for v, _ in lls[k:k + len(item.requests)]]
        k += len(item.requests)
        pred = max(range(len(ll)), key=ll.__getitem__)
        norm = [v / len(c) for v, c in zip(ll, item.choices, strict=True)]
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        preds.append({"doc_id": item.doc_id, "gold": item.gold, "pred": pred, "pred_norm": pred_norm,
                      "loglikelihoods": ll})
    metrics, stderr = {}, {}
    for name, values in (("acc", acc), ("acc_norm", acc_norm)):
        if name in metrics_names:
            metrics[name], stderr[name] = _mean_stderr(values)
    return TaskResult(task, metrics, stderr, len(items), len(items), preds, time.perf_counter() - t0)


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: list[str] | tuple[str, ...] = ALL_TASKS,
    limit: int | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    data_dir: str | os.PathLike | None = None,
    progress: Progress = no_progress,
) -> dict[str, TaskResult]:
    """Evaluate zero-shot tasks; unknown names raise with the list of tasks before any work starts."""
    specs = [TASKS.get(t) for t in tasks]
    results = {}
    for n, spec in enumerate(specs):
        items = build_items(spec.name, load_docs(spec.name, data_dir))
        chosen = select_items(items, limit, seed)
        label = f"{spec.name} ({n + 1}/{len(specs)})"
        r = score_items(model, tokenizer, spec.name, chosen, batch_size,
                        progress=lambda d, t, _l, s=label: progress(d, t, s))
        r.n_total = len(items)
        results[spec.name] = r
        logger.info("%s: %s on %d/%d items", spec.name, r.metrics, r.n, r.n_total)
    return results


def to_lm_eval_json(results: dict[str, TaskResult], model_name: str, limit: int | None, seed: int | None
                    ) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` result layout: results[task]["acc,none"], stderr, n-samples, versions."""
    out: dict[str, Any] = {"results": {}, "versions": {}, "n-shot": {}, "n-samples": {}, "higher_is_better": {},
                           "config": {"model": model_name, "limit": limit, "subset_seed": seed, "num_fewshot": 0,
                                      "harness": "minillm_core (lm-eval 0.4 protocol)"}}
    for task, r in results.items():
        entry: dict[str, Any] = {"alias": task}
        for metric, value in r.metrics.items():
            entry[f"{metric},none"] = value
            entry[f"{metric}_stderr,none"] = r.stderr[metric]
        out["results"][task] = entry
        out["versions"][task] = 2.0 if task == "boolq" else 1.0
        out["n-shot"][task] = 0
        out["n-samples"][task] = {"original": r.n_total, "effective": r.n}
        out["higher_is_better"][task] = {m: True for m in r.metrics}
    return out


def average_accuracy(results: dict[str, TaskResult]) -> float:
    """Mean `acc` over tasks, as pruning papers report it (LLM-Pruner: the 7-task average of acc)."""
    return sum(r.metrics["acc"] for r in results.values()) / len(results)

"""A/B testing of responses: a prompt suite through the original and the compressed model, compared prompt by prompt.

Per prompt: both responses, exact match, where they diverge, teacher-forced top-1 agreement and per-token KL on the
original's continuation, ROUGE-L and chrF between the responses, and each model's score against the references.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from minillm_core.devices import input_device
from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.compare import kl_and_agreement_from_logits
from minillm_core.modeling.base import max_context
from minillm_core.options import option
from minillm_core.progress import Progress, no_progress
from minillm_core.prompts import Prompt, PromptSuite, suite_names

#: Metrics comparing the two models (the run's `comparison`, as `ab/<name>`), with what each one means.
AB_METRICS = {
    "exact_match": "fraction of prompts where both responses are the same text",
    "agreement": "mean teacher-forced top-1 agreement on the original's response (1 = same next token everywhere)",
    "min_agreement": "the lowest per-prompt agreement",
    "prefix": "mean fraction of the original's response the compressed model reproduces before diverging",
    "kl": "mean per-token KL(original || compressed) on the original's response, in nats",
    "worst_kl": "the highest per-prompt mean KL",
    "rougeL": "mean ROUGE-L F1 between the two responses (rouge-score)",
    "chrf": "mean chrF (0-100) of the compressed model's response against the original's (sacrebleu)",
}
#: Metrics of each model against the prompts' references (in the run's `original` and `pruned` columns).
AB_REFERENCE_METRICS = {
    "ref_match": "fraction of prompts whose response contains a reference answer (case and punctuation ignored)",
    "ref_rougeL": "mean ROUGE-L F1 of the response against its best reference",
}
LOWER_IS_BETTER = ("ab/kl", "ab/worst_kl")


@dataclass(frozen=True)
class ABConfig:
    """Which prompts and how both models answer them (the same settings and seed for both)."""

    prompts: str = option("facts", "Prompt suite: a bundled one (facts, instructions, code, chat), alpaca "
                          "(instructions from the data set), or a .jsonl/.csv/.txt file of prompts (see README).",
                          label="prompt suite")
    max_new_tokens: int = option(32, "Tokens each model may generate per prompt.", min=1, max=1024,
                                 label="new tokens per response")
    limit: int | None = option(None, "Use only the first N prompts of the suite (0 or unset: all; a data set: 32).",
                               min=1, cli="prompt-limit", label="prompts (first N)")
    sample: bool = option(False, "Seeded sampling instead of greedy decoding (both models get the same seed).")
    temperature: float = option(0.7, "Sampling temperature (with --sample).", min=0.01, max=5.0)
    seed: int = option(0, "Seed of the sampled generation.")
    chat: bool = option(True, "Wrap prompts in the tokenizer's chat template when it has one (instruct models).",
                        cli="chat/--no-chat",
                        label="use the chat template")
    batch_size: int = option(8, "Prompts per batch.", min=1, max=256, cli="ab-batch-size")

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, str) or not self.prompts.strip():
            raise MiniLLMError(f"prompts must be a suite name ({', '.join(suite_names())}) or a file path")
        for name, low in (("max_new_tokens", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MiniLLMError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise MiniLLMError(f"limit must be None (all prompts) or an integer >= 1, got {self.limit!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise MiniLLMError(f"temperature must be a positive number, got {self.temperature!r}")


# --- metric functions (pure) ------------------------------------------------------------------------------------

def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where two sequences differ (a length difference counts); None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def prefix_fraction(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of the reference sequence `a` that `b` reproduces before the first difference (1 when equal)."""
    d = first_divergence(a, b)
    return 1.0 if d is None else d / max(len(a), 1)


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces: how a reference answer is looked for in a response."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def reference_match(response: str, references: Sequence[str]) -> bool:
    """Whether the response contains one of the references as whole words (normalized)."""
    padded = f" {normalize(response)} "
    return any(f" {normalize(r)} " in padded for r in references if normalize(r))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts (rouge-score, default tokenizer); two equal texts score 1, even empty ones."""
    if a.strip() == b.strip():
        return 1.0
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure)


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (sacrebleu defaults, 0-100) of `hypothesis` against `reference`; equal texts score 100."""
    if hypothesis.strip() == reference.strip():
        return 100.0
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """mean, median, min, p10, p90 and max of a metric over prompts."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"mean": float(t.mean()), "median": q[1], "min": float(t.min()), "p10": q[0], "p90": q[2],
            "max": float(t.max())}


# --- one A/B run --------------------------------------------------------------------------------------------------

@dataclass
class ABRecord:
    """One prompt's outcome. Token metrics are on the original's response (teacher-forced)."""

    id: str
    tag: str
    prompt: str
    references: list[str]
    original: str
    pruned: str
    original_tokens: int
    pruned_tokens: int
    exact_match: bool
    first_divergence: int | None  # token index where the responses part; None when identical
    prefix: float
    agreement: float
    kl: float
    kl_max: float
    rougeL: float
    chrf: float
    ref_match: dict[str, bool] = field(default_factory=dict)  # {"original": ..., "pruned": ...} with references
    ref_rougeL: dict[str, float] = field(default_factory=dict)


@dataclass
class ABResult:
    """The records of one suite through both models, the settings, and the summary a contract can name."""

    suite: str
    source: str
    config: ABConfig
    records: list[ABRecord]
    seconds: float
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def label(self) -> str:
        """How a person tells saved results apart: "facts · 20 prompts · greedy, 32 tokens · 2026-12-06 07:10"."""
        mode = f"sampled T={self.config.temperature:g}" if self.config.sample else "greedy"
        return (f"{self.suite} · {len(self.records)} prompts · {mode}, {self.config.max_new_tokens} tokens · "
                f"{self.created.replace('T', ' ')[:16]}")

    def headline(self) -> str:
        """The A/B outcome in one sentence, each number with what it means."""
        c, o, p = self.comparison(), self.model_metrics("original"), self.model_metrics("pruned")
        parts = [f"on {len(self.records)} {self.suite} prompts, {c['ab/exact_match']:.0%} of the answers are "
                 f"identical", f"{c['ab/agreement']:.0%} of the original's answer tokens would be chosen the same"
                 f" (worst prompt {c['ab/min_agreement']:.0%})"]
        if o and p:
            parts.append(f"reference answers found {o['ab/ref_match']:.0%} (original) -> {p['ab/ref_match']:.0%} "
                         "(pruned)")
        return "; ".join(parts)

    def comparison(self) -> dict[str, float]:
        """`ab/<metric>` values comparing the models (see AB_METRICS)."""
        r = self.records
        kls = [x.kl for x in r]
        return {"ab/exact_match": sum(x.exact_match for x in r) / len(r),
                "ab/agreement": sum(x.agreement for x in r) / len(r), "ab/min_agreement": min(x.agreement for x in r),
                "ab/prefix": sum(x.prefix for x in r) / len(r), "ab/kl": sum(kls) / len(r), "ab/worst_kl": max(kls),
                "ab/rougeL": sum(x.rougeL for x in r) / len(r), "ab/chrf": sum(x.chrf for x in r) / len(r)}

    def model_metrics(self, which: str) -> dict[str, float]:
        """`ab/ref_match` and `ab/ref_rougeL` of one model ("original" or "pruned"); {} without references."""
        scored = [x for x in self.records if x.references]
        if not scored:
            return {}
        return {"ab/ref_match": sum(x.ref_match[which] for x in scored) / len(scored),
                "ab/ref_rougeL": sum(x.ref_rougeL[which] for x in scored) / len(scored)}

    def summary(self) -> dict[str, dict[str, float]]:
        """The distribution of every per-prompt metric over the suite."""
        keys = ("agreement", "prefix", "kl", "kl_max", "rougeL", "chrf", "original_tokens", "pruned_tokens")
        return {k: distribution([getattr(x, k) for x in self.records]) for k in keys}

    def worst(self, n: int = 5) -> list[ABRecord]:
        """The prompts where the models differ most: lowest agreement, then highest KL."""
        return sorted(self.records, key=lambda x: (x.agreement, -x.kl))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "minillm.ab/1", "suite": self.suite, "source": self.source, "config": asdict(self.config),
                "created": self.created, "seconds": self.seconds, "n_prompts": len(self.records),
                "comparison": self.comparison(),
                "original": self.model_metrics("original"), "pruned": self.model_metrics("pruned"),
                "summary": self.summary(), "records": [asdict(x) for x in self.records]}

    def to_csv(self) -> str:
        """One row per prompt, every per-prompt field (references joined by ' | ')."""
        buf = io.StringIO()
        rows = [_flat_record(x) for x in self.records]
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _flat_record(x: ABRecord) -> dict[str, Any]:
    row = {k: v for k, v in asdict(x).items() if not isinstance(v, (dict, list))}
    row["references"] = " | ".join(x.references)
    for which in ("original", "pruned"):
        row[f"ref_match_{which}"] = x.ref_match.get(which, "")
        row[f"ref_rougeL_{which}"] = x.ref_rougeL.get(which, "")
    return row


def render(prompt: Prompt, tokenizer: Any, chat: bool) -> tuple[str, bool]:
    """The model input text of a prompt, and whether it already carries the special tokens (a chat template)."""
    turns = [{"role": r, "content": c} for r, c in prompt.messages]
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False), True
    if len(turns) == 1:
        return turns[0]["content"], False
    return "\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns) + "\nAssistant:", False


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


@torch.inference_mode()
def _generate(model: Any, tokenizer: Any, texts: list[str], special: bool, config: ABConfig, eos: set[int]
              ) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, response ids up to and including the first EOS) per text, generated as one left-padded batch."""
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad_token is None:  # padding needs some token; the attention mask hides it
        tokenizer.pad_token = tokenizer.eos_token
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not special)
    finally:  # the tokenizer may be shared (the dashboard caches it): leave it as it was
        tokenizer.padding_side, tokenizer.pad_token = side, pad_token
    context = max_context(model)
    longest = int(enc.attention_mask.sum(1).max())
    if context is not None and longest + config.max_new_tokens > context:
        raise MiniLLMError(f"a prompt of {longest} tokens plus {config.max_new_tokens} new tokens exceeds the model's "
                           f"context of {context} positions; shorten the prompts or lower max_new_tokens")
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    kwargs = {"do_sample": True, "temperature": config.temperature} if config.sample else {"do_sample": False}
    if config.sample:  # the same seed before each batch of each model: reproducible and comparable
        torch.manual_seed(config.seed)
    out = model.generate(enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                         max_new_tokens=config.max_new_tokens, pad_token_id=pad, **kwargs).cpu()
    prompts, responses = [], []
    width = enc.input_ids.shape[1]
    for row, mask in zip(out, enc.attention_mask, strict=True):
        prompts.append(row[:width][mask.bool()].tolist())
        new = row[width:].tolist()
        cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
        responses.append(new[:cut])
    return prompts, responses


LOGITS_BUDGET_BYTES = 512 * 2**20  # float32 logits of one teacher-forced pass (a 128k vocabulary fills it fast)


@torch.inference_mode()
def _response_logits(model: Any, prompts: list[list[int]], responses: list[list[int]]) -> list[torch.Tensor]:
    """Logits [len(response), vocab] that predict each response token, from right-padded forward passes of as many
    rows as fit `LOGITS_BUDGET_BYTES`."""
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    width = max(len(s) for s in seqs)
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = max(1, LOGITS_BUDGET_BYTES // (4 * width * vocab))
    device = input_device(model)
    out = []
    for start in range(0, len(seqs), rows):
        chunk = seqs[start:start + rows]
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        out += [logits[i, len(p) - 1:len(p) - 1 + len(r)] for i, (p, r) in
                enumerate(zip(prompts[start:start + rows], responses[start:start + rows], strict=True))]
    return out


def _record(prompt: Prompt, tokenizer: Any, a: list[int], b: list[int], logits_a: torch.Tensor,
            logits_b: torch.Tensor) -> ABRecord:
    kl, same = kl_and_agreement_from_logits(logits_a, logits_b)
    text_a = tokenizer.decode(a, skip_special_tokens=True).strip()
    text_b = tokenizer.decode(b, skip_special_tokens=True).strip()
    rec = ABRecord(id=prompt.id, tag=prompt.tag, prompt=prompt.text, references=list(prompt.references),
                   original=text_a, pruned=text_b, original_tokens=len(a), pruned_tokens=len(b),
                   exact_match=text_a == text_b, first_divergence=first_divergence(a, b), prefix=prefix_fraction(a, b),
                   agreement=float(same.double().mean()), kl=float(kl.mean()), kl_max=float(kl.max()),
                   rougeL=rouge_l(text_b, text_a), chrf=chrf(text_b, text_a))
    if prompt.references:
        for which, text in (("original", text_a), ("pruned", text_b)):
            rec.ref_match[which] = reference_match(text, prompt.references)
            rec.ref_rougeL[which] = max(rouge_l(text, r) for r in prompt.references)
    return rec


def run_ab(original: Any, pruned: Any, tokenizer: Any, suite: PromptSuite, config: ABConfig,
           progress: Progress = no_progress) -> ABResult:
    """Every prompt of `suite` (the first `config.limit`) through both models (batched, same settings), compared
    prompt by prompt. The original's response is the reference of the token metrics: agreement and KL are measured
    teacher-forced on it, so they do not drift after a divergence.
    """
    prompts = suite.prompts[:config.limit] if config.limit else suite.prompts
    eos = _eos_ids(original, tokenizer) | _eos_ids(pruned, tokenizer)
    if not eos:
        raise MiniLLMError("the tokenizer has no end-of-sequence token; A/B generation needs one to stop")
    t0, records = time.perf_counter(), []
    batches = [prompts[i:i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    for done, batch in enumerate(batches):
        rendered = [render(p, tokenizer, config.chat) for p in batch]
        texts, special = [t for t, _ in rendered], rendered[0][1]
        ids, resp_a = _generate(original, tokenizer, texts, special, config, eos)
        _, resp_b = _generate(pruned, tokenizer, texts, special, config, eos)
        logits_a = _response_logits(original, ids, resp_a)
        logits_b = _response_logits(pruned, ids, resp_a)
        records += [_record(p, tokenizer, a, b, la, lb)
                    for p, a, b, la, lb in zip(batch, resp_a, resp_b, logits_a, logits_b, strict=True)]
        progress(min((done + 1) * config.batch_size, len(prompts)), len(prompts), f"A/B {suite.name}")
    return ABResult(suite.name, suite.source, config, records, time.perf_counter() - t0)


def result_from_dict(data: dict[str, Any]) -> ABResult:
    """An `ABResult.to_dict()` read back (a run's saved A/B), checked enough to show."""
    if not isinstance(data, dict):
        raise MiniLLMError(f"not an A/B result (minillm.ab/1): a JSON object was expected, got {type(data).__name__}")
    try:
        config = ABConfig(**data["config"])
        records = [_checked_record(ABRecord(**r)) for r in data["records"]]
        if not records:
            raise ValueError("no records")
        return ABResult(str(data["suite"]), str(data.get("source", "")), config, records, float(data["seconds"]),
                        str(data.get("created", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise MiniLLMError(f"not an A/B result (minillm.ab/1): {exc}") from None


_NUMBERS = ("prefix", "agreement", "kl", "kl_max", "rougeL", "chrf")


def _checked_record(r: ABRecord) -> ABRecord:
    """A record read from a file, with every field of the type the summaries compute with (else ValueError)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    ok = (all(isinstance(getattr(r, f), str) for f in ("id", "tag", "prompt", "original", "pruned"))
          and isinstance(r.references, list) and all(isinstance(x, str) for x in r.references)
          and all(isinstance(getattr(r, f), int) and not isinstance(getattr(r, f), bool)
                  for f in ("original_tokens", "pruned_tokens"))
          and isinstance(r.exact_match, bool) and all(number(getattr(r, f)) for f in _NUMBERS)
          and (r.first_divergence is None or (isinstance(r.first_divergence, int)
                                              and not isinstance(r.first_divergence, bool)))
          and isinstance(r.ref_match, dict) and isinstance(r.ref_rougeL, dict)
          and (not r.references or (all(isinstance(r.ref_match.get(w), bool) for w in ("original", "pruned"))
                                    and all(number(r.ref_rougeL.get(w)) for w in ("original", "pruned")))))
    if not ok:
        raise ValueError(f"record {r.id!r} has a field of the wrong type")
    return r

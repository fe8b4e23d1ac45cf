"""Calibration batches: seeded token windows from a named text dataset or a user's file.

`build_calibration` follows the Wanda/SparseGPT/LLM-Pruner recipe and returns a `[n_samples, seq_len]` LongTensor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minillm_core.data import dataset_names, read_jsonl_texts, source_rows
from minillm_core.errors import DataError
from minillm_core.options import option
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)

FILE_SOURCE = "file"
SELF_SOURCE = "self"  # the model writes its own calibration text: no data set, no internet
FILE_SUFFIXES = (".txt", ".jsonl")
STREAM_JOIN = "\n\n"  # the paper-protocol join (see data.perplexity_text), also used for paragraphs of a .txt
_TOKENIZE_CHUNK = 32  # documents per tokenizer call while searching for long-enough documents
#: The joined stream is tokenized whole up to this many characters (exactly the paper protocol); beyond, in pieces of
#: this size, and only until `STREAM_BUDGET` x the needed tokens are in hand: tokenizing a 20 MB file of short lines
#: in one call once took 5.8 GB (issue 14).
STREAM_PIECE_CHARS = 1_000_000
STREAM_BUDGET = 16


def calibration_sources() -> list[str]:
    """Every value `CalibrationConfig.source` accepts."""
    return [*dataset_names(), FILE_SOURCE, SELF_SOURCE]


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class CalibrationConfig:
    """What to calibrate on: a registered dataset name, or `"file"` with `path` to a `.txt` or `.jsonl` file."""

    source: str = option("c4", "Calibration text for scorers that need data: c4 (sample), wikitext2, ptb, alpaca, or "
                         "file (with --calib-file). Paper setups: Wanda 128 x 2048 tokens of C4; FLAP 1024 x 128 of "
                         "WikiText-2; LLM-Pruner 10 Bookcorpus samples.", choices=lambda: calibration_sources(),
                         cli="calib", label="calibration source")
    n_samples: int = option(32, "Calibration sequences; the default keeps forward-only scoring of the bundled model "
                            "under a minute on a CPU.", min=1, max=4096, label="sequences")
    seq_len: int = option(128, "Tokens per calibration sequence.", cli="calib-seq-len", min=8, max=8192,
                          label="tokens per sequence")
    seed: int = option(0, "Seed for calibration sampling (and for scorers with randomness).")
    path: str | None = option(None, "Your own .txt or .jsonl ('text' field) file.", cli="calib-file")

    @classmethod
    def from_flags(cls, base: CalibrationConfig, **values: Any) -> CalibrationConfig:
        """Command-line values over `base`: `--calib-file` alone implies source `file`."""
        if values.get("path") and values.get("source", base.source) == base.source:
            values["source"] = FILE_SOURCE
        return dataclasses.replace(base, **values)

    def __post_init__(self) -> None:
        allowed = calibration_sources()
        if self.source not in allowed:
            raise DataError(f"unknown calibration source {self.source!r}; allowed: {', '.join(allowed)}")
        _check_positive_int("n_samples", self.n_samples)
        _check_positive_int("seq_len", self.seq_len)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"seed must be an integer, got {self.seed!r}")
        if self.source == FILE_SOURCE:
            if not self.path:
                raise DataError(f"calibration source 'file' needs path= a {' or '.join(FILE_SUFFIXES)} file")
            if Path(self.path).suffix.lower() not in FILE_SUFFIXES:
                raise DataError(f"calibration file {self.path} must end in one of: {', '.join(FILE_SUFFIXES)}")
        elif self.path is not None:
            raise DataError(f"path is only used with source='file', not with source={self.source!r}")


def read_calibration_file(path: str | os.PathLike) -> list[str]:
    """A user's documents: `.jsonl` -> each line's `text`; `.txt` -> paragraphs split on blank lines.

    A `.txt` without any blank line is read one document per line. Blank documents are dropped.
    """
    path = user_path(path)
    if not path.is_file():
        raise DataError(f"calibration file {path} does not exist")
    try:
        if path.suffix.lower() == ".jsonl":
            docs = read_jsonl_texts(path)
        else:
            text = path.read_text(encoding="utf-8")
            blank_line = re.compile(r"\n\s*\n")
            docs = blank_line.split(text) if blank_line.search(text) else text.splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"calibration file {path} is not UTF-8 text: {exc}") from exc
    docs = [doc.strip() for doc in docs if doc.strip()]
    if not docs:
        raise DataError(f"calibration file {path} is empty (no text to calibrate on)")
    return docs


def _encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # Default encoding (special tokens included), as Wanda/LLM-Pruner tokenize each document; verbose=False
    # silences the "longer than the model's maximum length" warning, since we only keep seq_len-token windows.
    return [list(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]


def _windows_from_documents(tokenizer: Any, docs: Sequence[str], config: CalibrationConfig) -> list[list[int]] | None:
    """One random window from each of `n_samples` distinct documents of >= seq_len tokens, or None if too few.

    LLM-Pruner's `get_examples` (and Wanda's `get_c4`) draw random documents until one is long enough; we shuffle
    the document order once and tokenize in that order, so only as many documents as needed are tokenized.
    """
    rng = random.Random(config.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    windows: list[list[int]] = []
    budget, seen = config.n_samples * config.seq_len * STREAM_BUDGET, 0
    for start in range(0, len(order), _TOKENIZE_CHUNK):
        if seen >= budget:  # long documents are too rare here: the joined stream will do
            break
        texts = [docs[i] for i in order[start : start + _TOKENIZE_CHUNK]]
        for ids in _encode_many(tokenizer, [t for t in texts if t.strip()]):
            seen += len(ids)
            if len(ids) < config.seq_len:
                continue
            begin = rng.randint(0, len(ids) - config.seq_len)
            windows.append(ids[begin : begin + config.seq_len])
            if len(windows) == config.n_samples:
                logger.info("calibration: %d windows from documents (%d tokenized)", len(windows), start + len(texts))
                return windows
    logger.info(
        "calibration: only %d of the documents read (of %d) reach %d tokens; sampling from the joined text instead",
        len(windows),
        len(docs),
        config.seq_len,
    )
    return None


def _windows_from_stream(tokenizer: Any, docs: Sequence[str], config: CalibrationConfig, label: str) -> list[list[int]]:
    """`n_samples` distinct, non-overlapping seq_len windows at seeded positions of the joined token stream.

    For short documents (PTB sentences, lines of a user file), as SparseGPT/Wanda calibrate on joined text. The
    stream is cut into `N // seq_len` chunks after a random offset and `n_samples` of them are drawn.
    """
    ids = _stream_ids(tokenizer, docs, config.n_samples * config.seq_len * STREAM_BUDGET)
    n_chunks = len(ids) // config.seq_len
    if n_chunks < config.n_samples:
        need = config.n_samples * config.seq_len
        raise DataError(
            f"{label} has {len(ids)} tokens; {config.n_samples} samples x {config.seq_len} tokens need {need}. "
            "Use more text, or lower n_samples or seq_len."
        )
    rng = random.Random(config.seed)
    offset = rng.randint(0, len(ids) - n_chunks * config.seq_len)
    picks = rng.sample(range(n_chunks), config.n_samples)
    return [ids[offset + k * config.seq_len : offset + (k + 1) * config.seq_len] for k in picks]


def _stream_ids(tokenizer: Any, docs: Sequence[str], budget: int) -> list[int]:
    """Token ids of `STREAM_JOIN.join(docs)`: in one call when the text is small; else piece by piece (documents
    kept whole, about `STREAM_PIECE_CHARS` per call) until `budget` tokens, so memory stays bounded."""
    if sum(len(d) for d in docs) <= STREAM_PIECE_CHARS:
        return _encode_many(tokenizer, [STREAM_JOIN.join(docs)])[0]
    ids: list[int] = []
    piece: list[str] = []
    size = 0
    for i, doc in enumerate(docs):
        piece.append(doc)
        size += len(doc) + len(STREAM_JOIN)
        last = i == len(docs) - 1
        if size >= STREAM_PIECE_CHARS or last:
            encoded = _encode_many(tokenizer, [STREAM_JOIN.join(piece) + ("" if last else STREAM_JOIN)])[0]
            ids += encoded if not ids else encoded[_special_prefix(tokenizer):]
            piece, size = [], 0
            if len(ids) >= budget:
                logger.info("calibration: stopped reading after %d of %d documents (%d tokens)", i + 1, len(docs),
                            len(ids))
                break
    return ids


def _special_prefix(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts before a text (a BOS), dropped from every piece but the first."""
    return len(_encode_many(tokenizer, [""])[0])


def build_calibration(
    tokenizer: Any,
    config: CalibrationConfig,
    data_dir: str | os.PathLike | None = None,
    max_length: int | None = None,
    model: Any | None = None,
) -> torch.LongTensor:
    """Calibration token ids, `[n_samples, seq_len]` int64, deterministic for `config.seed`.

    Documents of at least `seq_len` tokens give one random window each (distinct documents, LLM-Pruner style);
    when fewer than `n_samples` documents are that long, windows come from the joined text instead.
    `max_length` is the model's context length; a longer `seq_len` is an error.
    """
    if max_length is not None and config.seq_len > max_length:
        raise DataError(f"seq_len {config.seq_len} exceeds the model's maximum context of {max_length} tokens")
    if config.source == SELF_SOURCE:
        if model is None:
            raise DataError("calibration source 'self' needs the model (it writes its own calibration text)")
        return self_generated(model, tokenizer, config)
    if config.source == FILE_SOURCE:
        docs: Sequence[str] = read_calibration_file(config.path)
        label = f"calibration file {config.path}"
    else:
        docs = source_rows(config.source, data_dir=data_dir)
        label = f"calibration source {config.source!r}"
    windows = _windows_from_documents(tokenizer, docs, config)
    if windows is None:
        windows = _windows_from_stream(tokenizer, docs, config, label)
    return torch.tensor(windows, dtype=torch.long)


@torch.no_grad()
def self_generated(model: Any, tokenizer: Any, config: CalibrationConfig, batch_size: int = 16) -> torch.LongTensor:
    """`[n_samples, seq_len]` tokens the model samples itself from its BOS token (temperature 1, seeded).

    Data-free calibration (as in LLM-Pruner's and "data-free" pruning work): the activations follow the model's own
    distribution, with no data set and no internet. The caller's RNG state is untouched.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise DataError("calibration source 'self' needs a tokenizer with a BOS (or EOS) token to start from")
    device = next(model.parameters()).device
    rows = []
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for start in range(0, config.n_samples, batch_size):
            n = min(batch_size, config.n_samples - start)
            ids = torch.full((n, 1), bos, dtype=torch.long, device=device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=config.seq_len - 1, min_new_tokens=config.seq_len - 1,
                                 pad_token_id=bos, eos_token_id=None)
            rows.append(out[:, : config.seq_len].cpu())
    return torch.cat(rows)

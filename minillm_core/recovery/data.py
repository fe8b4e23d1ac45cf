"""Training data for LoRA recovery: Alpaca records (JSON/JSONL, the LLM-Pruner template), plain text, and tokens.

`load_training_data` reads a built-in dataset or a user's file with line-numbered errors; `encode_examples` turns it
into (input ids, labels) with the prompt masked out of the loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from minillm_core import data as textdata
from minillm_core.errors import DataError
from minillm_core.recovery.config import RecoveryConfig
from minillm_core.settings import user_path

IGNORE = -100  # label of tokens that do not count in the loss (prompt tokens, padding)
FILE_KINDS = {".json": "Alpaca records (JSON array)", ".jsonl": "Alpaca records (one per line)", ".txt": "plain text"}
RESPONSE_MARKER = textdata.ALPACA_RESPONSE_MARKER


def load_training_data(source: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]] | str:
    """(prompt, response) pairs for instruction data, or one string for plain-text continuation data."""
    suffix = Path(source).suffix.lower()
    if suffix in FILE_KINDS or user_path(source).is_file():
        return _read_file(user_path(source))
    if source not in textdata.TEXT_DATASETS:
        raise DataError(f"unknown training data {source!r}; allowed: {', '.join(textdata.dataset_names())}, or a "
                        f"path to a {', '.join(f'{k} ({v})' for k, v in FILE_KINDS.items())} file")
    text_source = textdata.TEXT_DATASETS.get(source)
    split = "train" if "train" in text_source.splits else None  # never train on an evaluation split
    rows = textdata.load_rows(source, split=split, data_dir=data_dir)
    if source == "alpaca":
        return [textdata.split_alpaca(row) for row in rows]
    return "\n\n".join(rows)


def _read_file(path: Path) -> list[tuple[str, str]] | str:
    suffix = path.suffix.lower()
    if suffix not in FILE_KINDS:
        raise DataError(f"{path}: unsupported training file type {suffix or '(none)'!r}; allowed: "
                        + ", ".join(f"{k} ({v})" for k, v in FILE_KINDS.items()))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"training data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read training data {path}: {exc}") from exc
    if not text.strip():
        raise DataError(f"training data file {path} is empty")
    if suffix == ".txt":
        return text
    records = _jsonl_records(path, text) if suffix == ".jsonl" else _json_array_records(path, text)
    if not records:
        raise DataError(f"training data file {path} holds no records")
    return [_alpaca_pair(path, line, record) for line, record in records]


def _jsonl_records(path: Path, text: str) -> list[tuple[int, Any]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not valid JSON: {exc.msg}") from exc
    return out


def _json_array_records(path: Path, text: str) -> list[tuple[int, Any]]:
    """The elements of a top-level JSON array, each with the line it starts on (for error messages)."""
    decoder, out = json.JSONDecoder(), []
    i, line = _skip_ws(text, 0), 1
    if i == len(text) or text[i] != "[":
        raise DataError(f"{path} must be a JSON array of Alpaca records (use .jsonl for one record per line)")
    i = _skip_ws(text, i + 1)
    last = 0
    while i < len(text) and text[i] != "]":
        line += text.count("\n", last, i)
        last = i
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {exc.lineno} is not valid JSON: {exc.msg}") from exc
        out.append((line, record))
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif i == len(text) or text[i] != "]":
            where = line + text.count("\n", last, i)
            raise DataError(f"{path} line {where} is not valid JSON: expected ',' or ']' after a record")
    return out


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _alpaca_pair(path: Path, line: int, record: Any) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise DataError(f"{path} line {line}: expected an object with instruction, input, output; got "
                        f"{type(record).__name__}")
    for key in ("instruction", "output"):
        if key not in record:
            raise DataError(f"{path} line {line}: record has no {key!r} field (found: {', '.join(record) or 'none'}); "
                            f"Alpaca records need instruction, output and optionally input")
    for key in ("instruction", "input", "output"):
        if key in record and not isinstance(record[key], str):
            raise DataError(f"{path} line {line}: {key!r} must be a string, got {type(record[key]).__name__}")
    prompt = textdata.render_alpaca({"instruction": record["instruction"], "input": record.get("input", "")})
    return prompt, record["output"]


def encode_examples(data: list[tuple[str, str]] | str, tokenizer: Any, config: RecoveryConfig
                    ) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example (`IGNORE` where no loss is taken), seeded subset of `n_samples`.

    Instruction pairs follow LLM-Pruner's `generate_and_tokenize_prompt`: prompt + response truncated to
    `max_length`, EOS appended when it fits, prompt tokens masked unless `train_on_inputs`. Plain text is tokenized
    once and cut into `max_length` blocks, every token trained on.
    """
    gen = torch.Generator().manual_seed(config.seed)
    if isinstance(data, str):
        ids = tokenizer(data, verbose=False).input_ids
        blocks = [ids[i:i + config.max_length] for i in range(0, len(ids), config.max_length)]
        blocks = [b for b in blocks if len(b) >= 2]
        order = torch.randperm(len(blocks), generator=gen).tolist()[: config.n_samples]
        examples = [(blocks[i], list(blocks[i])) for i in sorted(order)]
    else:
        order = torch.randperm(len(data), generator=gen).tolist()[: config.n_samples]
        examples = [_encode_pair(tokenizer, *data[i], config) for i in order]
        examples = [e for e in examples if any(label != IGNORE for label in e[1][1:])]
    if not examples:
        raise DataError(f"no training examples left from {config.data!r} (every prompt fills max_length="
                        f"{config.max_length}, or the text is shorter than two tokens)")
    return examples


def self_examples(teacher: Any, tokenizer: Any, config: RecoveryConfig) -> list[tuple[list[int], list[int]]]:
    """Data-free training text: `n_samples` rows of `max_length` tokens the original model samples from its BOS
    token (`calibration.self_generated`, seeded by `config.seed`), every token trained on."""
    from minillm_core.calibration import CalibrationConfig, self_generated

    if config.n_samples is None:
        raise DataError("training data 'self' is generated: set how many records (n_samples), e.g. 200")
    rows = self_generated(teacher, tokenizer, CalibrationConfig(source="self", n_samples=config.n_samples,
                                                                seq_len=config.max_length, seed=config.seed))
    return [(row.tolist(), row.tolist()) for row in rows]


def _encode_pair(tokenizer: Any, prompt: str, response: str, config: RecoveryConfig) -> tuple[list[int], list[int]]:
    ids = tokenizer(prompt + response, truncation=True, max_length=config.max_length).input_ids
    eos = tokenizer.eos_token_id
    if eos is not None and len(ids) < config.max_length and (not ids or ids[-1] != eos):
        ids.append(eos)
    labels = list(ids)
    if not config.train_on_inputs:
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=config.max_length).input_ids)
        labels[:n_prompt] = [IGNORE] * min(n_prompt, len(labels))
    return ids, labels


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device
             ) -> dict[str, torch.Tensor]:
    """Right-padded `[b, longest]` input_ids, attention_mask and labels (`IGNORE` on padding)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def fingerprint(examples: Sequence[tuple[list[int], list[int]]]) -> str:
    h = hashlib.sha256()
    for ids, labels in examples:
        h.update(json.dumps([ids, labels]).encode())
    return h.hexdigest()[:16]

"""Prompt suites for A/B testing: the bundled ones, a user's JSONL/CSV/TXT file, or instructions from a data set.

A prompt is one user message or a whole conversation, with optional reference answers and a tag; files are bounded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from minillm_core.errors import DataError
from minillm_core.settings import user_path

#: The suites shipped with the package (minillm_core/suites/NAME.jsonl), with what each one exercises.
BUNDLED = {
    "facts": "20 short factual questions, each with its reference answer(s)",
    "instructions": "16 everyday instructions: write, explain, summarize, translate, classify, extract",
    "code": "12 programming requests and questions (Python, SQL, shell, JavaScript)",
    "chat": "10 three-turn conversations for chat models: memory, small reasoning, advice",
}
DATASET_SUITES = {"alpaca": "instructions of the Alpaca data set with their reference outputs (first N)"}
FORMATS = (".jsonl", ".csv", ".txt")
ROLES = ("system", "user", "assistant")
MAX_SUITE_BYTES = 4 * 2**20  # a suite is prompts a person wrote or picked; anything bigger is a mistake
MAX_PROMPTS = 2000
MAX_PROMPT_CHARS = 16_000
MAX_TURNS = 64
DATASET_DEFAULT_LIMIT = 32  # prompts taken from a data set when no limit is given


@dataclass(frozen=True)
class Prompt:
    """One test case: the conversation so far (ends with a user turn), acceptable answers, a tag for grouping."""

    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content) turns; a plain prompt is a single user turn
    references: tuple[str, ...] = ()
    tag: str = ""

    @property
    def text(self) -> str:
        """The prompt as a person reads it: the user message, or the turns of a conversation."""
        if len(self.messages) == 1:
            return self.messages[0][1]
        return "\n".join(f"{role}: {content}" for role, content in self.messages)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": [{"role": r, "content": c} for r, c in self.messages],
                "reference": list(self.references), "tag": self.tag}


@dataclass(frozen=True)
class PromptSuite:
    name: str
    prompts: tuple[Prompt, ...]
    source: str  # "bundled", a file path or "dataset:<name>"

    @property
    def has_references(self) -> bool:
        return any(p.references for p in self.prompts)


def suite_names() -> list[str]:
    """The names `load_suite` accepts besides a file path."""
    return [*BUNDLED, *DATASET_SUITES]


def describe_suites() -> dict[str, str]:
    return {**BUNDLED, **DATASET_SUITES}


def load_suite(spec: str | os.PathLike, limit: int | None = None, data_dir: str | os.PathLike | None = None
               ) -> PromptSuite:
    """A bundled suite by name, `alpaca` (from the data mirror or the Hub), or a .jsonl/.csv/.txt file.

    `limit` keeps the first N prompts. Errors name the file, the line and the allowed values.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"prompt limit must be None (all) or an integer >= 1, got {limit!r}")
    name = str(spec)
    if name in BUNDLED:
        text = resources.files("minillm_core").joinpath("suites", f"{name}.jsonl").read_text(encoding="utf-8")
        suite = PromptSuite(name, _parse(text, ".jsonl", name), "bundled")
    elif name in DATASET_SUITES:
        suite = _alpaca(limit or DATASET_DEFAULT_LIMIT, data_dir)
    else:
        suite = _from_file(user_path(name))
    return suite if limit is None else PromptSuite(suite.name, suite.prompts[:limit], suite.source)


def _from_file(path: Path) -> PromptSuite:
    if path.suffix.lower() not in FORMATS:
        known = ", ".join(suite_names())
        raise DataError(f"unknown prompt suite {str(path)!r}: give a bundled suite ({known}) or a file ending in "
                        f"{', '.join(FORMATS)}")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SUITE_BYTES + 1)
    except OSError as exc:
        raise DataError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SUITE_BYTES:
        raise DataError(f"prompt file {path} is over {MAX_SUITE_BYTES // 2**20} MB; split it into suites")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"prompt file {path} is not UTF-8 text: {exc}") from None
    return PromptSuite(path.stem, _parse(text, path.suffix.lower(), str(path)), str(path))


def _parse(text: str, suffix: str, where: str) -> tuple[Prompt, ...]:
    if suffix == ".txt":
        records = [(n, {"prompt": line.strip()}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".csv":
        records = _csv_records(text, where)
    else:
        records = _jsonl_records(text, where)
    if not records:
        raise DataError(f"{where} has no prompts")
    if len(records) > MAX_PROMPTS:
        raise DataError(f"{where} has {len(records)} prompts; at most {MAX_PROMPTS} per suite")
    prompts = tuple(_prompt(record, line, where) for line, record in records)
    ids = [p.id for p in prompts]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise DataError(f"{where}: prompt id {dup!r} is used twice; ids must be unique")
    return prompts


def _jsonl_records(text: str, where: str) -> list[tuple[int, Any]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{where} line {number} is not a JSON object: {getattr(exc, 'msg', exc)}") from None
    return out


def _csv_records(text: str, where: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header or "prompt" not in header:
            raise DataError(f"{where}: a CSV suite needs a 'prompt' column (optional: reference, tag, id); found "
                            f"{', '.join(header or []) or 'no header'}")
        # extra cells beyond the header land under the key None (a list): ignored, as are empty cells
        return [(reader.line_num, {k: v for k, v in row.items() if isinstance(k, str) and k and isinstance(v, str)
                                   and v}) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{where} line {reader.line_num}: not valid CSV ({exc})") from None


def _prompt(record: Any, line: int, where: str) -> Prompt:
    at = f"{where} line {line}"
    if not isinstance(record, dict):
        raise DataError(f"{at}: expected an object with 'prompt' or 'messages', got {type(record).__name__}")
    extra = set(record) - {"id", "prompt", "messages", "reference", "tag"}
    if extra:
        raise DataError(f"{at}: unknown field(s) {sorted(extra)}; allowed: id, prompt, messages, reference, tag")
    if ("prompt" in record) == ("messages" in record):
        raise DataError(f"{at}: give exactly one of 'prompt' (a string) or 'messages' (a list of role/content turns)")
    messages = ((("user", _string(record["prompt"], at, "prompt")),) if "prompt" in record
                else _messages(record["messages"], at))
    references = record.get("reference", ())
    references = (references,) if isinstance(references, str) else references
    if not isinstance(references, (list, tuple)) or not all(isinstance(r, str) and r.strip() for r in references):
        raise DataError(f"{at}: 'reference' must be a non-empty string or a list of them")
    return Prompt(str(record.get("id", f"{Path(where).stem}-{line}")), messages, tuple(references),
                  str(record.get("tag", "")))


def _string(value: Any, at: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{at}: {field!r} must be a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise DataError(f"{at}: {field!r} is {len(value):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return value


def _messages(turns: Any, at: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(turns, list) or not turns or len(turns) > MAX_TURNS:
        raise DataError(f"{at}: 'messages' must be a list of 1..{MAX_TURNS} turns")
    out = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or set(turn) != {"role", "content"}:
            raise DataError(f"{at}: turn {i} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}")
        out.append((turn["role"], _string(turn["content"], at, f"turn {i} content")))
    if out[-1][0] != "user":
        raise DataError(f"{at}: the last turn must be the user's (the models answer it)")
    return tuple(out)


def _alpaca(limit: int, data_dir: str | os.PathLike | None) -> PromptSuite:
    """The first `limit` Alpaca instructions (with their input, in the Alpaca prompt) and outputs as references."""
    from minillm_core.data import load_rows, split_alpaca

    pairs = [split_alpaca(row) for row in load_rows("alpaca", split="train", data_dir=data_dir)[:limit]]
    prompts = tuple(Prompt(f"alpaca-{i:04d}", (("user", prompt.strip()),), (response.strip(),) if response.strip()
                           else (), "alpaca") for i, (prompt, response) in enumerate(pairs, 1))
    return PromptSuite("alpaca", prompts, "dataset:alpaca")

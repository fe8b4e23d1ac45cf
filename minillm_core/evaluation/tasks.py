"""The seven zero-shot tasks, built exactly as lm-evaluation-harness (0.4.x) builds them.

Each task reads its docs from the data mirror (normalised to the Hub rows' fields) or the Hub and turns a doc into
log-likelihood requests: one (context, continuation) per choice, scored by `acc` and, where lm-eval has it, `acc_norm`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minillm_core.errors import DataError
from minillm_core.registry import Registry
from minillm_core.settings import DATA_DIR_ENV
from minillm_core.settings import data_dir as resolve_data_dir

logger = logging.getLogger(__name__)

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter for multiple_choice tasks


@dataclass(frozen=True)
class Item:
    """One scored question: a (context, continuation) request per choice, and the gold choice index.

    `choices` are the answer strings whose character length lm-eval divides by for `acc_norm`.
    """

    doc_id: int
    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    """A zero-shot task: where its docs live and how a doc becomes an `Item`."""

    name: str
    title: str
    local: str  # path under the data directory
    hub: tuple[str, str | None, str]  # (path, config, split) on the Hugging Face Hub
    read_local: Callable[[Path], list[dict[str, Any]]]
    to_item: Callable[[int, dict[str, Any]], Item]
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    split_note: str = ""


TASKS: Registry[TaskSpec] = Registry("task")


def _register(spec: TaskSpec) -> TaskSpec:
    TASKS.register(spec.name)(spec)
    return spec


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
    return rows


def _labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _with_labels(rows: list[dict[str, Any]], labels: list[str], path: Path, key: str) -> list[dict[str, Any]]:
    if len(rows) != len(labels):
        raise DataError(f"{path} has {len(labels)} labels for {len(rows)} rows")
    return [{**r, key: lab} for r, lab in zip(rows, labels, strict=True)]


def _mc_item(doc_id: int, context: str, choices: list[str], gold: int) -> Item:
    requests = tuple((context, TARGET_DELIMITER + c) for c in choices)
    return Item(doc_id, requests, gold, tuple(choices))


# --- BoolQ (SuperGLUE; lm-eval super_glue/boolq, version 2.0) -----------------------------------------------------
def _boolq_local(path: Path) -> list[dict[str, Any]]:
    # The mirror stores label as "true"/"false"; the Hub's super_glue rows use 1/0.
    return [{**r, "label": int(str(r["label"]).lower() in ("true", "1"))} for r in _jsonl(path)]


def _boolq_item(i: int, d: dict[str, Any]) -> Item:
    return _mc_item(i, f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(d["label"]))


_register(TaskSpec("boolq", "BoolQ", "boolq/val.jsonl", ("aps/super_glue", "boolq", "validation"),
                   _boolq_local, _boolq_item, metrics=("acc",)))


# --- PIQA -------------------------------------------------------------------------------------------------------
def _piqa_local(path: Path) -> list[dict[str, Any]]:
    labels_path = path.with_name("valid-labels.lst")
    return [{**r, "label": int(r["label"])} for r in _with_labels(_jsonl(path), _labels(labels_path), labels_path,
                                                                 "label")]


def _piqa_item(i: int, d: dict[str, Any]) -> Item:
    return _mc_item(i, f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))


_register(TaskSpec("piqa", "PIQA", "piqa/valid.jsonl", ("baber/piqa", None, "validation"), _piqa_local, _piqa_item))


# --- HellaSwag --------------------------------------------------------------------------------------------------
def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: strip WikiHow bracket artifacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_item(i: int, d: dict[str, Any]) -> Item:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_clean(d["activity_label"] + ": " + ctx)
    return _mc_item(i, query, [_hellaswag_clean(e) for e in d["endings"]], int(d["label"]))


_register(TaskSpec("hellaswag", "HellaSwag", "hellaswag/hellaswag_val_subset1000.jsonl",
                   ("Rowan/hellaswag", None, "validation"), _jsonl, _hellaswag_item,
                   split_note="the offline mirror holds a random 1000-item subset of the 10,042 validation items"))


# --- WinoGrande (partial evaluation: the context varies, the continuation is fixed) ---------------------------------
def _winogrande_local(path: Path) -> list[dict[str, Any]]:
    labels_path = path.with_name("dev-labels.lst")
    return _with_labels(_jsonl(path), _labels(labels_path), labels_path, "answer")


def _winogrande_item(i: int, d: dict[str, Any]) -> Item:
    sentence = d["sentence"]
    blank = sentence.index("_")
    target = sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + opt for opt in (d["option1"], d["option2"])]
    requests = tuple((c, TARGET_DELIMITER + target) for c in contexts)
    return Item(i, requests, {"1": 0, "2": 1}[str(d["answer"])], (target, target))


_register(TaskSpec("winogrande", "WinoGrande", "winogrande/dev.jsonl", ("allenai/winogrande", "winogrande_xl",
                   "validation"), _winogrande_local, _winogrande_item, metrics=("acc",)))


# --- ARC and OpenBookQA (original release format locally, Hub rows on the Hub) -------------------------------------
def _arc_local(path: Path) -> list[dict[str, Any]]:
    rows = []
    for r in _jsonl(path):
        q = r["question"]
        rows.append({"id": r["id"], "question": q["stem"], "answerKey": r["answerKey"],
                     "choices": {"text": [c["text"] for c in q["choices"]],
                                 "label": [c["label"] for c in q["choices"]]}})
    return rows


def _arc_item(i: int, d: dict[str, Any]) -> Item:
    choices = d["choices"]
    return _mc_item(i, f"Question: {d['question']}\nAnswer:", list(choices["text"]),
                    list(choices["label"]).index(d["answerKey"]))


def _obqa_local(path: Path) -> list[dict[str, Any]]:
    return [{**r, "question_stem": r["question"]} for r in _arc_local(path)]


def _obqa_item(i: int, d: dict[str, Any]) -> Item:
    choices = d["choices"]
    return _mc_item(i, d["question_stem"], list(choices["text"]), list(choices["label"]).index(d["answerKey"].lstrip()))


_register(TaskSpec("arc_easy", "ARC-Easy", "arc/ARC-Easy-Test.jsonl", ("allenai/ai2_arc", "ARC-Easy", "test"),
                   _arc_local, _arc_item))
_register(TaskSpec("arc_challenge", "ARC-Challenge", "arc/ARC-Challenge-Test.jsonl",
                   ("allenai/ai2_arc", "ARC-Challenge", "test"), _arc_local, _arc_item))
_register(TaskSpec("openbookqa", "OpenBookQA", "openbookqa/test.jsonl", ("allenai/openbookqa", "main", "test"),
                   _obqa_local, _obqa_item))

ALL_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def load_docs(name: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """A task's docs in the Hub rows' layout, from the data directory when set, else from the Hub."""
    spec = TASKS.get(name)
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / spec.local
        if not path.is_file():
            raise DataError(f"task {name} needs {path}, which does not exist (data directory from ${DATA_DIR_ENV} "
                            f"or --data-dir; unset it to load {spec.hub[0]} from the Hub)")
        try:
            return spec.read_local(path)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read task {name} from {path}: {exc!r}") from exc
    import datasets

    path, config, split = spec.hub
    try:
        return list(datasets.load_dataset(path, config, split=split))
    except Exception as exc:
        raise DataError(f"could not load {path} ({split}) for task {name} from the Hugging Face Hub ({exc}); "
                        f"point {DATA_DIR_ENV} at a local mirror") from exc


def build_items(name: str, docs: list[dict[str, Any]]) -> list[Item]:
    spec = TASKS.get(name)
    try:
        return [spec.to_item(i, d) for i, d in enumerate(docs)]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"task {name}: a doc lacks an expected field or label ({exc!r})") from exc

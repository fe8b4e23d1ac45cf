"""Text datasets by name: evaluation and calibration rows from a local mirror or the Hugging Face Hub.

Each `TextSource` in `TEXT_DATASETS` reads its rows from `MINILLM_DATA_DIR` when set, else from the Hub, identically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minillm_core.errors import DataError
from minillm_core.registry import Registry
from minillm_core.settings import DATA_DIR_ENV
from minillm_core.settings import data_dir as resolve_data_dir

logger = logging.getLogger(__name__)

# The prompt template of Alpaca-LoRA, which LLM-Pruner's `Prompter` uses for its recovery tuning
# (LLMPruner/utils/prompter.py); the text is the Stanford Alpaca template, verbatim.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class HubDataset:
    """Where a source lives on the Hub: `datasets.load_dataset(path, config, split=..., data_files=...)`."""

    path: str
    config: str | None = None
    data_files: Mapping[str, str] | None = None  # split -> file inside the repository, when one shard is enough


@dataclass(frozen=True)
class TextSource:
    """A named text dataset: its local files per split, its Hub location, and how both become rows."""

    name: str
    summary: str
    files: Mapping[str, str]  # split -> path relative to the data directory
    default_split: str
    hub: HubDataset
    read_file: Callable[[Path], Sequence[str]]
    hub_rows: Callable[[Any], Sequence[str]]  # a loaded `datasets.Dataset` -> rows
    perplexity_join: str | None = None  # None: not a perplexity benchmark
    notes: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def check_split(self, split: str | None) -> str:
        split = self.default_split if split is None else split
        if split not in self.files:
            raise DataError(f"{self.name} has no split {split!r}; allowed: {', '.join(self.splits)}")
        return split


TEXT_DATASETS: Registry[TextSource] = Registry("text dataset")


def _register(source: TextSource) -> TextSource:
    return TEXT_DATASETS.register(source.name)(source)


# --- readers for the local mirror -------------------------------------------------------------------------------


def _read_wikitext(path: Path) -> list[str]:
    # The HF `wikitext` builder yields every line of the raw file as one row, verbatim, trailing "\n" included,
    # and turns whitespace-only lines into "" (datasets' wikitext.py `_generate_examples`; SOURCES.md). The
    # parquet files on the Hub were converted from that builder, so both sources give identical rows.
    with path.open(encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _read_ptb(path: Path) -> list[str]:
    # The HF `ptb_text_only` builder yields `line.strip()` for every line of Mikolov's file (field "sentence").
    with path.open(encoding="utf-8") as f:
        return [line.strip() for line in f]


def read_jsonl_texts(path: Path, field_name: str = "text") -> list[str]:
    """The `field_name` string of every non-blank line of a JSONL file; errors name the line number."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict) or field_name not in record:
                found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path} line {number} has no {field_name!r} field (found: {found or 'nothing'})")
            if not isinstance(record[field_name], str):
                raise DataError(f"{path} line {number}: {field_name!r} must be a string")
            rows.append(record[field_name])
    return rows


def render_alpaca(example: Mapping[str, str]) -> str:
    """One Alpaca record as training text: the LLM-Pruner/Alpaca-LoRA prompt followed by the output (no EOS)."""
    instruction, context, output = example["instruction"], example.get("input") or "", example.get("output") or ""
    if context:
        prompt = ALPACA_PROMPT_INPUT.format(instruction=instruction, input=context)
    else:
        prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    return prompt + output


#: Every Alpaca prompt ends with this line (ALPACA_PROMPT_*); the response follows it.
ALPACA_RESPONSE_MARKER = ALPACA_PROMPT_NO_INPUT.rsplit("\n\n", 1)[-1]


def split_alpaca(row: str) -> tuple[str, str]:
    """A rendered Alpaca row (`render_alpaca`) back into (prompt, response)."""
    cut = row.index(ALPACA_RESPONSE_MARKER) + len(ALPACA_RESPONSE_MARKER)
    return row[:cut], row[cut:]


def _read_alpaca(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
    return [render_alpaca(record) for record in records]


def _hub_alpaca(ds: Any) -> list[str]:
    return [
        render_alpaca({"instruction": i, "input": x, "output": o})
        for i, x, o in zip(ds["instruction"], ds["input"], ds["output"], strict=True)
    ]


# --- the registered sources -------------------------------------------------------------------------------------

_register(
    TextSource(
        name="wikitext2",
        summary="WikiText-2 (raw), one row per line of the raw file",
        files={
            "test": "wikitext2/wiki.test.raw",
            "validation": "wikitext2/wiki.valid.raw",
            "train": "wikitext2/wiki.train.raw",
        },
        default_split="test",
        hub=HubDataset("wikitext", "wikitext-2-raw-v1"),
        read_file=_read_wikitext,
        hub_rows=lambda ds: ds["text"],
        perplexity_join="\n\n",
    )
)
_register(
    TextSource(
        name="ptb",
        summary="Penn Treebank (Mikolov), one sentence per row; LLM-Pruner reports its validation split",
        files={"validation": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt", "train": "ptb/ptb.train.txt"},
        default_split="validation",
        hub=HubDataset("ptb_text_only", "penn_treebank"),
        read_file=_read_ptb,
        hub_rows=lambda ds: ds["sentence"],
        perplexity_join="\n\n",
    )
)
_register(
    TextSource(
        name="c4",
        summary="C4 English documents, for calibration only",
        files={"train": "c4/c4-sample.00000-of-00001.json"},
        default_split="train",
        # The shard Wanda, SparseGPT and LLM-Pruner calibrate on; the "en" config is the folder in the path.
        hub=HubDataset("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz"}),
        read_file=read_jsonl_texts,
        hub_rows=lambda ds: ds["text"],
        notes="The local mirror is a 1000-document sample of an unknown shard, not the Hub shard's first rows.",
    )
)
_register(
    TextSource(
        name="alpaca",
        summary="Alpaca-cleaned rendered with the Alpaca prompt template, for recovery tuning",
        files={"train": "alpaca/alpaca_data_cleaned_first5000.json"},
        default_split="train",
        hub=HubDataset("yahma/alpaca-cleaned"),
        read_file=_read_alpaca,
        hub_rows=_hub_alpaca,
        notes="The local mirror holds the first 5000 of the Hub's 51,760 rows.",
    )
)


# --- loading ----------------------------------------------------------------------------------------------------


def _local_rows(source: TextSource, split: str, root: Path) -> Sequence[str]:
    path = root / source.files[split]
    if not path.is_file():
        raise DataError(
            f"{source.name} ({split}) needs {path}, which does not exist. The data directory {root} comes from "
            f"the data_dir argument or ${DATA_DIR_ENV}; put the file there, or unset {DATA_DIR_ENV} to load "
            f"{source.hub.path!r} from the Hugging Face Hub."
        )
    logger.debug("reading %s (%s) from %s", source.name, split, path)
    try:
        return source.read_file(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc


def _hub_rows(source: TextSource, split: str) -> Sequence[str]:
    import datasets  # heavy; only needed on this path

    hub = source.hub
    extra = {"data_files": {split: hub.data_files[split]}} if hub.data_files else {}
    where = hub.path + (f"/{hub.config}" if hub.config else "")
    logger.info("loading %s (%s) from the Hugging Face Hub: %s", source.name, split, where)
    try:
        ds = datasets.load_dataset(hub.path, hub.config, split=split, **extra)
    except Exception as exc:  # offline, missing repository, network: all reach the user the same way
        raise DataError(
            f"could not load {where} ({split}) for {source.name} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). If the Hub cannot be reached, point {DATA_DIR_ENV} (or data_dir) "
            f"at a local mirror holding {source.files[split]}."
        ) from exc
    return source.hub_rows(ds)


def source_rows(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None) -> Sequence[str]:
    """Rows as a sequence that may be lazy (a Hub `Column`), for callers that only index a few of them."""
    source = TEXT_DATASETS.get(name)
    split = source.check_split(split)
    root = resolve_data_dir(data_dir)
    return _local_rows(source, split, root) if root is not None else _hub_rows(source, split)


def load_rows(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The rows of dataset `name` (`split` defaults to the dataset's own), from `data_dir`/env or else the Hub."""
    return list(source_rows(name, split, data_dir))


def perplexity_text(name: str, data_dir: str | os.PathLike | None = None, split: str | None = None) -> str:
    """The paper-protocol evaluation text: `"\\n\\n".join(rows)`.

    SparseGPT, Wanda, LLM-Pruner and FLAP tokenize `"\\n\\n".join(rows)` of WikiText-2 test; LLM-Pruner (and the
    tables that follow it) use the same join on PTB validation. SparseGPT's PTB join is `" "`, which we do not use.
    """
    source = TEXT_DATASETS.get(name)
    if source.perplexity_join is None:
        raise DataError(f"{name} is not a perplexity benchmark; allowed: {', '.join(perplexity_dataset_names())}")
    return source.perplexity_join.join(load_rows(name, split, data_dir))


def dataset_names() -> list[str]:
    """Every registered text dataset."""
    return TEXT_DATASETS.names()


def perplexity_dataset_names() -> list[str]:
    """The registered datasets that `perplexity_text` accepts."""
    return [name for name in TEXT_DATASETS.names() if TEXT_DATASETS.get(name).perplexity_join is not None]

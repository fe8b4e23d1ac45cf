"""Tests for minillm_core.data: named text datasets from the local mirror and (mocked) from the Hub.

No test downloads: the Hub path runs against a monkeypatched `datasets.load_dataset`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import datasets
import pytest

from minillm_core import data
from minillm_core.calibration import CalibrationConfig, build_calibration
from minillm_core.errors import DataError, RegistryError
from minillm_core.evaluation.tasks import ALL_TASKS, build_items, load_docs
from minillm_core.settings import DATA_DIR_ENV
from tests.helpers import char_tokenizer


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple, dict]]:
    """No data dir, and a fake `datasets.load_dataset` that records its calls and returns small in-memory rows."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    calls: list[tuple[tuple, dict]] = []
    tables = {
        "wikitext": {"text": ["", " = Title = \n", "", " Body text . \n"]},
        "ptb_text_only": {"sentence": ["a sentence", "another one"]},
        "allenai/c4": {"text": ["doc one", "doc two"]},
        "yahma/alpaca-cleaned": {"instruction": ["Say hi."], "input": [""], "output": ["Hi."]},
    }

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append(((path, name), kwargs))
        return datasets.Dataset.from_dict(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_names_are_registered():
    assert data.dataset_names() == ["alpaca", "c4", "ptb", "wikitext2"]
    assert data.perplexity_dataset_names() == ["ptb", "wikitext2"]


def test_unknown_name_lists_the_supported_ones():
    with pytest.raises(RegistryError, match=r"unknown text dataset 'wiki'.*alpaca, c4, ptb, wikitext2"):
        data.load_rows("wiki")


def test_unknown_split_lists_the_allowed_ones():
    with pytest.raises(DataError, match="ptb has no split 'dev'; allowed: validation, test, train"):
        data.load_rows("ptb", split="dev")


def test_wikitext2_rows_follow_the_hf_builder(data_dir):
    rows = data.load_rows("wikitext2")
    raw = (data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    assert len(rows) == raw.count("\n")
    # One row per raw line, kept verbatim with its "\n"; whitespace-only lines become "".
    assert rows[0] == "" and rows[1].startswith(" = ") and rows[1].endswith(" = \n")  # the first article's title
    assert all(row == "" or row.strip() for row in rows)
    assert all(row == "" or row.endswith("\n") for row in rows)
    assert [row for row in rows if row] == [line for line in re.findall(r".*\n", raw) if line.strip()]


def test_ptb_rows_are_stripped_lines(data_dir):
    rows = data.load_rows("ptb")  # validation is the default split (LLM-Pruner protocol)
    valid = (data_dir / "ptb" / "ptb.valid.txt").read_text(encoding="utf-8").splitlines()
    assert rows == [line.strip() for line in valid] and rows[0] != valid[0]  # the file's lines have edge spaces
    assert all(row == row.strip() for row in rows)
    test = data.load_rows("ptb", split="test")
    assert test != rows and len(test) == (data_dir / "ptb" / "ptb.test.txt").read_text().count("\n")


def test_c4_and_alpaca_rows(data_dir):
    c4 = data.load_rows("c4")
    lines = (data_dir / "c4" / "c4-sample.00000-of-00001.json").read_text(encoding="utf-8").splitlines()
    assert len(c4) == sum(1 for line in lines if line.strip()) and all(isinstance(doc, str) and doc for doc in c4)
    records = json.loads((data_dir / "alpaca" / "alpaca_data_cleaned_first5000.json").read_text(encoding="utf-8"))
    alpaca = data.load_rows("alpaca")
    assert len(alpaca) == len(records)
    plain = next(i for i, r in enumerate(records) if not r["input"])
    with_input = next(i for i, r in enumerate(records) if r["input"])
    assert alpaca[plain] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        f"request.\n\n### Instruction:\n{records[plain]['instruction']}\n\n### Response:\n{records[plain]['output']}"
    )
    assert f"### Input:\n{records[with_input]['input']}\n\n### Response:\n" in alpaca[with_input]


def test_the_real_mirror_holds_the_files_sources_md_describes(real_data_dir):
    """Sizes and first rows of the real files (SOURCES.md), which the fixture mirror does not imitate."""
    wikitext = data.load_rows("wikitext2")
    assert len(wikitext) == 4358 and wikitext[1] == " = Robert Boulter = \n"
    assert data.perplexity_text("wikitext2").startswith("\n\n = Robert Boulter = \n\n\n")
    ptb = data.load_rows("ptb")
    assert len(ptb) == 3370 and len(data.load_rows("ptb", split="test")) == 3761
    assert ptb[0] == "consumers may want to move their telephones a little closer to the tv set"
    assert len(data.load_rows("c4")) == 1000
    alpaca = data.load_rows("alpaca")
    assert len(alpaca) == 5000
    assert alpaca[0].startswith(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n1. Eat"
    )
    assert "### Input:\n4/16\n\n### Response:\n" in alpaca[6]


def test_the_fixture_mirror_loads_like_a_mirror(fixture_mirror, caplog):
    """What a fresh clone tests on: every data set and task loads from the fixture mirror, and the default
    calibration (32 x 128 tokens of C4) comes from whole documents, not from the joined-text fallback."""
    for name in data.dataset_names():
        assert data.load_rows(name, data_dir=fixture_mirror), name
    for task in ALL_TASKS:
        assert len(build_items(task, load_docs(task, fixture_mirror))) >= 10, task
    with caplog.at_level(logging.INFO, logger="minillm_core.calibration"):
        batch = build_calibration(char_tokenizer(), CalibrationConfig(), data_dir=fixture_mirror)
    assert batch.shape == (32, 128) and "32 windows from documents" in caplog.text


def _layout(root: Path) -> dict[str, list[str] | None]:
    """Every data file under `root` with the fields of its first JSON record (None for plain text)."""
    out: dict[str, list[str] | None] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SOURCES.md"):
        fields = None
        if path.suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            first = json.loads(text)[0] if text.lstrip().startswith("[") else json.loads(text.split("\n", 1)[0])
            fields = sorted(first)
        out[path.relative_to(root).as_posix()] = fields
    return out


def test_the_fixture_mirror_has_the_real_mirror_layout(fixture_mirror, real_data_dir):
    assert _layout(fixture_mirror) == _layout(real_data_dir)


def test_render_alpaca_templates():
    with_input = data.render_alpaca({"instruction": "Add.", "input": "1+1", "output": "2"})
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1+1\n\n### Response:\n2"
    )
    assert "### Input" not in data.render_alpaca({"instruction": "Add.", "input": "", "output": "2"})


def test_perplexity_text_is_the_paper_join(data_dir):
    rows = data.load_rows("wikitext2")
    text = data.perplexity_text("wikitext2")
    assert text == "\n\n".join(rows)
    assert text.startswith("\n\n" + rows[1] + "\n\n")  # rows[0] is the file's blank first line
    assert data.perplexity_text("ptb", split="test") == "\n\n".join(data.load_rows("ptb", split="test"))


def test_perplexity_text_refuses_calibration_only_sets(data_dir):
    with pytest.raises(DataError, match="c4 is not a perplexity benchmark; allowed: ptb, wikitext2"):
        data.perplexity_text("c4")


def test_missing_local_file_names_path_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError) as info:
        data.load_rows("wikitext2")
    message = str(info.value)
    assert str(tmp_path / "wikitext2" / "wiki.test.raw") in message
    assert DATA_DIR_ENV in message


def test_explicit_data_dir_beats_the_env(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, "/nonexistent")
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.valid.txt").write_text(" one two \n three \n", encoding="utf-8")
    assert data.load_rows("ptb", data_dir=tmp_path) == ["one two", "three"]


def test_local_jsonl_errors_name_the_line(tmp_path):
    (tmp_path / "c4").mkdir()
    path = tmp_path / "c4" / "c4-sample.00000-of-00001.json"
    path.write_text('{"text": "fine"}\n{"url": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 has no 'text' field"):
        data.load_rows("c4", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "split", "expected_call", "expected_rows"),
    [
        ("wikitext2", None, (("wikitext", "wikitext-2-raw-v1"), {"split": "test"}), ["", " = Title = \n"]),
        ("ptb", None, (("ptb_text_only", "penn_treebank"), {"split": "validation"}), ["a sentence", "another one"]),
        ("ptb", "test", (("ptb_text_only", "penn_treebank"), {"split": "test"}), ["a sentence", "another one"]),
        (
            "c4",
            None,
            (("allenai/c4", None), {"split": "train", "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}),
            ["doc one", "doc two"],
        ),
        ("alpaca", None, (("yahma/alpaca-cleaned", None), {"split": "train"}), None),
    ],
)
def test_hub_path_calls_load_dataset_with_the_right_names(hub, name, split, expected_call, expected_rows):
    rows = data.load_rows(name, split=split)
    assert hub == [expected_call]
    assert isinstance(rows, list)
    if expected_rows is not None:
        assert rows[: len(expected_rows)] == expected_rows
    else:
        assert rows == [data.render_alpaca({"instruction": "Say hi.", "input": "", "output": "Hi."})]


def test_hub_perplexity_text_uses_the_same_join(hub):
    assert data.perplexity_text("wikitext2") == "\n\n".join(["", " = Title = \n", "", " Body text . \n"])


def test_hub_failure_is_a_data_error_pointing_at_the_mirror(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        data.load_rows("wikitext2")
    message = str(info.value)
    assert "Hugging Face Hub" in message and DATA_DIR_ENV in message and "wikitext2/wiki.test.raw" in message
    assert isinstance(info.value.__cause__, ConnectionError)

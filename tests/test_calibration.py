"""Tests for minillm_core.calibration: seeded windows, the joined-text fallback and every user-facing error.

The tokenizer is a real `tokenizers`-backed HF tokenizer built in-process (one id per character), so no download.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from minillm_core.calibration import CalibrationConfig, build_calibration, calibration_sources, read_calibration_file
from minillm_core.errors import DataError
from minillm_core.settings import DATA_DIR_ENV

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n.,'<>"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: BOS=0, unk=1 (any character outside ALPHABET), then one id per character."""
    vocab = {"<s>": 0, "<unk>": 1} | {ch: i + 2 for i, ch in enumerate(ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@pytest.fixture
def paragraphs_txt(tmp_path) -> Path:
    """Ten paragraphs of ~200 characters (long documents for seq_len 16)."""
    paragraphs = [f"paragraph {i} " + " ".join(f"word{i}x{j}" for j in range(25)) for i in range(10)]
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def short_lines_txt(tmp_path) -> Path:
    """Forty short lines without blank lines: one document per line, each shorter than seq_len 16."""
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"line {i:02d}." for i in range(40)) + "\n", encoding="utf-8")
    return path


def test_txt_paragraphs_give_windows_from_documents(tokenizer, paragraphs_txt):
    config = CalibrationConfig(source="file", path=str(paragraphs_txt), n_samples=6, seq_len=16, seed=3)
    batch = build_calibration(tokenizer, config)
    assert batch.shape == (6, 16) and batch.dtype == torch.long
    docs = read_calibration_file(paragraphs_txt)
    assert len(docs) == 10
    doc_ids = [ids_of(tokenizer, doc) for doc in docs]
    owners = [next(i for i, ids in enumerate(doc_ids) if contains(ids, row.tolist())) for row in batch]
    assert len(set(owners)) == 6  # one window per distinct document


def test_same_seed_same_batch_other_seed_differs(tokenizer, paragraphs_txt):
    def build(seed):
        config = CalibrationConfig(source="file", path=str(paragraphs_txt), n_samples=4, seq_len=16, seed=seed)
        return build_calibration(tokenizer, config)

    assert torch.equal(build(0), build(0))
    assert not torch.equal(build(0), build(1))


def test_short_documents_fall_back_to_the_joined_stream(tokenizer, short_lines_txt, caplog):
    config = CalibrationConfig(source="file", path=str(short_lines_txt), n_samples=5, seq_len=16, seed=0)
    with caplog.at_level(logging.INFO, logger="minillm_core.calibration"):
        batch = build_calibration(tokenizer, config)
    assert "joined text" in caplog.text
    assert batch.shape == (5, 16)
    stream = ids_of(tokenizer, "\n\n".join(read_calibration_file(short_lines_txt)))
    starts = [next(i for i in range(len(stream)) if stream[i : i + 16] == row.tolist()) for row in batch]
    assert all(abs(a - b) >= 16 for i, a in enumerate(starts) for b in starts[i + 1 :])  # no overlap
    assert torch.equal(batch, build_calibration(tokenizer, config))


def test_jsonl_file(tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} " + "abc " * 10, "id": i}) for i in range(5)]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    batch = build_calibration(tokenizer, CalibrationConfig(source="file", path=str(path), n_samples=3, seq_len=8))
    assert batch.shape == (3, 8)


def test_registered_source_from_the_mirror(tokenizer, data_dir, monkeypatch):
    config = CalibrationConfig(source="c4", n_samples=4, seq_len=64, seed=0)
    batch = build_calibration(tokenizer, config, max_length=64)
    assert batch.shape == (4, 64)
    monkeypatch.delenv(DATA_DIR_ENV)  # the explicit data_dir alone must give the same batch
    assert torch.equal(batch, build_calibration(tokenizer, config, data_dir=data_dir))


def test_unknown_source_lists_allowed_values():
    assert calibration_sources() == ["alpaca", "c4", "ptb", "wikitext2", "file", "self"]
    with pytest.raises(DataError, match="unknown calibration source 'pile'; allowed: alpaca, c4, ptb, wikitext2, file, "
                                        "self"):
        CalibrationConfig(source="pile")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "n_samples must be an integer >= 1, got 0"),
        ({"seq_len": -1}, "seq_len must be an integer >= 1, got -1"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"source": "file"}, "calibration source 'file' needs path="),
        ({"source": "file", "path": "data.csv"}, r"must end in one of: \.txt, \.jsonl"),
        ({"source": "c4", "path": "x.txt"}, "path is only used with source='file'"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(DataError, match=message):
        CalibrationConfig(**kwargs)


def test_seq_len_beyond_model_context(tokenizer, paragraphs_txt):
    config = CalibrationConfig(source="file", path=str(paragraphs_txt), n_samples=2, seq_len=256)
    with pytest.raises(DataError, match="seq_len 256 exceeds the model's maximum context of 128 tokens"):
        build_calibration(tokenizer, config, max_length=128)


def test_missing_file(tokenizer, tmp_path):
    config = CalibrationConfig(source="file", path=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=r"nope\.txt does not exist"):
        build_calibration(tokenizer, config)


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl"])
def test_empty_file(tokenizer, tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{name} is empty"):
        build_calibration(tokenizer, CalibrationConfig(source="file", path=str(path)))


def test_too_little_text_says_how_much(tokenizer, short_lines_txt):
    config = CalibrationConfig(source="file", path=str(short_lines_txt), n_samples=32, seq_len=128)
    stream = ids_of(tokenizer, "\n\n".join(read_calibration_file(short_lines_txt)))
    expected = f"has {len(stream)} tokens; 32 samples x 128 tokens need 4096"
    with pytest.raises(DataError, match=expected):
        build_calibration(tokenizer, config)


def test_unreadable_jsonl_names_the_line(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl line 3 is not valid JSON"):
        build_calibration(tokenizer, CalibrationConfig(source="file", path=str(path)))


def test_jsonl_without_text_field(tokenizer, tmp_path):
    path = tmp_path / "fields.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text here"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"fields\.jsonl line 2 has no 'text' field \(found: content\)"):
        build_calibration(tokenizer, CalibrationConfig(source="file", path=str(path)))


def test_self_calibration_needs_no_data_and_is_seeded():
    from minillm_core.calibration import SELF_SOURCE
    from tests.helpers import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    state = torch.get_rng_state()
    a = build_calibration(tok, CalibrationConfig(SELF_SOURCE, n_samples=5, seq_len=12, seed=3), model=model)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    b = build_calibration(tok, CalibrationConfig(SELF_SOURCE, n_samples=5, seq_len=12, seed=3), model=model)
    c = build_calibration(tok, CalibrationConfig(SELF_SOURCE, n_samples=5, seq_len=12, seed=4), model=model)
    assert a.shape == (5, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == tok.bos_token_id).all()
    with pytest.raises(DataError, match="needs the model"):
        build_calibration(tok, CalibrationConfig(SELF_SOURCE, n_samples=2, seq_len=8))


def test_a_big_stream_is_tokenized_in_pieces_with_the_same_ids(monkeypatch):
    """Issue 14: a 20 MB file of short lines was tokenized in one call (5.8 GB); pieces give the same token ids and
    stop once the budget is in hand."""
    from minillm_core import calibration
    from tests.helpers import char_tokenizer

    tok = char_tokenizer()
    docs = [f"line {i} of the file" for i in range(400)]
    whole = calibration._stream_ids(tok, docs, budget=10**9)
    monkeypatch.setattr(calibration, "STREAM_PIECE_CHARS", 300)
    assert calibration._stream_ids(tok, docs, budget=10**9) == whole
    bounded = calibration._stream_ids(tok, docs, budget=1000)
    assert 1000 <= len(bounded) < 1400 and bounded == whole[: len(bounded)]

"""Every shared fixture: the offline data mirror, tiny model directories, private run stores.

Plain helpers (tiny models and tokenizers, job specs) live in `tests/helpers.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minillm_core.settings import DATA_DIR_ENV
from tests.helpers import save_tiny_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # where CI (.ci/run) and the Makefile look for the mirror


@pytest.fixture
def data_dir(monkeypatch) -> Path:
    """The offline data mirror (CI: ../shared/data), exported as MINILLM_DATA_DIR."""
    path = Path(os.environ.get(DATA_DIR_ENV, SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"offline data mirror not found at {path}")
    monkeypatch.setenv(DATA_DIR_ENV, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (GQA) with a character tokenizer, saved as a loadable model directory."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, data_dir) -> Path:
    """A private run store (MINILLM_RUNS_DIR) for jobs, which read the data mirror of `data_dir`."""
    from minillm_core import jobs

    root = tmp_path / "runs"
    monkeypatch.setenv(jobs.RUNS_DIR_ENV, str(root))
    return root

"""Every shared fixture: the data mirror (real, or the fixture mirror when absent), tiny model dirs, run stores.

Plain helpers (tiny models and tokenizers, job specs) live in `tests/helpers.py`; the fake mirror in
`tests/fixture_data.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minillm_core.settings import DATA_DIR_ENV
from tests.fixture_data import write_fixture_mirror
from tests.helpers import save_tiny_model_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # where CI (.ci/run) and the Makefile look for the mirror


def real_mirror() -> Path:
    """Where the real offline mirror should be: $MINILLM_DATA_DIR when set, else ../shared/data (may not exist)."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else SHARED_DATA.resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_report_header(config) -> str:
    real = real_mirror()
    if real.is_dir():
        return f"data mirror: {real} (real)"
    return f"data mirror: none at {real}; tests use the fixture mirror (tests/fixture_data.py)"


@pytest.fixture(scope="session")
def fixture_mirror(tmp_path_factory) -> Path:
    """The fake mirror of tests/fixture_data.py, written once per session (what a fresh clone tests on)."""
    return write_fixture_mirror(tmp_path_factory.mktemp("fixture-data"))


@pytest.fixture(scope="session")
def data_root(request) -> Path:
    """The real mirror when present, else the fixture mirror; session-scoped for module-scoped users (servers)."""
    real = real_mirror()
    return real if real.is_dir() else request.getfixturevalue("fixture_mirror")


@pytest.fixture
def data_dir(data_root, monkeypatch) -> Path:
    """A data mirror every loader can read, exported as MINILLM_DATA_DIR: the real one, else the fixture mirror.

    Tests on it may only assume what holds for both (the formats, not the real files' sizes or contents).
    """
    monkeypatch.setenv(DATA_DIR_ENV, str(data_root))
    return data_root


@pytest.fixture
def real_data_dir(monkeypatch) -> Path:
    """The real offline mirror, exported as MINILLM_DATA_DIR. Missing: a skip locally, an error in CI (CI=true)."""
    real = real_mirror()
    if not real.is_dir():
        message = (f"the real offline data mirror is missing: {real} is not a directory (set {DATA_DIR_ENV}, "
                   f"or put the mirror at {SHARED_DATA}); tests that check the real data sets need it")
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    monkeypatch.setenv(DATA_DIR_ENV, str(real))
    return real


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (GQA) with a character tokenizer, saved as a loadable model directory."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, data_dir) -> Path:
    """A private run store (MINILLM_RUNS_DIR) for jobs, which read the data mirror of `data_dir`."""
    from minillm_core.runs import RUNS_DIR_ENV

    root = tmp_path / "runs"
    monkeypatch.setenv(RUNS_DIR_ENV, str(root))
    return root

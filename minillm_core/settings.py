"""Where the project reads data and writes caches.

The data directory comes from an explicit argument, else `MINILLM_DATA_DIR`; `None` means "use the Hugging Face Hub".
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "MINILLM_DATA_DIR"
CACHE_DIR_ENV = "MINILLM_CACHE_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data mirror to read datasets from, or None to use the Hub."""
    value = explicit if explicit is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where converted models and other derived files are cached (created on demand)."""
    value = explicit or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "minillm"
    return Path(value).expanduser()

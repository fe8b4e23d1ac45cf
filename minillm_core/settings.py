"""Where the project reads data and writes caches.

The data directory comes from an explicit argument, else `MINILLM_DATA_DIR`; `None` means "use the Hugging Face Hub".
"""

from __future__ import annotations

import os
from pathlib import Path

from minillm_core.errors import MiniLLMError

DATA_DIR_ENV = "MINILLM_DATA_DIR"
CACHE_DIR_ENV = "MINILLM_CACHE_DIR"


def user_path(value: str | os.PathLike) -> Path:
    """A path as a person typed it, `~` and `~user` expanded; an unknown user is bad input, not a traceback."""
    try:
        return Path(value).expanduser()
    except RuntimeError as exc:  # pathlib: "Could not determine home directory."
        raise MiniLLMError(f"cannot expand {str(value)!r}: {exc} (no such user?)") from None


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data mirror to read datasets from, or None to use the Hub."""
    value = explicit if explicit is not None else os.environ.get(DATA_DIR_ENV)
    return user_path(value) if value else None


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where converted models and other derived files are cached (created on demand)."""
    value = explicit or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "minillm"
    return user_path(value)

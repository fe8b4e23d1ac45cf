"""The progress callback the core reports long work through.

`progress(done, total, label)`; the CLI renders it as a bar, the app as `st.progress`, jobs write it to a file.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, label: str) -> None: ...


def no_progress(done: int, total: int, label: str) -> None:
    """The default callback: report nothing."""

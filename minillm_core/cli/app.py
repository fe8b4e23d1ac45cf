"""The `minillm` Typer app and what every command shares: errors as one line, progress on stderr, `--json` output.

Command groups live in their own modules (`prune`, `evaluate`, `recover`) and register on `app`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from minillm_core import workflow
from minillm_core.errors import MiniLLMError

app = typer.Typer(
    name="minillm",
    help="Structured pruning of Hugging Face causal LMs (MINI-LLM and baselines): score, plan, prune, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    envvar="MINILLM_DATA_DIR", help="Local data mirror (WikiText-2, PTB, C4 sample, ...); unset: the Hugging Face Hub."
)]


def stderr(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn MiniLLMError into a one-line message and exit code 2, never a traceback."""
    try:
        yield
    except MiniLLMError as exc:
        stderr(f"error: {exc}")
        raise typer.Exit(2) from None


class Bar:
    """A progress callback rendering `progress(done, total, label)` as a rich bar on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def describe(self, label: str, text: str) -> None:
        """Show `text` (loss, tokens/s, ETA) as the description of the bar registered under `label`."""
        if label in self._tasks:
            self._progress.update(self._tasks[label], description=text)

    def __call__(self, done: int, total: int, label: str) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)


def emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=1, default=str))
    else:
        render()


def load(config: workflow.LoadConfig, placement: workflow.PlacementConfig | None = None) -> workflow.LoadedModel:
    t0 = time.perf_counter()
    stderr(f"loading {config.model} ...")
    loaded = workflow.load(config.model, dtype=config.dtype, device=config.device, placement=placement)
    where = getattr(loaded.model, "hf_device_map", None)
    placed = loaded.device
    if where and list(where) == [""]:
        placed = f"{where['']} (the whole model)"
    elif where:
        placed = ", ".join(f"{n} {sum(1 for v in where.values() if str(v) == n)} module(s)"
                           for n in dict.fromkeys(map(str, where.values())))
    stderr(f"loaded {loaded.model.config.model_type} from {loaded.source} in {time.perf_counter() - t0:.1f} s "
           f"on {placed}")
    return loaded


def calibration(calib: workflow.CalibrationConfig, seed: int) -> workflow.CalibrationConfig:
    """The calibration the flags describe; the one `--seed` seeds the scorer and the calibration sampling."""
    import dataclasses

    return dataclasses.replace(calib, seed=seed)


class CalibrationRows:
    """The calibration token rows of one command, built at most once (scoring, the search and the re-fit share
    them; the `self` source generates text, which takes a while)."""

    def __init__(self, loaded, calib: workflow.CalibrationConfig, seed: int, data_dir: Path | None) -> None:
        self.loaded, self.config, self.data_dir = loaded, calibration(calib, seed), data_dir
        self._rows = None

    def __call__(self):
        if self._rows is None:
            c = self.config
            stderr(f"calibration: {c.n_samples} x {c.seq_len} tokens from {c.source}")
            self._rows = workflow.calibrate(self.loaded, c, self.data_dir)
        return self._rows


def score_model(loaded, score: workflow.ScoreConfig, rows: CalibrationRows, bar: Bar) -> workflow.GroupScores:
    """Score with the calibration rows the scorer needs (built only if it needs any)."""
    return workflow.score(loaded, score, rows() if workflow.needs_calibration(score) else None, progress=bar)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app()

"""The one state store: a directory per run under the runs root, its `status.json` the only record of its state.

Listing scans the directories, newest first, and never writes; runs written before the runs package read the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.runs import files
from minillm_core.runs.spec import RunSpec
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)

RUNS_DIR_ENV = "MINILLM_RUNS_DIR"
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
MAX_NAME = 200
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where run directories live: the argument, else `$MINILLM_RUNS_DIR`, else `./runs`."""
    return user_path(explicit or os.environ.get(RUNS_DIR_ENV) or "runs").resolve()


def run_dir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise MiniLLMError(f"invalid run id {run_id!r}")
    return runs_root(root) / run_id


def new_run_id() -> str:
    return secrets.token_urlsafe(9).replace("_", "x").replace("-", "y")


@dataclass
class RunStatus:
    """The content of `status.json`: state, the running step and its progress, the worker's pid, times."""

    id: str
    state: str = "queued"
    step: str = ""
    step_index: int = 0
    steps: int = 0
    done: int = 0
    total: int = 0
    error: str = ""
    pid: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    updated: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]: finished steps plus the running step's share."""
        if self.state == "done":
            return 1.0
        if self.steps <= 0:
            return 0.0
        within = self.done / self.total if self.total else 0.0
        return min(1.0, (max(self.step_index - 1, 0) + within) / self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        """Also reads the status files of older runs, which call the id `job_id`."""
        if not isinstance(data, dict):
            raise MiniLLMError(f"a run status must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        if "job_id" in data:
            data["id"] = data.pop("job_id")
        if not isinstance(data.get("state"), str) or data["state"] not in STATES:
            raise MiniLLMError(f"unknown run state {data.get('state')!r}; allowed: {', '.join(STATES)}")
        kinds = {"id": (str,), "step": (str,), "error": (str,), "step_index": (int,), "steps": (int,),
                 "done": (int,), "total": (int,), "pid": (int, type(None)), "created": (int, float),
                 "started": (int, float, type(None)), "updated": (int, float), "finished": (int, float, type(None))}
        wrong = [k for k, kind in kinds.items() if k in data and (isinstance(data[k], bool)
                                                                  or not isinstance(data[k], kind))]
        if wrong:
            raise MiniLLMError(f"malformed run status: {', '.join(wrong)} of the wrong type")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def read_status(folder: Path) -> RunStatus:
    try:
        return RunStatus.from_dict(files.read_json(folder / files.STATUS_FILE))
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise MiniLLMError(f"run {folder.name} has no readable status ({exc})") from None


def write_status(folder: Path, st: RunStatus) -> None:
    files.write_json(folder / files.STATUS_FILE, st.to_dict())


def create(spec: RunSpec, root: str | os.PathLike | None = None) -> Path:
    """A new run directory holding the spec and a queued status; it appears whole (built aside, then renamed)."""
    run_id = new_run_id()
    folder = run_dir(run_id, root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{run_id}.new")  # not a run id: listings skip it
    tmp.mkdir()
    try:
        files.write_json(tmp / files.SPEC_FILE, spec.to_dict())
        write_status(tmp, RunStatus(run_id))
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_spec(folder: Path) -> RunSpec:
    path = folder / files.SPEC_FILE
    try:
        return RunSpec.from_dict(files.read_json(path))
    except (OSError, json.JSONDecodeError) as exc:
        raise MiniLLMError(f"cannot read run spec {path}: {exc}") from None


# --- reading runs for listings (cached: spec.json and metrics.json are written once) -----------------------------

_CACHE: OrderedDict[Path, tuple[tuple[int, int], Any]] = OrderedDict()
_CACHE_SIZE = 256
_LOCK = threading.Lock()


def _cached(path: Path, load: Callable[[Path], Any] = files.read_json) -> Any:
    """`load(path)`, redone only when the file's mtime or size changes (raises OSError when it is missing)."""
    st = path.stat()
    key = (st.st_mtime_ns, st.st_size)
    with _LOCK:
        hit = _CACHE.get(path)
        if hit is not None and hit[0] == key:
            _CACHE.move_to_end(path)
            return hit[1]
    data = load(path)
    with _LOCK:
        _CACHE[path] = (key, data)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return data


#: Sections of metrics.json that hold flat {metric: number} dicts (the pages compute with them).
METRIC_SECTIONS = ("original", "pruned", "retained", "comparison", "recovered", "before_reconstruction")


def read_metrics(folder: Path) -> dict[str, Any] | None:
    """The run's `metrics.json` (shared and cached: do not modify it), or None before it exists. A file that is
    not a minillm.run/1 object (a metric section that is not {name: number}) raises, naming the section."""
    try:
        data = _cached(folder / files.METRICS_FILE)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MiniLLMError(f"cannot read the metrics of run {folder.name}: {exc}") from None
    if not isinstance(data, dict):
        raise MiniLLMError(f"the metrics of run {folder.name} are not a minillm.run/1 object")
    for section in METRIC_SECTIONS:
        values = data.get(section, {})
        if not isinstance(values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise MiniLLMError(f"the metrics of run {folder.name} are malformed: {section!r} must map metric names "
                               "to numbers")
    if not isinstance(data.get("details", {}), dict) or not isinstance(data.get("summary", {}), dict):
        raise MiniLLMError(f"the metrics of run {folder.name} are malformed: 'details' and 'summary' must be objects")
    return data


@dataclass
class Run:
    """One run as the dashboard lists it (the same fields for old and new run directories)."""

    id: str
    name: str
    created: float
    model: str
    scorer: str
    ratio: float
    state: str
    run_dir: str
    error: str = ""
    params_before: int | None = None
    params_after: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_dir: str = ""
    plan_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the spec's free-form record (a sweep's point)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def flat_metrics(self) -> dict[str, Any]:
        """One flat row: sizes, parameters, perplexities and speed of the original and the pruned model."""
        row: dict[str, Any] = {"run": self.id, "name": self.name, "model": self.model, "scorer": self.scorer,
                               "ratio": self.ratio, "state": self.state}
        for which in ("original", "pruned", "retained", "comparison"):
            for key, value in (self.metrics.get(which) or {}).items():
                row[f"{which}:{key}"] = value
        return row


def run_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """Every run directory under the root (named by a run id, holding a spec), in no particular order."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if _RUN_ID.fullmatch(p.name) and (p / files.SPEC_FILE).is_file()]


def record(folder: Path, st: RunStatus) -> Run:
    """The listing's view of a run: its spec's model and plan, its name, its status and (when done) its metrics."""
    try:
        spec = _cached(folder / files.SPEC_FILE)
        plan = spec["plan"]
        run = Run(id=folder.name, name=_name(folder, spec), created=st.created, model=str(spec["model"]),
                  scorer=str(plan.get("scorer", "")), ratio=float(plan["config"]["ratio"]), state=st.state,
                  run_dir=str(folder), error=st.error, params_before=plan.get("original_params"),
                  params_after=plan.get("predicted_params"),
                  extra=spec.get("extra") if isinstance(spec.get("extra"), dict) else {})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return Run(folder.name, folder.name, st.created, "", "", 0.0, "failed", str(folder),
                   error=f"unreadable run spec ({exc!r})")
    if st.state == "done":
        try:
            metrics = read_metrics(folder) or {}
        except MiniLLMError as exc:  # one broken run is shown as broken; the others still list and open
            run.state, run.error = "failed", f"{exc} ({folder / files.METRICS_FILE})"
            return run
        run.metrics = metrics
        run.params_after = (run.metrics.get("pruned") or {}).get("params", run.params_after)
        run.model_dir = str(folder / files.MODEL_SUBDIR)
        run.plan_path = str(folder / files.PLAN_FILE)
    return run


def _name(folder: Path, spec: dict[str, Any]) -> str:
    """A rename's `name.txt`, else the name the old index gave the run, else the spec's name or "<scorer> <ratio>"."""
    try:
        return (folder / files.NAME_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    old = _old_index_names(folder.parent).get(folder.name)
    if old:
        return old
    plan = spec["plan"]
    return spec.get("name") or f"{plan.get('scorer', '?')} {plan['config']['ratio']:.0%}"


def _old_index_names(root: Path) -> dict[str, str]:
    """Run names from the `runs.sqlite` index that runs before the runs package were listed from (opened read-only)."""
    path = root / files.OLD_INDEX_FILE
    try:
        return _cached(path, _read_old_index)
    except FileNotFoundError:
        return {}


def _read_old_index(path: Path) -> dict[str, str]:
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            return dict(db.execute("SELECT id, name FROM runs").fetchall())
    except sqlite3.Error as exc:
        logger.warning("ignoring the old run index %s: %s", path, exc)
        return {}


def rename(folder: Path, name: str) -> None:
    name = name.strip()
    if not name:
        raise MiniLLMError("a run name cannot be empty")
    if len(name) > MAX_NAME:
        raise MiniLLMError(f"a run name is at most {MAX_NAME} characters")
    files.write_text(folder / files.NAME_FILE, name)


def remove(folder: Path) -> None:
    """Delete a run directory; never anything outside the runs root (a run directory that links elsewhere)."""
    resolved = folder.resolve()
    if resolved.parent != folder.parent.resolve():
        raise MiniLLMError(f"refusing to delete {resolved}: not inside {folder.parent}")
    shutil.rmtree(resolved, ignore_errors=True)
    with _LOCK:
        for path in [p for p in _CACHE if p.parent == folder]:
            del _CACHE[path]

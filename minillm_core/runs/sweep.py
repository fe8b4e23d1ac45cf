"""Sweeps: a grid of pruning runs (scorers x ratios x re-fit on/off), every point a run in the run store.

One score pass per scorer (its scores cached in the sweep's folder), then each point is an ordinary run executed by the
run worker in its own process: `local` runs the points here one after the other, `ray` submits the score passes and
the points as Ray tasks with their resource needs (CPUs, GPUs, memory) to a local instance or a cluster. The same spec
gives the same runs on either backend. A sweep is identified by its spec: submitting it again skips the finished
points and re-runs the rest in their existing run folders, so an interrupted sweep resumes without duplicating a run.

Layout: `<runs root>/.sweeps/<key>/sweep.json` (the spec), `scores/<scorer>.safetensors`; each point's run records
`{"sweep": key, "point": "<scorer>@<ratio>[/no-refit]"}` in its spec's `extra`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minillm_core.calibration import CalibrationConfig
from minillm_core.errors import MiniLLMError, PlanError
from minillm_core.evaluation.suite import EvalConfig
from minillm_core.planning import PlanConfig, PruningPlan
from minillm_core.reconstruction import ReconstructConfig
from minillm_core.recovery import RecoveryConfig
from minillm_core.runs import files, process, store
from minillm_core.runs.spec import RunSpec, eval_config

logger = logging.getLogger(__name__)

SWEEPS_SUBDIR = ".sweeps"  # not a run id: run listings skip it
SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "minillm.sweep/1"
BACKENDS = ("local", "ray")
#: Ray retries a point whose process died (a killed or lost worker) this many times; a point that fails with an
#: error of its own (a bad setting, a model that does not load) is not retried.
MAX_RETRIES = 2
_POLL_S = 1.0
START_LINE = "sweep: starting run"
#: A sweep's re-fit keeps the units its scorer chose: re-choosing them by OBS (the prune default) would make every
#: scorer's points the same under uniform allocation, and a sweep is there to compare scorers.
SWEEP_RECON = ReconstructConfig(select="plan")
#: Metric families that are measurements of quality or size (deterministic); timings and memory are left out of a
#: point's `metrics` so that two backends can be compared exactly.
QUALITY_SIZE_PREFIXES = ("ppl/", "kl/", "agreement/", "acc", "ab/", "params", "size_mb", "param_ratio")


@dataclass(frozen=True)
class Point:
    """One grid point: a scorer, a ratio of all parameters, and whether the kept weights are re-fitted."""

    scorer: str
    ratio: float
    reconstruct: bool = True

    @property
    def key(self) -> str:
        return f"{self.scorer}@{self.ratio:g}" + ("" if self.reconstruct else "/no-refit")

    @property
    def label(self) -> str:
        return f"{self.scorer} {self.ratio:.0%}" + ("" if self.reconstruct else ", no re-fit")


@dataclass(frozen=True)
class SweepSpec:
    """The grid and what every point shares: the model, the plan's shape, the re-fit settings, the calibration (for
    scoring and the re-fit), the evaluation, an optional recovery. Validated on construction."""

    model: str
    scorers: tuple[str, ...]
    ratios: tuple[float, ...]
    reconstruct: tuple[bool, ...] = (True,)
    plan: PlanConfig = field(default_factory=PlanConfig)
    recon: ReconstructConfig = field(default_factory=lambda: SWEEP_RECON)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvalConfig = field(default_factory=eval_config)
    recovery: RecoveryConfig | None = None
    dtype: str = "auto"
    device: str = "auto"
    name: str = ""

    def __post_init__(self) -> None:
        from minillm_core.scoring import SCORERS

        if not self.scorers or not self.ratios or not self.reconstruct:
            raise MiniLLMError("a sweep needs at least one scorer, one ratio and one re-fit setting")
        for scorer in self.scorers:
            SCORERS.get(scorer)  # an unknown name fails now, listing the registered ones
        bad = [r for r in self.ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1]
        if bad:
            raise MiniLLMError(f"sweep ratios must be fractions of parameters in (0, 1), got {bad}")
        for name, dupes in (("scorers", self.scorers), ("ratios", self.ratios), ("re-fit settings", self.reconstruct)):
            if len(set(dupes)) != len(dupes):
                raise MiniLLMError(f"the sweep's {name} repeat: {list(dupes)}")
        for name, kind in (("plan", PlanConfig), ("recon", ReconstructConfig), ("calibration", CalibrationConfig),
                           ("evaluation", EvalConfig)):
            if not isinstance(getattr(self, name), kind):
                raise MiniLLMError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    def points(self) -> list[Point]:
        return [Point(s, float(r), rc) for s in self.scorers for rc in self.reconstruct for r in sorted(self.ratios)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": SWEEP_FORMAT, "model": self.model, "scorers": list(self.scorers),
                "ratios": [float(r) for r in self.ratios], "reconstruct": list(self.reconstruct),
                "plan": asdict(self.plan), "recon": asdict(self.recon), "calibration": asdict(self.calibration),
                "evaluation": self.evaluation.to_dict(),
                "recovery": None if self.recovery is None else asdict(self.recovery),
                "dtype": self.dtype, "device": self.device, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
            raise MiniLLMError(f"not a sweep spec ({SWEEP_FORMAT} object)")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            data["plan"] = PlanConfig(**data.get("plan", {}))
            data["recon"] = ReconstructConfig(**data.get("recon", {}))
            data["calibration"] = CalibrationConfig(**data.get("calibration", {}))
            data["evaluation"] = EvalConfig.from_dict(data.get("evaluation") or {})
            data["recovery"] = None if data.get("recovery") is None else RecoveryConfig(**data["recovery"])
            for name in ("scorers", "ratios", "reconstruct"):
                data[name] = tuple(data.get(name) or ())
            return cls(**data)
        except TypeError as exc:
            raise MiniLLMError(f"malformed sweep spec: {exc}") from None

    @property
    def key(self) -> str:
        """The sweep's identity: a hash of everything that changes its results (not its name)."""
        payload = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def run_spec(self, point: Point, plan: PruningPlan) -> RunSpec:
        return RunSpec(model=self.model, plan=plan, evaluation=self.evaluation, recovery=self.recovery,
                       reconstruct=self.recon if point.reconstruct else None, calibration=self.calibration,
                       dtype=self.dtype, device=self.device,
                       name=f"{self.name or 'sweep'}: {point.label}",
                       extra={"sweep": self.key, "point": point.key})


@dataclass(frozen=True)
class Resources:
    """What each score pass and point asks for: CPU threads (also its PyTorch thread count, on either backend, so
    both give the same numbers), GPUs and memory (Ray's scheduling; MB, None: no reservation)."""

    cpus: int = 1
    gpus: float = 0.0
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or self.cpus < 1:
            raise MiniLLMError(f"cpus per point must be an integer >= 1, got {self.cpus!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, (int, float)) or self.gpus < 0:
            raise MiniLLMError(f"gpus per point must be a number >= 0, got {self.gpus!r}")
        if self.memory_mb is not None and (isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int)
                                           or self.memory_mb < 1):
            raise MiniLLMError(f"memory per point must be a whole number of MB >= 1, got {self.memory_mb!r}")

    def ray_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_mb:
            out["memory"] = self.memory_mb * 2**20
        return out


@dataclass
class SweepResult:
    """Every point of the sweep as it ended: its run, state, error and metrics (quality and size only)."""

    key: str
    backend: str
    points: list[dict[str, Any]]
    seconds: float = 0.0
    skipped: int = 0  # points already finished by an earlier submission

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PointInterrupted(RuntimeError):
    """A point's run process was killed (not an error of the run itself): the point is retried."""


def sweep_dir(key: str, root: str | os.PathLike | None = None) -> Path:
    return store.runs_root(root) / SWEEPS_SUBDIR / key


def _scores_path(key: str, scorer: str, root: Path) -> Path:
    return sweep_dir(key, root) / "scores" / f"{scorer}.safetensors"


@contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the two units of work, the same on both backends -----------------------------------------------------------


def score_pass(spec_data: dict[str, Any], points: list[dict[str, Any]], root: str, cpus: int
               ) -> dict[str, dict[str, Any]]:
    """Load the model and the calibration rows once, score it with each scorer of `points` (or read the sweep's
    cached scores) and plan every point: {point key: {"plan": plan dict} or {"error": why}}. Runs in the driver
    (local: every scorer in one call) or a Ray worker (one call per scorer)."""
    from minillm_core import workflow
    from minillm_core.scoring import GroupScores

    spec = SweepSpec.from_dict(spec_data)
    with _threads(cpus):  # the same thread count as the points: the same numbers on every backend
        loaded = workflow.load(spec.model, dtype=spec.dtype, device=spec.device)
        rows: list[Any] = []

        def calibration() -> Any:  # built at most once, and only when a scorer or the search needs it
            if not rows:
                rows.append(workflow.calibrate(loaded, spec.calibration, spec.evaluation.data_dir))
            return rows[0]

        out: dict[str, dict[str, Any]] = {}
        for scorer in dict.fromkeys(d["scorer"] for d in points):
            score_config = workflow.ScoreConfig(scorer, seed=spec.calibration.seed)
            cache = _scores_path(spec.key, scorer, Path(root))
            if cache.is_file():
                scores = GroupScores.load(cache)
            else:
                scores = workflow.score(loaded, score_config, calibration()
                                        if workflow.needs_calibration(score_config) else None)
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                scores.save(tmp)
                os.replace(tmp, cache)
            for p in (Point(**d) for d in points if d["scorer"] == scorer):
                config = dataclasses.replace(spec.plan, ratio=p.ratio)
                try:
                    if config.allocation == "search":
                        plan = workflow.search_plan(loaded, scores, config, calibration(), recon=spec.recon,
                                                    model_name=spec.model)
                    else:
                        plan = workflow.make_plan(loaded, scores, config, model_name=spec.model)
                    out[p.key] = {"plan": plan.to_dict()}
                except PlanError as exc:  # beyond what the protected layers allow: the point fails, the sweep goes on
                    out[p.key] = {"error": str(exc)}
        return out


def run_point(folder: str, cpus: int) -> str:
    """Execute the run in `folder` with the run worker, in its own process (cancellable from the Runs page, killed
    with its parent), using `cpus` threads; returns the run's final state. A finished run is left as it is; a
    failed, cancelled or interrupted one starts again from its spec. Raises `PointInterrupted` when the process was
    killed, so the caller retries."""
    path = Path(folder)
    st = process.status(path)  # a run whose process died is marked failed here
    if st.state == "running" or (st.state == "queued" and process.read_pid(path, st) is not None):
        while not st.terminal:  # started by another submission of the sweep and still alive: wait for it
            time.sleep(_POLL_S)
            st = process.status(path)
    if st.state == "done":
        return "done"
    (path / files.METRICS_FILE).unlink(missing_ok=True)
    store.write_status(path, store.RunStatus(path.name))
    with (path / files.LOG_FILE).open("a", encoding="utf-8") as log:  # one line per start: retries are visible
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {START_LINE} {path.name} (process {os.getpid()})\n")
    threads = str(cpus)
    proc = process.start(path, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                    process.DIE_WITH_PARENT_ENV: "1"})
    code = proc.wait()
    state = process.status(path).state
    if code < 0 and state not in ("done", "cancelled"):  # killed, not cancelled by the user (Runs page)
        raise PointInterrupted(f"run {path.name} was killed by signal {-code}")
    return state


# --- the driver ----------------------------------------------------------------------------------------------------


def sweep_runs(key: str, root: str | os.PathLike | None = None) -> dict[str, store.Run]:
    """The runs of sweep `key` by point key (the newest one when a point has several)."""
    listed = []
    for folder in store.run_folders(root):
        try:
            listed.append(store.record(folder, process.status(folder)))
        except MiniLLMError:  # an unreadable status: not a point this sweep can use
            continue
    found: dict[str, store.Run] = {}
    for run in sorted(listed, key=lambda r: r.created):
        if run.extra.get("sweep") == key and isinstance(run.extra.get("point"), str):
            found[run.extra["point"]] = run
    return found


def list_sweeps(root: str | os.PathLike | None = None) -> list[tuple[SweepSpec, float]]:
    """Every sweep submitted under the root (its spec and when it was first submitted), newest first; an unreadable
    sweep file is skipped with a warning."""
    base = store.runs_root(root) / SWEEPS_SUBDIR
    found = []
    for path in base.glob(f"*/{SWEEP_FILE}") if base.is_dir() else []:
        try:
            found.append((SweepSpec.from_dict(files.read_json(path)), path.stat().st_mtime))
        except (OSError, ValueError, MiniLLMError) as exc:
            logger.warning("skipping sweep %s: %s", path.parent, exc)
    return sorted(found, key=lambda item: item[1], reverse=True)


def points_of(spec: SweepSpec, root: str | os.PathLike | None = None) -> list[tuple[Point, store.Run | None]]:
    """Every point of the sweep with its run (None before the point is planned), in the spec's order."""
    found = sweep_runs(spec.key, root)
    return [(p, found.get(p.key)) for p in spec.points()]


def _point_result(point: Point, run: store.Run | None, error: str = "") -> dict[str, Any]:
    metrics = {}
    if run is not None and run.state == "done":
        for section in ("pruned", "comparison"):
            metrics |= {k: v for k, v in (run.metrics.get(section) or {}).items()
                        if k.startswith(QUALITY_SIZE_PREFIXES)}
    return {"scorer": point.scorer, "ratio": point.ratio, "reconstruct": point.reconstruct, "point": point.key,
            "run_id": run.id if run else None, "state": run.state if run else "failed",
            "error": error or (run.error if run else ""), "metrics": dict(sorted(metrics.items()))}


def run_sweep(spec: SweepSpec, backend: str = "local", address: str | None = None,
              root: str | os.PathLike | None = None, resources: Resources | None = None,
              progress: Callable[[int, int, str], None] | None = None) -> SweepResult:
    """Run every point of `spec` not finished yet (`backend` local or ray; `address`: a Ray cluster, else a local
    instance) and return all points. `progress(done, total, label)` is told as points finish."""
    if backend not in BACKENDS:
        raise MiniLLMError(f"unknown sweep backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise MiniLLMError("--address is for the ray backend")
    resources = resources or Resources()
    root_path = store.runs_root(root)
    t0 = time.time()
    folder = sweep_dir(spec.key, root_path)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / SWEEP_FILE).is_file():
        files.write_json(folder / SWEEP_FILE, spec.to_dict())
    points = spec.points()
    existing = sweep_runs(spec.key, root_path)
    done = {p.key for p in points if p.key in existing and existing[p.key].state == "done"}
    tell = progress or (lambda _d, _t, _label: None)
    tell(len(done), len(points), "points")
    folders = {key: run.run_dir for key, run in existing.items()}
    to_plan = [p for p in points if p.key not in folders]
    errors: dict[str, str] = {}
    finished = len(done)

    def finish(p: Point, error: str = "") -> None:
        nonlocal finished
        finished += 1
        if error:
            errors[p.key] = error
        logger.info("sweep point %s finished%s", p.label, f": {error}" if error else "")
        tell(finished, len(points), "points")

    executor = _Ray(address, resources) if backend == "ray" else _Local(resources)
    try:
        plans = executor.score_passes(spec, to_plan, str(root_path)) if to_plan else {}
        for p in to_plan:
            if "error" in plans[p.key]:
                finish(p, plans[p.key]["error"])
            else:
                run_spec = spec.run_spec(p, PruningPlan.from_dict(plans[p.key]["plan"]))
                folders[p.key] = str(store.create(run_spec, root_path))
        executor.run_points({p: folders[p.key] for p in points if p.key in folders and p.key not in done}, finish)
    finally:
        executor.close()
    final = sweep_runs(spec.key, root_path)
    result = [_point_result(p, final.get(p.key), errors.get(p.key, "")) for p in points]
    return SweepResult(spec.key, backend, result, round(time.time() - t0, 1), skipped=len(done))


class _Local:
    """Every scorer's pass in this process (one model load), points one after the other in their own processes."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def score_passes(self, spec: SweepSpec, points: Sequence[Point], root: str) -> dict[str, dict[str, Any]]:
        return score_pass(spec.to_dict(), [asdict(p) for p in points], root, self.resources.cpus)

    def run_points(self, folders: dict[Point, str], finish: Callable[..., None]) -> None:
        for p, folder in folders.items():
            for attempt in range(MAX_RETRIES + 1):
                try:
                    run_point(folder, self.resources.cpus)
                    finish(p)
                    break
                except PointInterrupted as exc:
                    logger.warning("%s (attempt %d of %d)", exc, attempt + 1, MAX_RETRIES + 1)
            else:
                finish(p, f"the run's process was killed {MAX_RETRIES + 1} times")

    def close(self) -> None:
        pass


class _Ray:
    """Score passes (one task per scorer, in parallel) and then the points as Ray tasks (a local instance, or the
    cluster at `address`); a task whose worker dies is retried by Ray, a killed run process by the task's retry
    policy."""

    def __init__(self, address: str | None, resources: Resources) -> None:
        try:
            import ray
        except ImportError:
            raise MiniLLMError("the ray backend needs Ray: pip install 'ray[default]==2.60.0' "
                               "(or the project's `ray` extra)") from None
        self.ray, self.resources = ray, resources
        self.started = not ray.is_initialized()
        if self.started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise MiniLLMError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
        options = resources.ray_options()
        self.score_task = ray.remote(score_pass).options(**options, max_retries=MAX_RETRIES)
        self.point_task = ray.remote(run_point).options(**options, max_retries=MAX_RETRIES,
                                                        retry_exceptions=[PointInterrupted])

    def score_passes(self, spec: SweepSpec, points: Sequence[Point], root: str) -> dict[str, dict[str, Any]]:
        refs = [self.score_task.remote(spec.to_dict(), [asdict(p) for p in points if p.scorer == scorer], root,
                                       self.resources.cpus)
                for scorer in dict.fromkeys(p.scorer for p in points)]
        out: dict[str, dict[str, Any]] = {}
        for part in self._get(refs):
            out |= part
        return out

    def run_points(self, folders: dict[Point, str], finish: Callable[..., None]) -> None:
        waiting = {self.point_task.remote(folder, self.resources.cpus): p for p, folder in folders.items()}
        while waiting:
            ready, _ = self.ray.wait(list(waiting), num_returns=1)
            p = waiting.pop(ready[0])
            try:
                self._get(ready)
                finish(p)
            except MiniLLMError as exc:
                finish(p, str(exc))

    def _get(self, refs: list[Any]) -> list[Any]:
        from ray.exceptions import RayError, RayTaskError

        try:
            return self.ray.get(refs)
        except RayTaskError as exc:  # the task's own exception, re-raised here with Ray's wrapping
            cause = exc.as_instanceof_cause()
            if isinstance(cause, MiniLLMError):
                raise MiniLLMError(str(cause).splitlines()[-1]) from None
            raise MiniLLMError(f"a sweep task failed on Ray: {str(exc).splitlines()[-1]}") from None
        except RayError as exc:  # a worker or node lost more often than the retries allow
            raise MiniLLMError(f"a sweep task was lost on Ray: {exc}") from None

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


# --- a sweep in the background (the dashboard's sweep job) ---------------------------------------------------------

DRIVER_PID = "driver.pid"
DRIVER_LOG = "sweep.log"


def start(spec: SweepSpec, root: str | os.PathLike | None = None, resources: Resources | None = None) -> str:
    """Run the sweep on the local backend in a background process (its own process group, log in the sweep's
    folder); returns the sweep's key. A sweep whose driver is still running is not started twice."""
    import subprocess
    import sys

    root_path = store.runs_root(root)
    folder = sweep_dir(spec.key, root_path)
    if driver_alive(spec.key, root_path):
        return spec.key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / SWEEP_FILE).is_file():
        files.write_json(folder / SWEEP_FILE, spec.to_dict())
    cpus = str((resources or Resources(cpus=os.cpu_count() or 1)).cpus)
    with (folder / DRIVER_LOG).open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", __name__, "run", str(folder), cpus], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    files.write_text(folder / DRIVER_PID, str(proc.pid))
    process.remember_child(folder.name, proc)
    return spec.key


def driver_alive(key: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a background driver of sweep `key` is running."""
    folder = sweep_dir(key, root)
    try:
        pid = int((folder / DRIVER_PID).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    return process.alive(pid, folder)


def cancel(key: str, root: str | os.PathLike | None = None) -> None:
    """Stop the sweep's background driver; the point it was running dies with it (and is re-run on resume)."""
    folder = sweep_dir(key, root)
    try:
        pid = int((folder / DRIVER_PID).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return
    if process.alive(pid, folder):
        process.kill_group(pid, folder, wait_s=5.0)


def main(argv: list[str] | None = None) -> int:
    """`python -m minillm_core.runs.sweep run SWEEP_DIR CPUS`: the background driver of `start`."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "run":
        print("usage: python -m minillm_core.runs.sweep run SWEEP_DIR CPUS", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = Path(argv[1])
    try:
        spec = SweepSpec.from_dict(files.read_json(folder / SWEEP_FILE))
        result = run_sweep(spec, "local", root=folder.parent.parent, resources=Resources(cpus=int(argv[2])))
    except MiniLLMError as exc:
        logger.error("sweep failed: %s", exc)
        return 2
    logger.info("sweep %s finished: %d points in %.0f s", result.key, len(result.points), result.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Background prune-and-evaluate jobs: one separate process per job, driven by a JSON spec in its own directory.

The job writes `status.json` atomically as it goes and `metrics.json`, the plan and the pruned model when done;
`status()` reads that file (and notices a dead process), `cancel()` kills the job's process group.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.evaluation.suite import PPL_DATASETS  # noqa: F401  (re-exported for the run page)

logger = logging.getLogger(__name__)

RUNS_DIR_ENV = "MINILLM_RUNS_DIR"
SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
PLAN_FILE = "plan.json"
PID_FILE = "pid"
LOG_FILE = "job.log"
MODEL_SUBDIR = "model"
RECOVERED_SUBDIR = "recovered"
RECOVER_STEP = "recover with LoRA"
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_STATUS_EVERY_S = 0.25  # throttle for progress writes; state changes are always written

# Popen handles of jobs this process started, so their exit status is collected (no zombies that look alive).
_CHILDREN: dict[str, subprocess.Popen] = {}


def runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where job/run directories live: the argument, else `$MINILLM_RUNS_DIR`, else `./runs`."""
    return Path(explicit or os.environ.get(RUNS_DIR_ENV) or "runs").expanduser().resolve()


@dataclass(frozen=True)
class JobSpec:
    """What a job does: prune `model` with `plan` (a `PruningPlan.to_dict()`), save it, run the evaluations.

    `perplexity`: benchmark names; `tasks`: zero-shot task names; `limit`: windows per benchmark and items per task
    (None: all); `evaluate_original`: also measure the unpruned model so the comparison has a baseline.
    """

    model: str
    plan: dict[str, Any]
    perplexity: tuple[str, ...] = ("wikitext2",)
    tasks: tuple[str, ...] = ()
    recovery: dict[str, Any] | None = None  # `RecoveryConfig` fields: LoRA-tune the pruned model, then evaluate it
    limit: int | None = 16
    seq_len: int = 128
    evaluate_original: bool = True
    measure_speed: bool = True
    dtype: str = "auto"
    device: str = "auto"
    data_dir: str | None = None
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "perplexity", tuple(self.perplexity))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.limit, bool):
            raise MiniLLMError(f"limit must be None (everything) or an integer >= 1, got {self.limit!r}")
        _eval_config(self)  # datasets, tasks and limit are validated by the evaluation suite itself
        if self.recovery is not None:
            self.recovery_config()  # validates now, in the submitting process, not minutes later in the job
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise MiniLLMError(f"seq_len must be an integer >= 2, got {self.seq_len!r}")

    def recovery_config(self):
        from minillm_core.recovery import RecoveryConfig

        try:
            return RecoveryConfig(**{"data_dir": self.data_dir, **(self.recovery or {})})
        except TypeError as exc:
            raise MiniLLMError(f"bad recovery settings: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        try:
            return cls(**data)
        except TypeError as exc:
            raise MiniLLMError(f"malformed job spec: {exc}") from None


@dataclass
class JobStatus:
    """The content of `status.json`."""

    job_id: str
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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write temp + os.replace, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def job_dir(job_id: str, root: str | os.PathLike | None = None) -> Path:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise MiniLLMError(f"invalid job id {job_id!r}")
    return runs_root(root) / job_id


def new_job_id() -> str:
    return secrets.token_urlsafe(9).replace("_", "x").replace("-", "y")


def submit(spec: JobSpec, root: str | os.PathLike | None = None, start: bool = True) -> str:
    """Create the job directory, write the spec, start the worker process; return the job id."""
    job_id = new_job_id()
    folder = job_dir(job_id, root)
    folder.mkdir(parents=True)
    _write_json_atomic(folder / SPEC_FILE, spec.to_dict())
    _write_json_atomic(folder / STATUS_FILE, JobStatus(job_id).to_dict())
    if start:
        _start_process(folder)
    return job_id


def _start_process(folder: Path) -> None:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with (folder / LOG_FILE).open("ab") as log:
        # A new session makes the worker a process-group leader: cancel() kills it and anything it spawned.
        proc = subprocess.Popen(
            [sys.executable, "-m", "minillm_core.jobs", "run", str(folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    (folder / PID_FILE).write_text(str(proc.pid), encoding="utf-8")
    _CHILDREN[folder.name] = proc


def _read_pid(folder: Path, st: JobStatus) -> int | None:
    if st.pid:
        return st.pid
    try:
        return int((folder / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int, folder: Path) -> bool:
    """True while `pid` is a live (not zombie) worker for this job directory."""
    child = _CHILDREN.get(folder.name)
    if child is not None and child.pid == pid:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: rule out zombies and reused pids
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return str(folder) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
    return True


def _read_status(folder: Path) -> JobStatus:
    try:
        data = json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
        return JobStatus(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise MiniLLMError(f"job {folder.name} has no readable status ({exc})") from None


def status(job_id: str, root: str | os.PathLike | None = None) -> JobStatus:
    """The job's current status; a job whose process died while running is reported (and recorded) as failed."""
    folder = job_dir(job_id, root)
    if not folder.is_dir():
        raise MiniLLMError(f"no job {job_id!r} under {folder.parent}")
    st = _read_status(folder)
    if st.terminal:
        return st
    pid = _read_pid(folder, st)
    grace = st.state == "queued" and time.time() - st.created < 30 and pid is None
    if not grace and (pid is None or not _pid_alive(pid, folder)):
        st = _read_status(folder)  # it may have finished between the two reads
        if not st.terminal:
            st.state, st.error, st.finished = "failed", "process ended unexpectedly", time.time()
            st.error += _log_tail(folder)
            _write_json_atomic(folder / STATUS_FILE, st.to_dict())
    return st


def _log_tail(folder: Path, lines: int = 5) -> str:
    try:
        tail = (folder / LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(tail)) if tail else ""


def cancel(job_id: str, root: str | os.PathLike | None = None, wait_s: float = 5.0) -> JobStatus:
    """Kill the job's process group (TERM, then KILL after `wait_s`) and record it as cancelled."""
    folder = job_dir(job_id, root)
    st = status(job_id, root)
    if st.terminal:
        return st
    pid = _read_pid(folder, st)
    if pid is not None:
        _kill_group(pid, folder, wait_s)
    st = _read_status(folder)
    if not st.terminal:
        st.state, st.error, st.finished = "cancelled", "cancelled by the user", time.time()
        _write_json_atomic(folder / STATUS_FILE, st.to_dict())
    return st


def _kill_group(pid: int, folder: Path, wait_s: float) -> None:
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, wait_s)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            if not _pid_alive(pid, folder):
                return
            time.sleep(0.05)


def read_spec(job_id: str, root: str | os.PathLike | None = None) -> JobSpec:
    path = job_dir(job_id, root) / SPEC_FILE
    try:
        return JobSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise MiniLLMError(f"cannot read job spec {path}: {exc}") from None


def read_metrics(job_id: str, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The job's `metrics.json`, or None before it exists."""
    path = job_dir(job_id, root) / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# --- the worker (runs in the job's own process) -------------------------------------------------------------------


class _Reporter:
    """Writes progress into status.json, throttled."""

    def __init__(self, folder: Path, steps: list[str]) -> None:
        self.folder, self.steps = folder, steps
        self.st = _read_status(folder)
        self.st.state, self.st.pid, self.st.started, self.st.steps = "running", os.getpid(), time.time(), len(steps)
        self._last = 0.0
        self._flush()

    def _flush(self) -> None:
        self.st.updated = self._last = time.time()
        _write_json_atomic(self.folder / STATUS_FILE, self.st.to_dict())

    def begin(self, step: str) -> Callable[[int, int, str], None]:
        self.st.step, self.st.step_index = step, self.steps.index(step) + 1
        self.st.done, self.st.total = 0, 0
        self._flush()

        def progress(done: int, total: int, label: str) -> None:
            self.st.done, self.st.total = done, total
            if done >= total or time.time() - self._last >= _STATUS_EVERY_S:
                self._flush()

        return progress

    def finish(self, state: str, error: str = "") -> None:
        self.st.state, self.st.error, self.st.finished = state, error, time.time()
        if state == "done":
            self.st.done = self.st.total = 1
            self.st.step_index = self.st.steps
        self._flush()


def _steps(spec: JobSpec) -> list[str]:
    steps = ["load model"]
    if spec.evaluate_original:
        steps += ["evaluate original"]
    steps += ["prune", "save pruned model", "evaluate pruned"]
    steps += ["compare with original"] if spec.evaluate_original else []
    steps += [RECOVER_STEP, "evaluate recovered"] if spec.recovery is not None else []
    return steps


def _eval_config(spec: JobSpec):
    from minillm_core.evaluation.speed import SpeedConfig
    from minillm_core.evaluation.suite import EvalConfig

    return EvalConfig(perplexity=spec.perplexity, seq_len=spec.seq_len, tasks=spec.tasks, limit=spec.limit,
                      speed=spec.measure_speed, speed_config=SpeedConfig(repeats=3, new_tokens=16),
                      data_dir=spec.data_dir)


def run_job(folder: str | os.PathLike) -> int:
    """Execute the job in `folder` (called in the worker process). Returns the exit code."""
    folder = Path(folder).resolve()
    spec = JobSpec.from_dict(json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")))
    rep = _Reporter(folder, _steps(spec))
    try:
        metrics = _execute(spec, folder, rep)
    except MiniLLMError as exc:
        rep.finish("failed", str(exc))
        return 2
    except Exception as exc:  # a bug or an environment problem: still recorded, with the traceback in job.log
        logger.exception("job failed")
        rep.finish("failed", f"{type(exc).__name__}: {exc}")
        return 1
    _write_json_atomic(folder / METRICS_FILE, metrics)
    rep.finish("done")
    return 0


def _execute(spec: JobSpec, folder: Path, rep: _Reporter) -> dict[str, Any]:
    """Load, (evaluate the original), prune a copy, save, evaluate; metrics in the `minillm.run/1` schema."""
    from minillm_core.evaluation.suite import RunMetrics, compare_metrics, evaluate, speedups
    from minillm_core.io import save_pruned
    from minillm_core.loading import load_model
    from minillm_core.pipeline import apply_plan, geometry_of
    from minillm_core.planning import PruningPlan, summarize

    t0 = time.time()
    plan = PruningPlan.from_dict(spec.plan)
    rep.begin("load model")
    loaded = load_model(spec.model, dtype=spec.dtype, device=spec.device)
    plan.validate(geometry_of(loaded.model))
    plan.save(folder / PLAN_FILE)
    config = _eval_config(spec)
    original: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if spec.evaluate_original:
        original, details["original"] = evaluate(loaded.model, loaded.tokenizer, config,
                                                 progress=rep.begin("evaluate original"))
    rep.begin("prune")
    pruned = apply_plan(loaded.model, plan)  # a copy: the loaded original stays intact for comparisons
    rep.begin("save pruned model")
    save_pruned(pruned, loaded.tokenizer, folder / MODEL_SUBDIR, plan=plan, overwrite=True)
    metrics, details["pruned"] = evaluate(pruned, loaded.tokenizer, config, folder / MODEL_SUBDIR,
                                          progress=rep.begin("evaluate pruned"))
    comparison: dict[str, float] = {}
    if spec.evaluate_original:
        comparison = compare_metrics(loaded.model, pruned, loaded.tokenizer, config,
                                     progress=rep.begin("compare with original"))
        comparison |= speedups(original, metrics)
    run = RunMetrics(spec.model, config, original, metrics, comparison, details)
    run.write(folder)  # metrics.json + metrics.csv + lm-eval files; the caller adds the job fields below
    out = {**run.to_dict(), "scorer": plan.scorer, "ratio": plan.config.ratio,
           "summary": summarize(plan, geometry_of(loaded.model)).to_dict(), "model_dir": str(folder / MODEL_SUBDIR),
           "seconds": time.time() - t0}
    if spec.recovery is not None:
        out |= _recover(spec, folder, loaded, pruned, plan, config, rep)
    out["seconds"] = time.time() - t0
    return out


def _recover(spec: JobSpec, folder: Path, loaded: Any, pruned: Any, plan: Any, config: Any, rep: _Reporter
             ) -> dict[str, Any]:
    """LoRA-tune the pruned model (the pruned metrics are its "before"), save it, and evaluate it the same way."""
    from minillm_core.evaluation.suite import evaluate
    from minillm_core.recovery import recover

    rec_config = spec.recovery_config()
    result = recover(pruned, loaded.tokenizer, rec_config, out_dir=folder / RECOVERED_SUBDIR, plan=plan,
                     progress=rep.begin(RECOVER_STEP), evaluation=None)
    recovered, _ = evaluate(result.model, loaded.tokenizer, config,
                            folder / RECOVERED_SUBDIR if rec_config.merge else None,
                            progress=rep.begin("evaluate recovered"))
    return {"recovered": recovered, "recovered_dir": str(folder / RECOVERED_SUBDIR),
            "recovery": {"steps": result.steps, "train_seconds": result.train_seconds, "losses": result.losses,
                         "settings": spec.recovery}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m minillm_core.jobs run JOB_DIR", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_job(argv[1])


if __name__ == "__main__":
    raise SystemExit(main())

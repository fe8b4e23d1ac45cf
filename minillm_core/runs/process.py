"""The supervisor: starts a run's worker in its own process group, tells live workers from dead ones, cancels them.

It writes a run's status only for the transitions the worker cannot record itself: killed (cancelled) or dead (failed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from minillm_core.errors import MiniLLMError
from minillm_core.runs import files
from minillm_core.runs.store import RunStatus, read_status, write_status

WORKER_MODULE = "minillm_core.runs.worker"
#: Set in a worker's environment: the worker asks the kernel to kill it when its parent dies (a sweep point whose
#: Ray task or driver was killed must not run on beside its retry).
DIE_WITH_PARENT_ENV = "MINILLM_DIE_WITH_PARENT"
START_GRACE_S = 30.0  # a queued run without a pid yet is not dead before this

# Popen handles of workers this process started, so their exit status is collected (no zombies that look alive).
_CHILDREN: dict[str, subprocess.Popen] = {}


def start(folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the worker for the run in `folder` (`env`: variables set on top of ours); its output goes to the run's
    log. Returns its process."""
    env = {**os.environ, **(env or {})}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with (folder / files.LOG_FILE).open("ab") as log:
        # A new session makes the worker a process-group leader: cancel() kills it and anything it spawned.
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "run", str(folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    files.write_text(folder / files.PID_FILE, str(proc.pid))
    remember_child(folder.name, proc)
    return proc


def remember_child(name: str, proc: subprocess.Popen) -> None:
    """Keep the handle of a process this process started under `name`, so its exit is collected (`alive`)."""
    _CHILDREN[name] = proc


def die_with_parent() -> None:
    """In a worker started with `DIE_WITH_PARENT_ENV`: be killed when the parent process dies (Linux; elsewhere the
    retry of a killed sweep point may overlap the orphan, which a later status check reports)."""
    if os.environ.pop(DIE_WITH_PARENT_ENV, None) is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def read_pid(folder: Path, st: RunStatus) -> int | None:
    if st.pid:
        return st.pid
    try:
        return int((folder / files.PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def alive(pid: int, folder: Path) -> bool:
    """True while `pid` is a live (not zombie) worker for this run directory."""
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


def status(folder: Path) -> RunStatus:
    """The run's status; a run whose worker died while it ran is reported, and recorded once, as failed."""
    if not folder.is_dir():
        raise MiniLLMError(f"no run {folder.name!r} under {folder.parent}")
    st = read_status(folder)
    if st.terminal:
        return st
    pid = read_pid(folder, st)
    grace = st.state == "queued" and time.time() - st.created < START_GRACE_S and pid is None
    if not grace and (pid is None or not alive(pid, folder)):
        st = read_status(folder)  # it may have finished between the two reads
        if not st.terminal:
            st.state, st.finished = "failed", time.time()
            st.error = "process ended unexpectedly" + _log_tail(folder)
            write_status(folder, st)
    return st


def _log_tail(folder: Path, lines: int = 5) -> str:
    try:
        tail = (folder / files.LOG_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(tail)) if tail else ""


def cancel(folder: Path, wait_s: float = 5.0) -> RunStatus:
    """Kill the worker's process group (TERM, then KILL after `wait_s`) and record the run as cancelled."""
    st = status(folder)
    if st.terminal:
        return st
    pid = read_pid(folder, st)
    if pid is not None:
        kill_group(pid, folder, wait_s)
    st = read_status(folder)
    if not st.terminal:
        st.state, st.error, st.finished = "cancelled", "cancelled by the user", time.time()
        write_status(folder, st)
    return st


def kill_group(pid: int, folder: Path, wait_s: float) -> None:
    """TERM, then KILL after `wait_s`, the process group led by `pid` (started for `folder`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if not alive(pid, folder):
                return
            time.sleep(0.05)

"""Drive the dashboard in a real browser: start `streamlit run app.py` on a free port, launch Debian's Chromium.

Shared by `tests/test_browser.py` and the `bench/` scripts. Nothing here asserts; callers do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and no background traffic: the closed network refuses it and Chromium would keep retrying.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP = '[data-testid="stApp"]'
# Streamlit 1.67 sets data-test-script-state on the app root: initial, running, notRunning, rerunRequested, ...
IDLE = f'{APP}[data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(runs_dir: Path, **extra: str) -> dict[str, str]:
    """The server's environment: a private run store, the offline data mirror (CI's value wins), no Hub calls."""
    env = dict(os.environ)
    # Absolute, so the server and its job processes agree whatever their working directory (CI: ../shared/data).
    env["MINILLM_DATA_DIR"] = str(Path(env.get("MINILLM_DATA_DIR") or REPO.parent / "shared" / "data").resolve())
    env.update({"MINILLM_RUNS_DIR": str(runs_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}, **extra)
    return env


@contextmanager
def streamlit_server(env: dict[str, str], log: Path, timeout: float = 90, extra_args: tuple[str, ...] = ()
                     ) -> Iterator[str]:
    """`streamlit run app.py` on 127.0.0.1 and a free port; yields its URL once healthy, always stops it."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           *extra_args]
    with log.open("w") as out:
        # Own process group: background jobs the app starts are stopped with it.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log, timeout)
        yield url
    finally:
        stop(proc)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


@contextmanager
def chromium(playwright, width: int = 1400, height: int = 900) -> Iterator:
    """A browser context on Debian's Chromium with a fresh, empty profile; closed (and deleted) afterwards."""
    with tempfile.TemporaryDirectory(prefix="minillm-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


def wait_idle(page, timeout: float = 60) -> None:
    """Wait until the script is not running (after a page load or a navigation)."""
    page.wait_for_selector(IDLE, timeout=timeout * 1000)


def rerun(page, action: Callable[[], object], timeout: float = 60, quiet_ms: int = 500) -> None:
    """Do `action` (a click, key presses) and wait until the reruns it triggers are over.

    "Over" means `notRunning` that has held for `quiet_ms` since the action and since the last state change:
    right after a click the state still reads the previous run's `notRunning`, a fast rerun can flip to running
    and back within one React render (never seen in the DOM), and widgets such as the slider commit their value
    after a ~200 ms debounce.
    """
    page.evaluate("""(sel) => {
        const app = document.querySelector(sel);
        if (window.__runWatch) window.__runWatch.disconnect();
        window.__lastChange = performance.now();
        window.__runWatch = new MutationObserver(() => { window.__lastChange = performance.now(); });
        window.__runWatch.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
    }""", APP)
    action()
    page.evaluate("() => { window.__lastChange = Math.max(window.__lastChange, performance.now()); }")
    page.wait_for_function("""([sel, quiet]) =>
        document.querySelector(sel).getAttribute('data-test-script-state') === 'notRunning'
        && performance.now() - window.__lastChange > quiet""", arg=[APP, quiet_ms], timeout=timeout * 1000)


def goto_page(page, title: str, timeout: float = 60) -> None:
    """Switch page through the sidebar (keeps the browser session, unlike loading a new URL); every page's
    title is its navigation label."""
    link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title)
    rerun(page, link.click, timeout)
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=timeout * 1000)

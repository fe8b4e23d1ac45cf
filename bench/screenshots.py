"""README screenshots: the dashboard on the bundled SmolLM2 in Debian's Chromium, 1400x900, into assets/screenshots/.

Run from the repository root: `python bench/screenshots.py` (needs /usr/bin/chromium, playwright, the data mirror;
the page icons are Material symbols, no emoji font needed). Starts its own server on a free port with a private
run store, walks Model & data -> Importance -> Plan -> Prune & evaluate -> Compare -> A/B test, and always stops
the server.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.browser_support` is shared with the browser tests

from PIL import Image  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import app_env, chromium, goto_page, rerun, streamlit_server, wait_idle  # noqa: E402

OUT = REPO / "assets" / "screenshots"
MAX_KB = 300
# Clean chrome: no Deploy button or developer menu in the pictures.
SERVER_ARGS = ("--client.toolbarMode", "viewer")


def scroll_to(locator, margin: int = 90) -> None:
    """Put `locator` at the top of the main pane, below the sticky header."""
    locator.evaluate("""(e, margin) => {
        e.scrollIntoView({block: 'start'});
        let p = e.parentElement;
        while (p && !(p.scrollHeight > p.clientHeight && getComputedStyle(p).overflowY !== 'visible')) {
            p = p.parentElement;
        }
        (p || document.scrollingElement).scrollTop -= margin;
    }""", margin)


def save(page, name: str, out: Path) -> Path:
    """A viewport PNG; palette-quantized when it would exceed MAX_KB (flat UI colours survive that well)."""
    path = out / f"{name}.png"
    page.wait_for_timeout(500)  # let Plotly finish its transitions
    page.screenshot(path=path)
    if path.stat().st_size > MAX_KB * 1024:
        Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KB")
    return path


def model_page(page, out: Path) -> None:
    expect(page.get_by_test_id("stAlertContentSuccess")).to_contain_text("Loaded")
    scroll_to(page.get_by_test_id("stAlertContentSuccess"))
    save(page, "model", out)


def importance_page(page, out: Path) -> None:
    goto_page(page, "Importance")
    rerun(page, page.get_by_role("button", name="Compute scores").click, timeout=300)
    heads = page.get_by_test_id("stPlotlyChart").first
    expect(heads.locator(".heatmaplayer image")).to_have_count(1)
    scroll_to(heads, margin=20)
    save(page, "importance", out)


def plan_page(page, out: Path, presses: int) -> None:
    goto_page(page, "Plan")
    thumb = page.get_by_test_id("stSlider").get_by_role("slider")
    thumb.focus()
    rerun(page, lambda: [thumb.press("ArrowRight") for _ in range(presses)], quiet_ms=1500)
    goto_page(page, "Plan")  # one more run, so the sidebar's plan summary matches the page
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
    save(page, "plan", out)


def run_and_compare(page, out: Path, windows: int, seq_len: int, timeout: float) -> None:
    goto_page(page, "Prune & evaluate")
    page.get_by_label("Run name").fill("flap 30% (README)")
    page.get_by_role("spinbutton", name="Windows per dataset", exact=False).fill(str(windows))
    page.get_by_role("spinbutton", name="Window length (tokens)").fill(str(seq_len))
    page.get_by_role("spinbutton", name="Window length (tokens)").press("Tab")
    t0 = time.monotonic()
    rerun(page, page.get_by_role("button", name="Start").click)
    done = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done in")
    expect(done).to_be_visible(timeout=timeout * 1000)
    print(f"job done in {time.monotonic() - t0:.0f} s")
    wait_idle(page)
    goto_page(page, "Compare")
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
    save(page, "compare", out)


def ab_page(page, out: Path, prompts: int) -> None:
    """The A/B page after answering the first `prompts` facts with both models: verdict, tiles, distribution."""
    goto_page(page, "A/B test")
    page.get_by_role("spinbutton", name="Prompts (0 = all)").fill(str(prompts))
    rerun(page, page.get_by_role("button", name="Run A/B").click, timeout=300)
    headline = page.get_by_role("heading", name="On ", exact=False).last
    expect(headline).to_be_visible()
    scroll_to(headline)
    save(page, "ab", out)


def sweep_page(page, out: Path) -> None:
    """The Sweep ratios page on a finished sweep copied into the run store (--sweep-store): curves and table."""
    goto_page(page, "Sweep ratios")
    chart = page.get_by_test_id("stPlotlyChart").first
    expect(chart).to_be_visible()
    scroll_to(page.get_by_role("combobox", name="Sweep"))
    save(page, "sweep", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--presses", type=int, default=10, help="slider steps right from 0.20 (0.01 each)")
    parser.add_argument("--windows", type=int, default=8, help="perplexity windows in the README run")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--job-timeout", type=float, default=600)
    parser.add_argument("--ab-prompts", type=int, default=10, help="facts prompts in the A/B screenshot")
    parser.add_argument("--sweep-store", type=Path, help="a run store holding a finished sweep (e.g. the local store "
                        "of bench/bench_sweep.py, .cache/bench_sweep/local) for the Sweep ratios screenshot")
    parser.add_argument("--only-sweep", action="store_true", help="just the Sweep ratios screenshot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minillm-screens-") as tmp:
        tmp = Path(tmp)
        if args.sweep_store:
            shutil.copytree(args.sweep_store, tmp / "runs")
        with (streamlit_server(app_env(tmp / "runs"), tmp / "server.log", extra_args=SERVER_ARGS) as url,
              sync_playwright() as p, chromium(p) as context):
            context.set_default_timeout(60_000)
            page = context.new_page()
            page.goto(url)
            wait_idle(page, 300)  # loads the bundled SmolLM2 (GGUF converted once, then cached)
            if not args.only_sweep:
                model_page(page, args.out)
                importance_page(page, args.out)
                plan_page(page, args.out, args.presses)
                run_and_compare(page, args.out, args.windows, args.seq_len, args.job_timeout)
                ab_page(page, args.out, args.ab_prompts)
            if args.sweep_store:
                sweep_page(page, args.out)


if __name__ == "__main__":
    main()

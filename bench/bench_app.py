"""Dashboard benchmark: cold start to the first heatmap and the quick demo's cold start to Compare (browser), and the
server-side time of a plan slider update.

Writes bench/results/app.json and app.md. Run from the repository root: `python bench/bench_app.py [--repeats N]`
(needs /usr/bin/chromium and playwright for the cold start; the bundled SmolLM2 GGUF is converted once and cached
before the first repeat, so every repeat measures the documented "loads in seconds once cached" path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.browser_support` and `ui` live in the repository, not the package

from tests.browser_support import app_env, chromium, goto_page, rerun, streamlit_server, wait_idle  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_COLD_S, TARGET_SLIDER_MS, TARGET_DEMO_S = 60.0, 300.0, 90.0


def cold_start_once(tmp: Path) -> dict[str, float]:
    """Seconds from launching `streamlit run app.py` to the heads heatmap drawn in Chromium (magnitude)."""
    from playwright.sync_api import expect, sync_playwright

    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    with (streamlit_server(app_env(tmp / "runs"), tmp / "server.log") as url, sync_playwright() as p,
          chromium(p) as context):
        marks["server_healthy_s"] = time.perf_counter() - t0
        page = context.new_page()
        page.goto(url)
        wait_idle(page, 300)
        marks["model_page_ready_s"] = time.perf_counter() - t0
        goto_page(page, "Importance")
        page.get_by_role("combobox", name="Scorer").click()  # magnitude: the figure measures the app, not a scorer
        rerun(page, page.get_by_role("option", name="magnitude", exact=True).click)
        page.get_by_role("button", name="Compute scores").click()
        heatmap = page.get_by_test_id("stPlotlyChart").first.locator(".heatmaplayer image")
        expect(heatmap).to_have_count(1, timeout=300_000)
        marks["first_heatmap_s"] = time.perf_counter() - t0
    return marks


def demo_once(tmp: Path) -> dict[str, float]:
    """Seconds from launching `streamlit run app.py` to the Compare page of the quick demo's run (one click on the
    Model page: FLAP on 32 x 128 tokens, a 20% plan, a run with the re-fit on 8 WikiText-2 windows)."""
    from playwright.sync_api import expect, sync_playwright

    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    with (streamlit_server(app_env(tmp / "runs"), tmp / "server.log") as url, sync_playwright() as p,
          chromium(p) as context):
        page = context.new_page()
        page.goto(url)
        wait_idle(page, 300)
        marks["model_page_ready_s"] = time.perf_counter() - t0
        page.get_by_role("button", name="Run the quick demo").click()
        expect(page.get_by_role("heading", name="Prune & evaluate")).to_be_visible(timeout=300_000)
        marks["run_started_s"] = time.perf_counter() - t0
        expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible(timeout=600_000)
        expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=120_000)
        marks["compare_s"] = time.perf_counter() - t0
    return marks


def repeat(measure, times: int, label: str) -> list[dict[str, float]]:
    """`measure(tmp)` `times` times, each with a fresh temporary folder (run store, server log)."""
    out = []
    for i in range(times):
        with tempfile.TemporaryDirectory(prefix="minillm-bench-app-") as tmp:
            out.append(measure(Path(tmp)))
        print(f"{label} {i + 1}/{times}: {out[-1]}")
    return out


def slider_times(repeats: int) -> dict[str, float]:
    """Milliseconds of one full app rerun (router + Plan page) after a slider move, via streamlit's AppTest."""
    from streamlit.testing.v1 import AppTest

    from ui import state

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
    at.run()  # loads the bundled model into this process's cache
    at.switch_page("pages/2_importance.py").run()
    at.selectbox[0].set_value("magnitude")
    at.button[0].click().run()
    at.switch_page("pages/3_plan.py").run()
    assert not at.exception, [e.value for e in at.exception]
    out: dict[str, float] = {}
    for allocation in ("uniform", "global"):
        at.selectbox(key="plan.allocation").set_value(allocation)
        at.run()
        times = []
        for i in range(repeats):
            at.slider(key="plan.ratio").set_value(round(0.05 + 0.45 * i / max(repeats - 1, 1), 2))
            t0 = time.perf_counter()
            at.run()
            times.append((time.perf_counter() - t0) * 1000)
            assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
            assert at.session_state[state.PLAN].config.ratio == at.slider(key="plan.ratio").value
        out[f"{allocation}_median_ms"] = statistics.median(times)
        out[f"{allocation}_max_ms"] = max(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold starts (each launches a fresh server)")
    parser.add_argument("--slider-repeats", type=int, default=20)
    parser.add_argument("--skip-browser", action="store_true", help="only the slider timing (no Chromium needed)")
    parser.add_argument("--demo-repeats", type=int, default=2, help="quick-demo runs, cold start to Compare")
    args = parser.parse_args()
    os.environ.setdefault("MINILLM_DATA_DIR", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cold = repeat(cold_start_once, 0 if args.skip_browser else args.repeats, "cold start")
    demo = repeat(demo_once, 0 if args.skip_browser else args.demo_repeats, "demo")
    slider = slider_times(args.slider_repeats)
    print(f"slider: {slider}")

    medians = {k: statistics.median(c[k] for c in cold) for k in cold[0]} if cold else {}
    demo_medians = {k: statistics.median(d[k] for d in demo) for k in demo[0]} if demo else {}
    result = {
        "model": "smollm2-135m", "scorer": "magnitude", "device": "cpu",
        "cold_start": {"runs": cold, "median": medians, "target_s": TARGET_COLD_S},
        "quick_demo": {"runs": demo, "median": demo_medians, "target_s": TARGET_DEMO_S},
        "slider_update": {**slider, "repeats": args.slider_repeats, "target_ms": TARGET_SLIDER_MS,
                          "what": "AppTest: one full rerun of app.py + pages/3_plan.py after a slider move"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "app.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Dashboard benchmark (bundled SmolLM2-135M, CPU)", "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
        f"1-min load average {result['machine']['load_avg_1m']:.1f} at the end (shared machine: read as upper "
        "bounds).", "",
        "| measure | median | target |", "|---|---|---|",
    ]
    if medians:
        lines += [
            f"| cold start -> server healthy | {medians['server_healthy_s']:.1f} s | |",
            f"| cold start -> Model & data page ready (model loaded) | {medians['model_page_ready_s']:.1f} s | |",
            f"| cold start -> first heatmap (magnitude) | {medians['first_heatmap_s']:.1f} s "
            f"| < {TARGET_COLD_S:.0f} s |",
        ]
    if demo_medians:
        lines += [
            f"| quick demo: cold start -> run started | {demo_medians['run_started_s']:.1f} s | |",
            f"| quick demo: cold start -> Compare | {demo_medians['compare_s']:.1f} s | < {TARGET_DEMO_S:.0f} s |",
        ]
    lines += [
        f"| slider update, server side (uniform) | {slider['uniform_median_ms']:.0f} ms "
        f"(max {slider['uniform_max_ms']:.0f}) | < {TARGET_SLIDER_MS:.0f} ms |",
        f"| slider update, server side (global) | {slider['global_median_ms']:.0f} ms "
        f"(max {slider['global_max_ms']:.0f}) | < {TARGET_SLIDER_MS:.0f} ms |",
        "",
        f"Cold start: {len(cold)} fresh `streamlit run app.py` launches, Chromium headless, timed from the launch "
        "to the heads heatmap image in the page; the GGUF -> safetensors conversion was already cached.",
        f"Quick demo: {len(demo)} fresh launches, one click on *Run the quick demo* (FLAP on 32 x 128 c4 tokens, "
        "20% plan, run with the re-fit of FLAP's units, 8 WikiText-2 windows of 128 tokens, KL on the same 8, "
        "speed off), timed to the Compare page's first chart.",
        f"Slider: {args.slider_repeats} ratios from 0.05 to 0.50 per allocation; one AppTest rerun of the router and "
        "the Plan page each (plan preview from cached scores, tables and the widths chart), browser not included.",
    ]
    (RESULTS / "app.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Browser end-to-end: the dashboard in Debian's Chromium, driven by Playwright, on a tiny random Llama directory.

One server per module. The main test walks model -> importance -> plan (slider) -> prune+eval job -> compare ->
HTML report, saving a screenshot per step under tests/artifacts/ (look at them: they are the evidence).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser_support import CHROMIUM, IDLE, app_env, chromium, goto_page, rerun, streamlit_server, wait_idle

if not CHROMIUM.is_file():
    if os.environ.get("MINILLM_REQUIRE_BROWSER"):  # CI installs Chromium: its absence is a failure, not a skip
        raise RuntimeError(f"{CHROMIUM} not found but MINILLM_REQUIRE_BROWSER is set")
    pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements-dev.txt)")

from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
JOB_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    """(url, runs_dir) of a Streamlit server with a private run store, reading `data_root` (the real mirror or the
    fixture mirror); stopped after the module."""
    tmp = tmp_path_factory.mktemp("browser")
    ARTIFACTS.mkdir(exist_ok=True)
    env = app_env(tmp / "runs", MINILLM_DATA_DIR=str(data_root))
    with streamlit_server(env, ARTIFACTS / "server.log") as url:
        yield url, tmp / "runs"


@pytest.fixture(scope="module")
def context():
    with sync_playwright() as p, chromium(p) as ctx:
        ctx.set_default_timeout(30_000)
        yield ctx


@pytest.fixture
def page(context, server, request):
    """A fresh tab on the app (a new Streamlit session); a screenshot of it is kept when the test fails."""
    failed = request.session.testsfailed
    tab = context.new_page()
    tab.goto(server[0])
    wait_idle(tab, 120)  # the first visit loads the bundled model once per server process
    yield tab
    if request.session.testsfailed > failed:  # the call phase is reported before this teardown runs
        tab.screenshot(path=ARTIFACTS / f"{request.node.name}-failure.png")
    tab.close()


def shot(page, name: str, element=None) -> None:
    """Scroll `element` into view (the main pane scrolls, not the window) and save a viewport screenshot."""
    if element is not None:
        element.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / f"{name}.png")


def table_row(page, first_cell: str):
    """The cells of the st.dataframe row whose first cell reads `first_cell` (from the grid's accessible table)."""
    row = page.locator('[data-testid="stDataFrame"] [role="row"]').filter(
        has=page.locator(f'[role="gridcell"]:text-is("{first_cell}")'))
    return row.locator('[role="gridcell"]')


def metric_value(page, label: str):
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def params_after(model_dir: Path, *ratios: float) -> list[str]:
    """'Parameters after' as the Plan page should show it for each ratio: the core's own plan at the page's default
    options (uniform, both, q-heads, channels rounded to 8, default protected layers). Uniform widths do not depend
    on the scores, so magnitude's stand in for the page's."""
    from minillm_core.allocation import build_plan
    from minillm_core.loading import load_model
    from minillm_core.planning import PlanConfig, default_protected_layers, summarize
    from minillm_core.workflow import geometry_of, score

    loaded = load_model(str(model_dir), device="cpu")
    g, scores = geometry_of(loaded.model), score(loaded.model, "magnitude")
    configs = [PlanConfig(ratio=r, protected_layers=default_protected_layers(g.num_layers), round_to=8)
               for r in ratios]
    return [f"{summarize(build_plan(g, scores, c, str(model_dir)), g).params_after:,}" for c in configs]


def use_model(page, path: Path) -> None:
    page.get_by_text("Local directory or .gguf file").click()  # inside a form: no rerun until submitted
    page.get_by_label("Hub id or local path").fill(str(path))
    rerun(page, page.get_by_role("button", name="Use this model").click)


def test_explore_score_plan_run_compare_report(page, server, tiny_model_dir, tmp_path):
    url, runs_dir = server

    # 1. Model & data: the tiny model's architecture table
    use_model(page, tiny_model_dir)
    expect(page.get_by_test_id("stAlertContentSuccess")).to_contain_text(f"Loaded {tiny_model_dir}")
    expect(table_row(page, "layers")).to_have_text(["layers", "4"])
    expect(table_row(page, "attention heads")).to_have_text(["attention heads", "6"])
    expect(table_row(page, "KV heads")).to_have_text(["KV heads", "2"])
    expect(page.get_by_test_id("stSidebar")).to_contain_text(str(tiny_model_dir))
    shot(page, "01-model")

    # 2. Importance: the default scorer (FLAP, on the default calibration set) -> heatmaps drawn by Plotly
    goto_page(page, "Importance")
    expect(page.get_by_text("No scores yet")).to_be_visible()
    expect(page.get_by_role("combobox", name="Scorer")).to_have_value("flap")
    rerun(page, page.get_by_role("button", name="Compute scores").click)
    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts).to_have_count(3)
    heads = charts.first
    expect(heads.locator(".gtitle")).to_have_text("flap: attention heads")
    expect(heads.locator(".heatmaplayer image")).to_have_count(1)  # plotly.js paints the heatmap as an image
    expect(charts.nth(1).locator(".gtitle")).to_have_text("flap: MLP channels")
    shot(page, "02-importance", heads)

    # 3. Plan: the ratio slider moved with the keyboard changes the preview
    goto_page(page, "Plan")
    params = metric_value(page, "Parameters after")
    before, after = params_after(tiny_model_dir, 0.2, 0.4)
    assert before != after
    thumb = page.get_by_test_id("stSlider").get_by_role("slider")
    expect(thumb).to_have_value("0.2")
    expect(params).to_have_text(before)
    shot(page, "03-plan-before")
    # click-to-protect toggles both ways: a layer's bar protects it, a second click on the same bar unprotects it
    bar = page.get_by_test_id("stPlotlyChart").first.locator("g.barlayer g.point path").nth(2)

    def click_bar() -> None:  # plotly's drag layer takes the pointer: click where the bar is drawn
        bar.scroll_into_view_if_needed()
        box = bar.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    rerun(page, click_bar)
    expect(params).not_to_have_text(before)
    rerun(page, click_bar)
    expect(params).to_have_text(before)
    # ... and after the chips were edited: unprotect layer 2 by its chip, then its bar protects it again
    rerun(page, click_bar)
    expect(params).not_to_have_text(before)
    rerun(page, page.get_by_role("button", name="Remove 2", exact=True).click)
    expect(params).to_have_text(before)
    rerun(page, click_bar)
    expect(params).not_to_have_text(before)
    rerun(page, click_bar)
    expect(params).to_have_text(before)
    thumb.focus()
    rerun(page, lambda: [thumb.press("ArrowRight") for _ in range(20)])
    expect(page.get_by_test_id("stSliderThumbValue")).to_have_text("0.40")
    # Each press may rerun the page; the slider commits its last value after a debounce: wait for that plan.
    expect(params).to_have_text(after, timeout=30_000)
    wait_idle(page)
    expect(page.get_by_text(re.compile(r"Exports to:.*GGUF \(llama\.cpp"))).to_be_visible()
    shot(page, "03-plan-after", params)

    # 4. Prune & evaluate: a background job with a tiny perplexity budget, followed to the end
    goto_page(page, "Prune & evaluate")
    expect(page.get_by_label("Run name")).to_have_value("flap 40%")  # the plan the server built last
    page.get_by_role("spinbutton", name=re.compile(r"^Windows per dataset")).fill("2")
    page.get_by_role("spinbutton", name="Window length (tokens)").fill("16")
    page.get_by_role("spinbutton", name="Window length (tokens)").press("Tab")
    rerun(page, page.get_by_role("button", name="Start").click)
    done = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done in")
    expect(done).to_be_visible(timeout=JOB_TIMEOUT_S * 1000)
    job_id = re.search(r"[?&]job=([\w-]+)", page.url).group(1)
    assert (runs_dir / job_id / "metrics.json").is_file()
    wait_idle(page)
    shot(page, "04-run-done")

    # ... and a second tab with the job URL re-attaches to it
    other = page.context.new_page()
    other.goto(f"{url}/run?job={job_id}")
    wait_idle(other)
    expect(other.get_by_test_id("stAlertContentSuccess").filter(has_text="Done in")).to_be_visible()
    shot(other, "04-run-second-tab")
    other.close()

    # 5a. Compare: original vs pruned table
    rerun(page, page.get_by_role("link", name="Compare original and pruned").click)
    expect(page.get_by_role("heading", name="Compare")).to_be_visible()
    expect(table_row(page, "perplexity wikitext2")).to_have_count(4)  # metric, original, pruned, change
    expect(table_row(page, "parameters")).to_have_count(4)
    expect(page.get_by_text(re.compile(r"% smaller .*; perplexity \(wikitext2\) .* (worse|better)"))).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(3)  # original vs pruned, per-layer blocks, scatter
    scatter = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .map(g => ({y: g.layout.yaxis.type, names: g.data.map(t => t.name), types: g.data.map(t => t.type)}))
        .find(g => g.types.includes('scatter') && g.names.includes('original'))""")
    assert scatter["y"] == "log" and len(scatter["names"]) >= 2  # the dense point beside the run, log quality axis
    shot(page, "05-compare")
    contract = page.get_by_role("heading", name="Does it pass a quality contract?")
    expect(page.get_by_test_id("stAlertContainer").filter(has_text="Contract chat-assistant")).to_be_visible()
    shot(page, "05b-compare-contract", contract)

    # 5b. Runs & report: the HTML report downloads and carries the Plotly figures
    goto_page(page, "Runs & report")
    expect(table_row(page, job_id)).to_contain_text([job_id, "flap 40%", "done"])
    button = page.get_by_test_id("stDownloadButton").filter(has_text="HTML report, works offline")
    with page.expect_download() as download:
        button.click()
    report = tmp_path / download.value.suggested_filename
    download.value.save_as(report)
    html = report.read_text()
    assert report.name == "minillm-report-offline.html"
    assert "MINI-LLM Studio report" in html and job_id in html
    assert "Plotly.newPlot" in html and "plotly.js v" in html  # figures plus the embedded library (offline)
    assert '"plot_bgcolor":"white"' in html.replace(" ", "")  # the fixed light template (plotly_white), not the
    # server theme's placeholders, which render black
    page.wait_for_selector(IDLE)
    shot(page, "06-runs", button)


def test_a_missing_model_path_shows_an_error(page, tmp_path):
    missing = tmp_path / "no-such-model"
    use_model(page, missing)
    expect(page.get_by_test_id("stAlertContentError")).to_contain_text(f"model path {missing} does not exist")
    shot(page, "07-missing-model")


def test_ab_page_answers_a_suite_and_shows_where_the_answers_part(page, server, tiny_model_dir, tmp_path, data_root):
    from minillm_core import runs
    from tests.helpers import spec_for

    _, runs_dir = server
    evaluation = runs.eval_config(limit=2, seq_len=16, measure_speed=False, data_dir=str(data_root))
    job_id = runs.submit(spec_for(tiny_model_dir, name="ab run", evaluation=evaluation), runs_dir)
    while not runs.status(job_id, runs_dir).terminal:
        page.wait_for_timeout(300)
    assert runs.status(job_id, runs_dir).state == "done", runs.status(job_id, runs_dir).error
    goto_page(page, "A/B test")
    expect(page.get_by_text("No A/B result for this run yet")).to_be_visible()
    page.get_by_role("spinbutton", name="Prompts (0 = all)").fill("5")
    rerun(page, page.get_by_role("button", name="Run A/B").click, timeout=120)
    expect(page.get_by_role("heading", name=re.compile(r"On 5 facts prompts, \d+% of the answers are identical"))
           ).to_be_visible()
    expect(metric_value(page, "token agreement")).to_have_text(re.compile(r"\d+\.\d%"))
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(1)
    expect(page.locator("mark").first).to_be_attached()  # the side-by-side view highlights where the answers part
    shot(page, "08-ab", page.get_by_test_id("stPlotlyChart"))
    prompts = tmp_path / "mine.txt"
    prompts.write_text("the cat\na dog ran\n")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(prompts))
    rerun(page, page.get_by_role("button", name="Run A/B").click, timeout=120)
    expect(page.get_by_role("heading", name=re.compile(r"On 2 mine prompts"))).to_be_visible()
    assert len(runs.ab_results(job_id, runs_dir)) == 2
    shot(page, "09-ab-table", page.get_by_test_id("stDataFrame"))


def test_the_quick_demo_ends_on_compare(page, tiny_model_dir):
    use_model(page, tiny_model_dir)
    page.get_by_role("button", name="Run the quick demo").click()  # score, plan, run, then Compare by itself
    expect(page.get_by_role("heading", name="Compare", level=1)).to_be_visible(timeout=JOB_TIMEOUT_S * 1000)
    expect(page.get_by_text(re.compile(r"% smaller .*; perplexity \(wikitext2\)"))).to_be_visible()
    expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(re.compile("quick demo: flap 20%"))


def test_scores_survive_a_reload(page, tiny_model_dir):
    use_model(page, tiny_model_dir)
    goto_page(page, "Importance")
    rerun(page, page.get_by_role("button", name="Compute scores").click, timeout=120)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(3)
    page.reload()  # a new browser session: the model choice is back to the default ...
    wait_idle(page, 120)
    goto_page(page, "Model & data")
    use_model(page, tiny_model_dir)
    goto_page(page, "Importance")  # ... and the scores of this model and calibration come back from the server
    expect(page.get_by_text("No scores yet")).to_have_count(0)
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(3)
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Scores: flap")


@pytest.fixture(scope="module")
def cold_server(tmp_path_factory, data_root):
    """A second server no browser has visited yet."""
    tmp = tmp_path_factory.mktemp("cold")
    env = app_env(tmp / "runs", MINILLM_DATA_DIR=str(data_root))
    with streamlit_server(env, ARTIFACTS / "cold-server.log") as url:
        yield url


def test_every_page_opens_from_a_deep_link_on_a_cold_server(context, cold_server):
    for path, title in (("importance", "Importance"), ("plan", "Plan"), ("run", "Prune & evaluate"),
                        ("compare", "Compare"), ("sweep", "Sweep ratios"), ("ab", "A/B test"),
                        ("runs", "Runs & report")):
        tab = context.new_page()  # a new session that starts on this page, not on the router's first page
        tab.goto(f"{cold_server}/{path}")
        wait_idle(tab, 120)
        expect(tab.get_by_role("heading", name=title, level=1)).to_be_visible()
        expect(tab.get_by_test_id("stException")).to_have_count(0)
        tab.close()


def test_with_no_data_at_all_scoring_ends_in_heatmaps(context, tmp_path_factory, tiny_model_dir):
    """No data mirror and no Hub: Compute scores says so and offers the model's own text, which ends in heatmaps."""
    tmp = tmp_path_factory.mktemp("nodata")
    (tmp / "empty").mkdir()
    env = app_env(tmp / "runs", MINILLM_DATA_DIR=str(tmp / "empty"))
    with streamlit_server(env, ARTIFACTS / "nodata-server.log") as url:
        tab = context.new_page()
        tab.goto(url)
        wait_idle(tab, 120)
        use_model(tab, tiny_model_dir)
        goto_page(tab, "Importance")
        rerun(tab, tab.get_by_role("button", name="Compute scores").click, timeout=120)
        own_text = tab.get_by_role("button", name="Use the model's own text instead (no data set needed)")
        expect(own_text).to_be_visible()
        rerun(tab, own_text.click, timeout=180)  # one click: the model writes its text, then scores it
        expect(tab.get_by_test_id("stPlotlyChart")).to_have_count(3)
        expect(tab.get_by_text(re.compile(r"calibration tokens from the model's own text"))).to_be_visible()
        shot(tab, "10-no-data-heatmaps")
        tab.close()

"""The report of a real search, opened in headless Chromium (Debian's package) through Playwright.

Checks what a person sees: rows in rank order, rendered plotly figures, sortable table,
no console errors, and a label named ``<script>alert(1)</script>`` shown as text, never run.
A full-page screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import autotransfer
from conftest import REPO, make_sentences, write_tsv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

XSS = "<script>alert(1)</script>"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def xss_run(ray_session, tmp_path_factory, tiny_space):
    d = tmp_path_factory.mktemp("xss-data")
    relabel = {"positive": XSS, "negative": "negative"}
    for name, n, seed in (("train", 480, 1), ("dev", 80, 2), ("test", 80, 3)):
        write_tsv(d / f"{name}.tsv", [(t, relabel[l]) for t, l in make_sentences(n, seed)])
    return autotransfer.search(task="text-cls", data=d, space=tiny_space, num_samples=5, max_epochs=3,
                               evals_per_epoch=1, max_concurrent=2, seed=1, dashboard=False, min_steps=0,
                               output=tmp_path_factory.mktemp("xss-run") / "run")


def test_report_renders_ranked_rows_and_figures_without_errors(xss_run):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(Path(xss_run.report).as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5",
                                   timeout=30_000)
            figures = page.locator(".js-plotly-plot").count()
            ranks = page.eval_on_selector_all("#leaderboard tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
            scores = page.eval_on_selector_all("#leaderboard tbody tr", "rows => rows.map(r => r.cells[4].textContent)")
            body = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
            # sorting in the page: click "rank" twice -> descending
            page.click("#leaderboard th:first-child")
            page.click("#leaderboard th:first-child")
            resorted = page.eval_on_selector_all("#leaderboard tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
            page.fill("#filter", "linear_probe")
            visible = page.eval_on_selector_all("#leaderboard tbody tr",
                                                "rows => rows.filter(r => r.style.display !== 'none').length")
        finally:
            browser.close()
    assert figures >= 5
    assert ranks == [str(i) for i in range(1, len(xss_run.records) + 1)]
    numeric = [float(s) for s in scores if s.strip()]
    assert numeric == sorted(numeric, reverse=True)
    assert resorted == ranks[::-1]
    assert visible == sum(1 for r in xss_run.records if r.strategy == "linear_probe")
    assert errors == [], errors
    assert dialogs == []  # the <script> label never ran
    assert XSS in body  # ...and is shown as text
    assert (ARTIFACTS / "leaderboard.png").stat().st_size > 10_000

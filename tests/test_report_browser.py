"""The report's first screen in a real headless Chromium (Debian's /usr/bin/chromium driven by Selenium +
chromium-driver, as tests/test_browser.py drives the service page): at 1280x800, without scrolling, a reader sees
the summary figures, not a protocol table; every detail is folded and opens on a click; the page loads nothing
from anywhere. The screenshot goes to $CLIPFORGE_SCREENSHOTS (default: the test's tmp dir).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from test_browser import CHROMIUM, DRIVER  # the same browser, the same opt-out (CLIPFORGE_SKIP_BROWSER=1)
from clipforge.evaluate.report import build_report
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
WIDTH, HEIGHT = 1280, 800
KEEP = ("clipforge", "clipforge-transductive", "procrustes", "linear-probe")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """Real results whose details are long (fashion-zsl: a confusion matrix per split of each method; the
    bilingual suite: a ten-row, fifteen-column table) and two speed suites, rendered once."""
    d = tmp_path_factory.mktemp("report-browser")
    for name in ("fashion-zsl-zh.json", "tux-retrieval-zh.json", "ann.json", "embed.json"):
        shutil.copy(RESULTS / name, d / name)
    fz = json.loads((RESULTS / "fashion-zsl.json").read_text())   # four of its rows keep the test quick
    fz["results"] = [r for r in fz["results"] if r["method"] in KEEP]
    (d / "fashion-zsl.json").write_text(json.dumps(fz))
    return build_report(d, d / "report.html")


@pytest.fixture(scope="module")
def driver():
    assert os.path.exists(CHROMIUM) and os.path.exists(DRIVER), \
        "needs Debian chromium and chromium-driver: bash scripts/install.sh test (or CLIPFORGE_SKIP_BROWSER=1)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # offline: every name fails to resolve and anything that still leaves goes to a dead proxy
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    # the viewport itself is 1280x800 (the window size alone leaves it to the browser's chrome)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


BOXES = """
const r = e => { const b = e.getBoundingClientRect(); return {top: b.top, left: b.left, bottom: b.bottom,
                                                              right: b.right, width: b.width, height: b.height}; };
return {w: innerWidth, h: innerHeight, y: scrollY,
        figs: [...document.querySelectorAll('svg.summary-fig')].map(r),
        tables: [...document.querySelectorAll('table')].map(r),
        details: document.querySelectorAll('details').length,
        open: document.querySelectorAll('details[open]').length,
        resources: performance.getEntriesByType('resource').map(e => e.name)};
"""


def test_first_screen_shows_the_summary_figures(page, driver, tmp_path):
    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    box = driver.execute_script(BOXES)
    assert (box["w"], box["h"], box["y"]) == (WIDTH, HEIGHT, 0)
    figs = box["figs"]
    assert len(figs) == 5                                     # one summary figure per suite
    inside = [f for f in figs if f["top"] >= 0 and f["left"] >= 0 and f["bottom"] <= HEIGHT and f["right"] <= WIDTH
              and f["width"] > 100 and f["height"] > 60]
    assert figs[0] in inside, figs[0]                         # the first (fashion-zsl) whole and sized on screen 1
    assert len(inside) >= 3, figs                             # a row of suites at a glance, not one figure
    assert all(t["top"] >= HEIGHT for t in box["tables"])     # the tables start below the first screen
    assert box["details"] >= 10 and box["open"] == 0          # details folded by default
    assert not [u for u in box["resources"] if not u.startswith("data:")], box["resources"]
    # the first card is the clipforge default's suite, its figure has the default's bar and the ceiling line
    first = driver.find_element(By.CSS_SELECTOR, ".card")
    assert first.get_attribute("data-suite") == "fashion-zsl" and "clipforge" in first.text
    out = Path(os.environ.get("CLIPFORGE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report-first-screen.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000


def test_a_folded_detail_opens_and_its_figures_load(page, driver):
    driver.get(page.as_uri())
    section = driver.find_element(By.ID, "suite-0")
    fold = next(d for d in section.find_elements(By.TAG_NAME, "details") if d.find_elements(By.TAG_NAME, "img"))
    img = fold.find_element(By.TAG_NAME, "img")
    assert not img.is_displayed()
    summary = fold.find_element(By.TAG_NAME, "summary")
    driver.execute_script("arguments[0].scrollIntoView()", summary)
    summary.click()
    WebDriverWait(driver, 10).until(lambda d: img.is_displayed())
    assert fold.get_attribute("open") is not None
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
    method = json.loads((RESULTS / "fashion-zsl.json").read_text())["results"][0]["method"]
    assert method in summary.text                               # the fold is named after its method

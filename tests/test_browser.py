"""The page in a real headless Chromium (Debian's /usr/bin/chromium driven by Selenium + chromium-driver):
index a small captioned collection, serve it on a free loopback port, search by text and by image, classify
an upload, and check what the page shows. Screenshots go to $CLIPFORGE_SCREENSHOTS (default: the test's tmp dir).
"""
import csv
import os
import shutil
import socket
from pathlib import Path

import pytest

import useutil
from clipforge.index import ImageIndex
from clipforge.serve import ServeSettings, create_app

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Opt out explicitly (as tests/test_report.py does); a missing browser is a failure, not a silent skip.
if os.environ.get("CLIPFORGE_SKIP_BROWSER") == "1":
    pytest.skip("CLIPFORGE_SKIP_BROWSER=1", allow_module_level=True)
from selenium import webdriver  # noqa: E402

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    assert os.path.exists(CHROMIUM) and os.path.exists(DRIVER), \
        "needs Debian chromium and chromium-driver: bash scripts/install.sh test (or CLIPFORGE_SKIP_BROWSER=1)"
    import uvicorn
    root = tmp_path_factory.mktemp("browser")
    shapes = useutil.make_shapes(root / "shapes", per_class=5, seed=11)
    (root / "set" / "images").mkdir(parents=True)
    with open(root / "set" / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "caption"])
        for shape in useutil.SHAPES:
            for i in range(5):
                shutil.copy(shapes / shape / f"{i}.png", root / "set" / "images" / f"{shape}-{i}.png")
                w.writerow([f"{shape}-{i}.png", f"{shape} number {i}"])
    # The multilingual text tower, so the page's English and Chinese queries both have right answers to check.
    ImageIndex.build(root / "set" / "captions.csv", useutil.bilingual_model_dir(), root / "index", progress=False)
    port = _free_port()
    server, thread = useutil.start_uvicorn(uvicorn.Config(create_app(root / "index", ServeSettings()), host="127.0.0.1",
                                                          port=port, log_level="warning"))
    yield f"http://127.0.0.1:{port}", root
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100",
                "--lang=en-US"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _results(driver):
    return [(c.find_element(By.CLASS_NAME, "caption").text, float(c.find_element(By.CLASS_NAME, "score").text))
            for c in driver.find_elements(By.CSS_SELECTOR, "#results .result")]


def _thumbnails_loaded(driver) -> bool:
    return driver.execute_script(
        "const imgs=[...document.querySelectorAll('#results img')];"
        "return imgs.length>0 && imgs.every(i=>i.complete && i.naturalWidth>0);")


def _shot(driver, tmp_path, name) -> Path:
    out = Path(os.environ.get("CLIPFORGE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    driver.save_screenshot(str(path))
    return path


def test_search_by_text_and_image_and_classify_in_the_page(site, browser, tmp_path):
    base, root = site
    wait = WebDriverWait(browser, 30)
    browser.get(base + "/")
    wait.until(lambda d: "20 images" in d.find_element(By.ID, "info").text)

    # Text search: the page shows a grid whose best results are circles (captions are not searched: images are).
    box = browser.find_element(By.ID, "query")
    box.send_keys("a circle", Keys.ENTER)
    wait.until(lambda d: "results for “a circle”" in d.find_element(By.ID, "status").text)
    res = _results(browser)
    assert len(res) == 20
    assert all(cap.startswith("circle") for cap, _ in res[:5]), res[:6]
    assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    wait.until(_thumbnails_loaded)
    text_shot = _shot(browser, tmp_path, "browser-text-search.png")

    # A Chinese query ("a circle") goes through the same path and finds the same circles.
    box.clear()
    box.send_keys("一个圆形", Keys.ENTER)
    wait.until(lambda d: "results for “一个圆形”" in d.find_element(By.ID, "status").text)
    res = _results(browser)
    assert len(res) == 20 and all(cap.startswith("circle") for cap, _ in res[:5]), res[:6]
    wait.until(_thumbnails_loaded)
    _shot(browser, tmp_path, "browser-chinese-search.png")

    # Image search + zero-shot labels: upload a triangle from outside the index (same file content as triangle-3).
    labels = browser.find_element(By.ID, "labels")
    labels.clear()
    labels.send_keys("circle, square, triangle, line")
    upload = root / "upload.png"
    shutil.copy(root / "set" / "images" / "triangle-3.png", upload)
    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait.until(lambda d: "results for the image upload.png" in d.find_element(By.ID, "status").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 4)
    res = _results(browser)
    assert res[0][0] == "triangle number 3" and res[0][1] >= 0.999
    assert all(cap.startswith("triangle") for cap, _ in res[:5]), res[:6]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert bars[0].get_attribute("data-label") == "triangle"
    top_pct = float(bars[0].find_element(By.CLASS_NAME, "pct").text.rstrip("%"))
    assert top_pct > 50 and top_pct >= float(bars[1].find_element(By.CLASS_NAME, "pct").text.rstrip("%"))
    assert browser.find_element(By.ID, "preview").get_attribute("src").startswith("blob:")
    wait.until(_thumbnails_loaded)
    image_shot = _shot(browser, tmp_path, "browser-image-search.png")

    # The same upload against Chinese labels.
    labels.clear()
    labels.send_keys("圆形，正方形，三角形，直线")
    browser.find_element(By.ID, "classify-btn").click()
    wait.until(lambda d: [b.get_attribute("data-label") for b in d.find_elements(By.CSS_SELECTOR, "#bars .bar")][:1] == ["三角形"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 4
    _shot(browser, tmp_path, "browser-chinese-labels.png")

    # A non-image upload shows the server's message, not a broken page.
    bad = root / "notes.png"
    bad.write_text("not an image at all")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "415" in d.find_element(By.ID, "status").text)
    assert "not an image" in browser.find_element(By.ID, "status").text
    assert text_shot.stat().st_size > 10_000 and image_shot.stat().st_size > 10_000


def test_the_api_page_renders_with_the_network_off(site, tmp_path):
    """/docs in a Chromium that can reach nothing but loopback (every other name fails to resolve, and any request
    that still leaves goes to a dead proxy): Swagger UI must render the operations from the server's own assets."""
    base, _ = site
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    try:
        # the network really is off: a CDN script cannot load (FastAPI's default /docs needs one)
        driver.get(base + "/api/health")
        offline = driver.execute_async_script(
            "const done = arguments[0]; const s = document.createElement('script');"
            "s.src = 'https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js';"
            "s.onload = () => done('loaded'); s.onerror = () => done('failed'); document.head.appendChild(s);")
        assert offline == "failed"
        driver.get(base + "/docs")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")) >= 6)
        paths = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")}
        assert {"/api/search/text", "/api/search/image", "/api/classify"} <= paths, paths
        assert "clipforge" in driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
        _shot(driver, tmp_path, "browser-api-docs-offline.png")
        driver.get(base + "/redoc")
        WebDriverWait(driver, 30).until(lambda d: "/api/search/text" in d.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.quit()

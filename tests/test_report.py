"""``clipforge report``: one self-contained HTML page, checked as HTML and in real headless Chromium.

The browser test is not skipped by default: scripts/install.sh installs Debian's chromium for the test
extra. Set CLIPFORGE_SKIP_BROWSER=1 to skip it on a machine without a browser. Set
CLIPFORGE_REPORT_SCREENSHOT=path.png to keep the screenshot the test takes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipforge.evaluate.report import build_report, discover, render

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "bird"]


def _png(path: Path, seed: int, size: int = 40) -> str:
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 255, (size, size, 3)).astype(np.uint8)).save(path)
    return path.name


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A folder like a user's: a retrieval benchmark with every figure key, the real fashion-zsl.json,
    a metrics-only benchmark, and a run folder with results.json and TensorBoard logs."""
    d = tmp_path_factory.mktemp("report")
    imgs = d / "imgs"
    imgs.mkdir()
    paths = [f"imgs/{_png(imgs / f'{i}.png', i)}" for i in range(4)]
    full = {
        "method": "clipforge", "metrics": {"image_retrieval_recall@1": 0.5, "text_retrieval_recall@1": 0.6, "mr": 0.55},
        "std": {"mr": 0.02}, "wall_seconds": 12.5,
        "confusion": {"labels": LABELS, "matrix": [[5, 1, 0], [2, 4, 0], [0, 0, 6]]},
        "per_class": {"cat": 0.83, "dog": 0.67, "bird": 1.0},
        "similarity": {"rows": LABELS, "cols": ["a cat", "a dog", "a bird"],
                       "matrix": [[0.9, 0.2, 0.1], [0.3, 0.8, 0.0], [0.1, 0.2, 0.7]]},
        "examples": [
            {"direction": "text_to_image", "query": "a cat",
             "top": [{"image": paths[0], "score": 0.9, "hit": True}, {"image": paths[1], "score": 0.5, "hit": False},
                     {"image": "imgs/missing.png", "score": 0.4, "hit": False}]},
            {"direction": "image_to_text", "query": {"image": str((d / paths[2]).resolve()), "label": "dog"},
             "top": [{"text": "a dog", "score": 0.8, "hit": True}, {"text": "a cat", "score": 0.3, "hit": False}]},
        ],
        "history": [{"epoch": 0, "loss": 2.0, "val": 0.3}, {"epoch": 1, "loss": 1.2, "val": 0.5},
                    {"epoch": 2, "loss": 0.9}],
    }
    baseline = {"method": "asif", "metrics": {"image_retrieval_recall@1": 0.4, "text_retrieval_recall@1": 0.7, "mr": 0.5}}
    (d / "tux-retrieval.json").write_text(json.dumps({"suite": "tux-retrieval", "dataset": "tuxpaint", "task":
                                                      "zeroshot_retrieval", "results": [full, baseline],
                                                      "wall_seconds": 30.0, "env": {"cpu_count": 2}}))
    shutil.copy(REPO / "benchmarks" / "results" / "fashion-zsl.json", d / "fashion-zsl.json")
    (d / "plain.json").write_text(json.dumps({"suite": "plain", "results": [{"method": "clipforge",
                                                                             "metrics": {"top1": 0.9}}]}))
    (d / "not-a-benchmark.json").write_text(json.dumps({"hello": [1, 2]}))
    run = d / "runs" / "align-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"dataset": "fashion-mnist", "unseen": LABELS,
                                                  "metrics": {"unseen_top1": 0.6, "unseen_confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}))
    from torch.utils.tensorboard import SummaryWriter
    from clipforge.evaluate.report_figures import heatmap_figure
    w = SummaryWriter(str(run / "checkpoints" / "tb"))
    for step in range(1, 6):
        w.add_scalar("train/loss", 1.0 / step, step)
    w.add_figure("similarity/images_x_texts", heatmap_figure(np.eye(3), LABELS, LABELS), 5)
    w.close()
    return d


def _imgs(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_discovery_finds_benchmarks_and_runs(report_dir):
    benches, runs = discover(report_dir)
    assert sorted(p.name for p, _ in benches) == ["fashion-zsl.json", "plain.json", "tux-retrieval.json"]
    assert len(runs) == 1 and runs[0]["dir"].name == "align-1" and runs[0]["results"] and len(runs[0]["tb"]) == 1


def test_page_is_self_contained_and_renders_what_is_present(report_dir):
    page = render(report_dir)
    srcs = _imgs(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)     # nothing external
    assert "http://" not in page and "https://" not in page and "<link" not in page
    # tux-retrieval: similarity, confusion, per-class, history = 4 figures + 2 thumbnails (one missing)
    # + 1 query thumbnail; fashion-zsl: one confusion per split of every method that has them; run: confusion,
    # scalars, TB image
    fz = json.loads((report_dir / "fashion-zsl.json").read_text())
    n_conf = sum(1 for r in fz["results"] for s in r.get("per_split", []) if s.get("unseen_confusion"))
    assert n_conf >= 10
    assert len(srcs) == 4 + 3 + n_conf + 3
    assert page.count('class="thumb missing"') == 1                             # a missing file: a cell, no broken img
    for name in ("tux-retrieval", "fashion-zsl", "plain", "align-1"):
        assert name in page
    assert "&plusmn; 0.020" in page and '<td class="best">0.700' in page          # std shown, best in bold
    assert page.count('class="cand hit"') == 2 and page.count('class="cand miss"') == 3


def test_cli_writes_report_and_reports_empty_folder(report_dir, tmp_path):
    from clipforge.cli import app
    res = CliRunner().invoke(app, ["report", str(report_dir), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").stat().st_size > 10_000
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["report", str(empty)])
    assert res.exit_code == 2 and "no benchmark JSON" in res.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<img id="control-broken" src="data:image/png;base64,AAAA"><script>
window.addEventListener("load", function () {
  var imgs = [].slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.id || i.alt; });
  var p = document.createElement("pre"); p.id = "probe";
  p.textContent = JSON.stringify({n: imgs.length, bad: bad}); document.body.appendChild(p);
});</script></body>"""


@pytest.mark.skipif(os.environ.get("CLIPFORGE_SKIP_BROWSER") == "1", reason="CLIPFORGE_SKIP_BROWSER=1")
def test_every_figure_loads_in_headless_chromium(report_dir, tmp_path):
    browser = _chromium()
    assert browser, "headless Chromium is needed (bash scripts/install.sh test installs Debian's chromium)"
    page = build_report(report_dir, tmp_path / "report.html").read_text(encoding="utf-8")
    n_figures = len(_imgs(page))
    # the page plus a probe (and a deliberately broken control image, so the check is shown to catch one)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert m, dom[-2000:]
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert result["n"] == n_figures + 1
    assert result["bad"] == ["control-broken"], result    # every figure and thumbnail decoded (naturalWidth > 0)
    shot = Path(os.environ.get("CLIPFORGE_REPORT_SCREENSHOT") or tmp_path / "report.png")
    subprocess.run([browser, *flags, "--window-size=1400,3000", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        assert len(np.unique(np.asarray(im.convert("L")))) > 20   # not a blank page

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


# -- the story first: summary figures, suite order, headline metrics, folded details, bad input -----------------

from clipforge.evaluate import report_summary as rs  # noqa: E402
from clipforge.evaluate.report import scan  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_FILL, CEILING_STROKE = "#e4572e", "#2e7d32"


def _bench(suite: str, rows: list[dict], **extra) -> dict:
    return {"suite": suite, "results": rows, **extra}


def _cards(page: str) -> list[str]:
    return re.findall(r'<div class="card" data-suite="([^"]*)"', page)


@pytest.fixture(scope="module")
def story_dir(tmp_path_factory):
    """Real results (fashion-zsl, ann, embed) beside synthetic suites of every group, an unknown suite, a
    metrics-only JSON, and the kinds of broken file a long benchmark run can leave behind."""
    d = tmp_path_factory.mktemp("story")
    for name in ("ann.json", "embed.json"):
        shutil.copy(RESULTS / name, d / name)
    fz = json.loads((RESULTS / "fashion-zsl.json").read_text())       # three of its rows keep the test quick
    fz["results"] = [r for r in fz["results"] if r["method"] in ("clipforge", "procrustes", "linear-probe")]
    (d / "fashion-zsl.json").write_text(json.dumps(fz))
    folds = [{"MR": v} for v in (0.60, 0.62, 0.64)]
    (d / "tux-retrieval.json").write_text(json.dumps(_bench("tux-retrieval", [
        {"method": "clipforge", "metrics": {"MR": 0.62, "n": 3}, "per_fold": folds},
        {"method": "asif", "metrics": {"MR": 0.50}, "std": {"MR": 0.03}}])))
    (d / "zeta-new.json").write_text(json.dumps(_bench("zeta-new", [
        {"method": "clipforge", "metrics": {"count": 7, "score": 0.7, "other": 0.2}},
        {"method": "baseline", "metrics": {"count": 9, "score": 0.4}}])))
    (d / "mnist.json").write_text(json.dumps(_bench("mnist", [
        {"method": "clipforge", "metrics": {"top1": 0.95}}, {"method": "conse", "metrics": {"top1": 0.11}},
        {"method": "linear-probe", "metrics": {"top1": 0.97}, "setting": "supervised"}])))
    (d / "install-size.json").write_text(json.dumps({"task": "install-size", "model": "clipforge core",
                                                     "metrics": {"core_venv_gib": 1.45, "install_seconds": 40.0}}))
    # broken and partial files: none may crash the page, each is named with its reason
    (d / "truncated.json").write_text('{"suite": "truncated", "results": [{"method": "clipf')
    (d / "oops.json").write_text(json.dumps({"suite": "oops", "results": "not a list"}))
    (d / "partial.json").write_text(json.dumps(_bench("partial", [
        {"method": "clipforge", "metrics": {"acc": 0.8}, "std": "junk", "per_split": ["junk", {"acc": "x"}],
         "confusion": {"labels": ["a", "b"], "matrix": [[1, 2], [3]]}},
        {"metrics": {"acc": 0.9}}, {"method": "weird", "metrics": [1, 2]}])))
    (d / "nothing.json").write_text(json.dumps(_bench("nothing", [{"method": "clipforge", "metrics": {"a": "b"}}])))
    return d


@pytest.fixture(scope="module")
def story_page(story_dir):
    return render(story_dir)


def test_suites_come_in_the_order_a_reader_asks():
    names = ["zeta", "mutation", "fashion-zsl", "fashion-zsl-fresh", "transfer", "tux-retrieval-zh", "ann",
             "tux-retrieval", "mnist", "fashion-zsl-zh", "fashion-zsl-descriptions", "alpha", "embed", "train-cache",
             "fashion-zsl-selection-4-pseudo", "transfer-cifar"]
    assert sorted(names, key=rs.suite_order) == [
        "fashion-zsl-fresh", "fashion-zsl", "fashion-zsl-descriptions", "fashion-zsl-zh", "transfer", "transfer-cifar",
        "tux-retrieval", "tux-retrieval-zh", "mnist", "fashion-zsl-selection-4-pseudo",
        "train-cache", "embed", "ann", "mutation", "alpha", "zeta"]


def test_headline_metric_table_and_fallback_rule():
    fz = json.loads((RESULTS / "fashion-zsl.json").read_text())["results"]
    assert rs.headline_for("fashion-zsl", fz).metric == "unseen_top1"
    ann = json.loads((RESULTS / "ann.json").read_text())["results"]
    h = rs.headline_for("ann", ann)
    assert h.metric == "latency_p50_ms" and h.lower_is_better
    # unknown suite: a preferred name wins, else the first non-integer number (a count is not a score)
    assert rs.headline_for("new", [{"metrics": {"n": 3, "x": 0.1, "top1": 0.5}}]).metric == "top1"
    assert rs.headline_for("new", [{"metrics": {"n": 3, "score": 0.7, "b": 0.2}}]).metric == "score"
    h = rs.headline_for("new", [{"metrics": {"n": 3, "p99_latency_ms": 2.5}}])
    assert h.metric == "p99_latency_ms" and h.lower_is_better
    # a known suite whose keyed metric is missing falls back instead of drawing nothing
    assert rs.headline_for("tux-retrieval", [{"metrics": {"recall@10": 0.4}}]).metric == "recall@10"
    assert rs.headline_for("new", [{"metrics": {"name": "x"}}]) is None


def test_spread_uses_std_else_the_splits():
    fz = json.loads((RESULTS / "fashion-zsl.json").read_text())["results"][0]
    std, points = rs.spread(fz, "unseen_top1")
    assert std == fz["std"]["unseen_top1"] and points == [s["unseen_top1"] for s in fz["per_split"]]
    std, points = rs.spread({"per_fold": [{"MR": 0.5}, {"MR": 0.7}, {"x": 1}]}, "MR")
    assert points == [0.5, 0.7] and std == pytest.approx(0.1)
    assert rs.spread({"std": "junk", "per_split": ["junk"]}, "MR") == (None, [])


def test_real_fashion_zsl_summary_has_the_ceiling_as_a_line_and_the_default_first():
    fz = json.loads((RESULTS / "fashion-zsl.json").read_text())["results"]
    s = rs.summary_data("fashion-zsl", fz)
    methods = [r["method"] for r in fz]
    assert [b["label"] for b in s["bars"]] == [m for m in methods if m != "linear-probe"]
    probe = next(r for r in fz if r["method"] == "linear-probe")
    assert s["ceiling"] == ("linear probe", probe["metrics"]["unseen_top1"])
    assert [b["default"] for b in s["bars"]] == [True] + [False] * (len(s["bars"]) - 1)
    assert {b["label"] for b in s["bars"] if b["other"]} == {"clipforge-transductive"}
    assert all(len(b["points"]) == 5 and b["std"] for b in s["bars"])
    sentence = rs.takeaway(s)
    best = max((r for r in fz if r["method"] not in ("clipforge", "clipforge-transductive", "linear-probe")),
               key=lambda r: r["metrics"]["unseen_top1"])
    assert f"best other method {best['method']}" in sentence and "ceiling (linear probe)" in sentence


def test_every_real_result_file_gets_a_summary_card_in_order(tmp_path):
    for p in RESULTS.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    benches, _, skipped = scan(tmp_path)
    assert not skipped.items, skipped.items
    names = [str(d.get("suite") or p.stem) for p, d in benches]
    assert {"fashion-zsl", "tux-retrieval", "mnist", "ann", "install-size", "mutation"} <= set(names)
    for (p, d), name in zip(benches, names):
        card = rs.summary_card(name, "x", d["results"])
        assert card and card.count("<svg") == 1 and DEFAULT_FILL in card, name
        has_ceiling = any(r.get("method") == "linear-probe" and i > 0 for i, r in enumerate(d["results"])) or \
            "linear_probe_unseen_top1" in d["results"][0].get("metrics", {})
        assert has_ceiling or CEILING_STROKE not in card, name              # never a ceiling the JSON lacks
    assert {"fashion-zsl", "mnist"} <= {n for (p, d), n in zip(benches, names) if CEILING_STROKE in
                                         rs.summary_card(n, "x", d["results"])}


def test_page_opens_on_the_summary_and_folds_the_details(story_dir, story_page):
    page = story_page
    assert _cards(page) == ["fashion-zsl", "tux-retrieval", "mnist", "embed", "ann", "install-size",
                            "partial", "zeta-new"]
    first_svg, first_table = page.index('<svg class="summary-fig"'), page.index("<table")
    assert first_svg < first_table and first_svg < page.index("<details")
    assert page.index('id="suite-0"') > page.rindex('class="summary-fig"')      # every card before any section
    assert "<details open" not in page and page.count("<details>") >= 10
    spans = [(m.start(), m.end()) for m in re.finditer(r"<details>.*?</details>", page, flags=re.S)]
    imgs = [m.start() for m in re.finditer(r"<img ", page)]
    assert imgs and all(any(a < i < b for a, b in spans) for i in imgs)            # every PNG figure is folded
    fz = json.loads((story_dir / "fashion-zsl.json").read_text())
    assert len(imgs) == sum(1 for r in fz["results"] for s in r.get("per_split", []) if s.get("unseen_confusion"))
    assert "fashion-zsl split by split" not in page and "unseen_top1 split by split" in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))                                             # inline SVGs share no id
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page


def test_bad_and_partial_files_are_named_not_fatal(story_page):
    left_out = story_page[story_page.index('<div class="skipped">'):]
    page_notes = left_out[:left_out.index("</div>")]
    assert "truncated.json" in page_notes and "not readable as JSON" in page_notes
    assert "oops.json" in page_notes and "not a list" in page_notes
    assert "partial.json" in page_notes and "have no &#x27;method&#x27;" in page_notes
    assert "figures left out" in page_notes                                     # the ragged confusion matrix
    assert "nothing.json" in page_notes and "no summary figure" in page_notes
    assert "zeta-new" in _cards(story_page) and "score: <b>clipforge</b> 0.7" in story_page
    assert "core_venv_gib: <b>clipforge core</b> 1.45" in story_page           # a metrics-only JSON: one row

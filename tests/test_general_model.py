"""The general model as a new user meets it: ``clipforge train -c general`` (a list of caption sets, English and
Chinese captions, all data), then ``clipforge zeroshot MODEL --data folder:DIR --out r.json`` on a folder of
their own images, and a Chinese label. The packaged sets are swapped for two tiny ones (a stamp tree with zh
captions and an English-only CSV) so the test stays short; the recipe is the packaged config's."""
import json
import subprocess
import sys

from captionutil import draw, make_caption_set, make_stamp_folder


def _cli(*args, cwd):
    """``python -m clipforge ...`` in a fresh process, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "clipforge", *args], cwd=cwd, capture_output=True, text=True,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _cli_here(*args, monkeypatch, cwd):
    """The same command line through the same typer app in this process (no second torch start-up: the test
    must stay under a minute)."""
    from typer.testing import CliRunner
    from clipforge.cli import app
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


def test_train_general_then_zeroshot_on_a_folder_and_chinese_labels(tmp_path, monkeypatch):
    stamps = make_stamp_folder(tmp_path / "tux", copies=2)
    csv = make_caption_set(tmp_path / "shapes", copies=1)
    out = tmp_path / "general"
    _cli("train", "-c", "general", "--set", f"out={out}", "--set", f"cache_dir={tmp_path / 'cache'}",
         "--set", f"data.source=[tux-paint:{stamps}, csv:{csv}]", "--set", "train.epochs=60", "--quiet", cwd=tmp_path)
    saved = json.loads((out / "model" / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert saved["text_tower"] == "pkg:e5-small-query" and results["fold"] is None and "metrics" not in results
    assert results["n_train_images"] == 18 + 12                  # every image of both sets, nothing held out

    folder = tmp_path / "mine"
    for k, shape in enumerate(("circle", "square", "triangle")):
        (folder / shape).mkdir(parents=True)
        for i in range(3):
            draw(shape, ("red", "green", "blue")[i], 100 + 10 * k + i).save(folder / shape / f"{i}.png")
    _cli_here("zeroshot", str(out / "model"), "--data", f"folder:{folder}", "--out", str(tmp_path / "r.json"),
              monkeypatch=monkeypatch, cwd=tmp_path)
    r = json.loads((tmp_path / "r.json").read_text())
    m = r["metrics"]
    assert set(m) >= {"acc1", "acc5", "mean_per_class_recall"} and m["acc1"] > 1 / 3   # better than chance

    zh = _cli_here("classify", str(out / "model"), str(folder / "circle" / "0.png"), "--labels", "圆形,正方形,三角形",
                   "--top", "1", monkeypatch=monkeypatch, cwd=tmp_path).output
    assert "圆形" in zh and "正方形" not in zh and "三角形" not in zh       # a Chinese label list, answered in Chinese

"""One zero-shot classifier for the page, the CLI and the library; `clipforge zeroshot --data folder:DIR`;
`classify --templates`; no warning on a normal run; broken images skipped and reported."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import clipforge
import useutil
from clipforge.cli import app as cli_app
from clipforge.data.images import load_image
from clipforge.data.prompts import EN_TEMPLATES
from clipforge.evaluate.zeroshot import zero_shot_classifier
from clipforge.model.dual_encoder import DualEncoder
from clipforge.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def served():
    index_dir, coll = useutil.shared_index()
    return TestClient(create_app(index_dir, ServeSettings()), base_url="http://localhost"), coll


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Coloured shapes, one sub-folder per class; 'a_circle' is the class "a circle"; one broken file."""
    root = useutil.make_shapes(tmp_path_factory.mktemp("zs") / "shapes", per_class=4, seed=5)
    (root / "circle").rename(root / "a_circle")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _cli_classify(image: Path, labels: str, *extra) -> list:
    r = CliRunner().invoke(cli_app, ["classify", str(useutil.trained_model_dir()), str(image), "--labels", labels,
                                     "--top", "100", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])["top"]


@pytest.mark.parametrize("labels", [
    "circle, square, triangle, line",
    "a circle; the square, an apple\ntriangle",        # the service's separators and names with articles
    "圆形，正方形、三角形, line",                         # Chinese labels get Chinese templates in both
])
def test_the_page_and_the_cli_give_the_same_ranking_and_probabilities(served, labels):
    client, coll = served
    image = coll / "triangle" / "2.png"
    r = client.post("/api/classify", files={"file": ("t.png", image.read_bytes(), "image/png")}, data={"labels": labels})
    assert r.status_code == 200, r.text
    page = [(x["label"], x["probability"]) for x in r.json()["labels"]]
    cli = _cli_classify(image, labels)
    assert [n for n, _ in page] == [n for n, _ in cli]
    np.testing.assert_allclose([p for _, p in page], [p for _, p in cli], atol=1e-5)
    model = DualEncoder.from_pretrained(useutil.trained_model_dir())   # ... and the library, with the same call
    names = [n for n, _ in page]
    assert clipforge.zero_shot_classifier is zero_shot_classifier
    lib = zero_shot_classifier(model, names).classify(model.encode_image([load_image(image)[0]]), k=len(names))[0]
    np.testing.assert_allclose([dict(lib)[n] for n in names], [p for _, p in page], atol=1e-5)


def test_the_service_uses_the_chinese_template_set_for_chinese_labels(served):
    client, coll = served
    image = coll / "circle" / "1.png"
    r = client.post("/api/classify", files={"file": ("c.png", image.read_bytes(), "image/png")},
                    data={"labels": "圆形，正方形"})
    model = DualEncoder.from_pretrained(useutil.trained_model_dir())
    zs = zero_shot_classifier(model, ["圆形", "正方形"])
    assert zs.vocab[0] == "一张圆形的照片。" and len(zs.vocab) == 16
    want = dict(zs.classify(model.encode_image([load_image(image)[0]]))[0])
    got = {x["label"]: x["probability"] for x in r.json()["labels"]}
    assert got == pytest.approx(want, abs=1e-5)


def test_classify_templates_option_inline_and_file(tmp_path, served):
    _, coll = served
    image = coll / "circle" / "3.png"
    model = DualEncoder.from_pretrained(useutil.trained_model_dir())
    emb = model.encode_image([load_image(image)[0]])
    names = ["a circle", "a square", "a line"]
    mine = ["a drawing of a {}.", "a {} on white."]
    want = dict(zero_shot_classifier(model, names, mine).classify(emb)[0])
    default = dict(zero_shot_classifier(model, names).classify(emb)[0])
    assert abs(want["a circle"] - default["a circle"]) > 1e-4          # the option must make a difference
    f = tmp_path / "templates.txt"
    f.write_text("# one per line\n" + "\n".join(mine) + "\n", encoding="utf-8")
    for spec in (",".join(mine), "|".join(mine), str(f)):
        got = dict(_cli_classify(image, ",".join(names), "--templates", spec))
        assert got == pytest.approx(want, abs=1e-5), spec
    assert zero_shot_classifier(model, names, mine).vocab[:2] == ["a drawing of a circle.", "a circle on white."]
    r = CliRunner().invoke(cli_app, ["classify", str(useutil.trained_model_dir()), str(image), "--labels", "x",
                                     "--templates", "a photo"])
    assert r.exit_code == 2 and "--templates" in r.output and "{}" in r.output


def test_zeroshot_on_a_folder_writes_clip_benchmark_json_and_skips_broken_files(folder, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli_app, ["zeroshot", str(useutil.trained_model_dir()), "--data", f"folder:{folder}",
                                     "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["dataset"] == f"folder:{folder}" and res["model"] == str(useutil.trained_model_dir())
    assert res["task"] == "zeroshot_classification" and res["n_images"] == 16
    assert res["class_names"] == ["a circle", "line", "square", "triangle"]      # '_' read as a space
    assert res["templates"] == EN_TEMPLATES
    m = res["metrics"]
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(m) and m["acc5"] == 1.0    # 4 classes: all in the top 5
    assert m["acc1"] >= 0.75 and m["mean_per_class_recall"] >= 0.75, m
    assert [s["item"] for s in res["skipped"]] == [str(folder / "square" / "broken.png")]
    assert "skipped 1 file" in r.stdout and "broken.png" in r.stdout


def test_zeroshot_folder_with_templates_and_its_errors(folder, tmp_path):
    model = str(useutil.trained_model_dir())
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli_app, ["zeroshot", model, "--data", f"folder:{folder}", "--templates",
                                     "a photo of a {}.,a {}.", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["templates"] == ["a photo of a {}.", "a {}."] and res["metrics"]["acc1"] >= 0.75
    zh = tmp_path / "zh"
    shutil.copytree(folder, zh)
    for en, cn in useutil.ZH_SHAPES.items():
        src = zh / ("a_circle" if en == "circle" else en)
        src.rename(zh / cn)
    r = CliRunner().invoke(cli_app, ["zeroshot", model, "--data", f"folder:{zh}", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(res["class_names"]) == sorted(useutil.ZH_SHAPES.values()) and res["templates"][0] == "一张{}的照片。"
    for args, msg in ((["--lang", "zh"], "--labels"), (["--templates", "nope"], "--templates"),
                      (["--labels", "a,b"], "--labels has 2 names")):
        r = CliRunner().invoke(cli_app, ["zeroshot", model, "--data", f"folder:{folder}", *args])
        assert r.exit_code == 2 and msg in r.output, r.output
    dead = tmp_path / "dead"
    (dead / "cat").mkdir(parents=True)
    (dead / "cat" / "x.png").write_bytes(b"nope")
    r = CliRunner().invoke(cli_app, ["zeroshot", model, "--data", f"folder:{dead}"])
    assert r.exit_code == 2 and "no image decodes" in r.output and "x.png" in r.output
    r = CliRunner().invoke(cli_app, ["zeroshot", model, "--data", "folder:"])
    assert r.exit_code == 2 and "folder:<dir" in r.output


def _clipforge(*args) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "clipforge", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_normal_zeroshot_and_classify_run_print_no_warning(folder, tmp_path):
    """Run as a user would (a fresh process, Python's default warning filters): stderr stays empty."""
    model = str(useutil.trained_model_dir())
    p = _clipforge("zeroshot", model, "--data", f"folder:{folder}", "--out", str(tmp_path / "r.json"))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["metrics"]["acc1"] >= 0.75
    p = _clipforge("classify", model, str(folder / "triangle" / "0.png"), "--labels", "a circle,a square,a triangle")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["top"][0][0] == "a triangle"

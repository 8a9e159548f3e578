"""A tiny captioned image set (coloured shapes) in the seed "Contrastive" layout: images/ + captions.csv."""
import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: str, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    img = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(img)
    o = int(rng.randint(0, 10))
    c = COLOURS[colour]
    if shape == "circle":
        d.ellipse([8 + o, 8 + o, 50 + o // 2, 50 + o // 2], fill=c)
    elif shape == "square":
        d.rectangle([10 + o, 10 + o, 48 + o // 2, 48 + o // 2], fill=c)
    else:
        d.polygon([(32, 6 + o), (6 + o, 56), (58 - o, 56)], fill=c)
    return img


def make_caption_set(root, copies: int = 2):
    """``copies`` images of every colour x shape, each with two captions (two CSV rows)."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["filename,caption"]
    n = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for k in range(copies):
                name = f"{colour}_{shape}_{k}.png"
                draw(shape, colour, n).save(images / name)
                rows += [f"{name},a {colour} {shape}", f'{name},"a {shape}, coloured {colour}"']
                n += 1
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "captions.csv"


ZH_COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色"}
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}


def make_stamp_folder(root, copies: int = 2):
    """A tiny stamp tree in the Tux Paint layout: <name>.png + <name>.txt (English line, then zh_CN.utf8=...).
    Returns the folder to pass as ``tux-paint:<folder>`` (18 stamps with the defaults)."""
    shapes = root / "stamps" / "shapes"
    shapes.mkdir(parents=True)
    for i, (c, s) in enumerate((c, s) for c in ZH_COLOURS for s in ZH_SHAPES for _ in range(copies)):
        draw(s, c, i).save(shapes / f"{c}_{s}_{i}.png")
        (shapes / f"{c}_{s}_{i}.txt").write_text(f"A {c} {s}.\nzh_CN.utf8=一个{ZH_COLOURS[c]}的{ZH_SHAPES[s]}。\n",
                                                 encoding="utf-8")
    return root / "stamps"

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

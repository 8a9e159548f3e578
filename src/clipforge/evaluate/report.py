"""``clipforge report DIR``: benchmark JSONs and run logs -> ONE self-contained HTML page.

The page tells the story first: one summary figure per suite (``report_summary``: every method's headline
number with its spread over splits, the clipforge default highlighted, the supervised ceiling as a line), suites
in the order a reader asks (zero-shot, transfer, retrieval, bilingual, MNIST, then speed and size), and every
per-split detail (protocol, split tables, confusion matrices, examples) folded under ``<details>``.

Every figure is embedded (summary figures as inline SVG, the others as base64 PNG), and so is every thumbnail,
so the page works offline, mailed or copied alone. The page renders whatever is present and skips what is
absent; a file it cannot use is named on the page with the reason, never a crash.

What it reads under DIR (recursively):

* benchmark JSONs: any ``*.json`` holding ``{"suite", "results": [{"method", "metrics", ...}], ...}``
  (CLIP_benchmark-like; also ``dataset``, ``task``, ``model``, ``protocol``, ``wall_seconds``, ``env``).
  Each suite gets a summary card at the top (``report_summary``), then a section with its leaderboard (one row
  per method, one column per scalar metric, ``± std`` where a ``std`` dict is given, the best value per column
  in bold) in view and, folded, its protocol, its headline metric split by split and each method's figures.
  A suite file with one top-level ``metrics`` dict (install size, mutation score) counts as a one-row suite;
* run folders: a ``results.json`` with ``metrics`` (``clipforge align``) and/or TensorBoard event files
  (``tb/``): metrics table, training curves of the logged scalars, the last similarity heatmap image.

Figure data convention -- optional keys of each ``results[i]`` entry of any benchmark JSON:

* ``"confusion": {"labels": [str], "matrix": [[int]]}`` -- rows true, columns predicted;
* ``"per_class": {label: recall_float}``;
* ``"similarity": {"rows": [str], "cols": [str], "matrix": [[float]]}`` -- images x texts (rows may be
  the labels of the images);
* ``"examples": [{"direction": "text_to_image" | "image_to_text", "query": str (a text) or {"image": path,
  "label": str (optional)}, "top": [{"image": path (optional), "text": str (optional), "score": float,
  "hit": bool}]}]`` -- image paths are files on disk, absolute or relative to the JSON's folder; the page
  embeds small thumbnails (a missing file becomes a labelled empty cell, never a broken image);
* ``"history": [{"epoch": int, "loss": float, "val": float (optional)}]``.

Fashion-ZSL style ``per_split`` entries with ``unseen_confusion`` + ``unseen`` names are drawn as
per-split confusion matrices when a result has no ``confusion`` of its own.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.evaluate import report_figures as rf
from clipforge.evaluate import report_summary as rs
from clipforge.evaluate.report_discover import discover, is_benchmark, scan  # noqa: F401  (this module's face)
from clipforge.evaluate.report_summary import setting_of

LOWER_IS_BETTER = ("seconds", "loss", "latency", "_ms", "median_rank", "mean_rank", "bytes", "memory", "error")
THUMB = 64


# -- small HTML helpers ----------------------------------------------------------------------------

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v, key: str = "") -> str:
    if isinstance(v, bool) or not _num(v):
        return esc(v)
    if isinstance(v, int):
        return f"{v}"
    return f"{v:.1f}" if abs(v) >= 100 or "seconds" in key else f"{v:.3f}"


def figure(uri: str, caption: str, cls: str = "fig") -> str:
    return (f'<figure class="{cls}"><img class="figure-img" src="{uri}" alt="{esc(caption)}">'
            f'<figcaption>{esc(caption)}</figcaption></figure>')


def thumbnail(path: str | None, base: Path, label: str = "") -> str:
    """An <img> of the file at ``path`` (relative to ``base``), or a placeholder cell when it cannot be read."""
    if path:
        p = Path(path)
        p = p if p.is_absolute() else base / p
        try:
            from PIL import Image
            with Image.open(p) as im:
                im = im.convert("RGBA")
                if im.width < THUMB and im.height < THUMB:  # tiny digits: scale up, crisp
                    k = max(1, THUMB // max(im.width, im.height))
                    im = im.resize((im.width * k, im.height * k), Image.NEAREST)
                else:
                    im.thumbnail((THUMB * 2, THUMB * 2))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
            uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            return f'<img class="thumb" src="{uri}" alt="{esc(label or p.name)}">'
        except (OSError, ValueError):
            pass
    return f'<div class="thumb missing" title="{esc(path or "")}">no image</div>'


# -- sections -----------------------------------------------------------------------------------------

def leaderboard(results: list[dict]) -> str:
    """Methods side by side. Best values are marked among the inductive rows only; transductive and supervised
    rows follow them with their setting named, so a number that used the test images never looks like the winner."""
    keys: list[str] = []
    for r in results:
        for k, v in (r.get("metrics") or {}).items():
            if _num(v) and k not in keys:
                keys.append(k)
    extra = [k for k in ("wall_seconds", "train_seconds") if any(_num(r.get(k)) for r in results)]
    inductive = [r for r in results if setting_of(r) == "inductive"]
    others = [r for r in results if setting_of(r) != "inductive"]
    best = {}
    for k in keys:
        vals = [r["metrics"][k] for r in inductive if _num((r.get("metrics") or {}).get(k))]
        if vals and not all(isinstance(v, int) for v in vals):  # counts are not scores
            best[k] = min(vals) if any(t in k for t in LOWER_IS_BETTER) else max(vals)
    show_setting = bool(others)
    head = "".join(f"<th>{esc(k)}</th>" for k in ["method", *keys, *extra, *(["setting"] if show_setting else [])])
    rows = []
    for r in [*inductive, *others]:
        is_inductive = setting_of(r) == "inductive"
        m, std = r.get("metrics") or {}, r.get("std") or {}
        cells = [f'<td class="method">{esc(r["method"])}</td>']
        for k in keys:
            v = m.get(k)
            txt = fmt(v) if v is not None else "&ndash;"
            if _num(std.get(k)):
                txt += f' <span class="std">&plusmn; {std[k]:.3f}</span>'
            b = is_inductive and _num(v) and k in best and v == best[k] and len(inductive) > 1
            cells.append(f'<td class="{"best" if b else ""}">{txt}</td>')
        cells += [f"<td>{fmt(r.get(k), k) if r.get(k) is not None else '&ndash;'}</td>" for k in extra]
        if show_setting:
            cells.append(f'<td class="setting">{esc(setting_of(r))}</td>')
        rows.append(f'<tr class="{"" if is_inductive else "other-setting"}">' + "".join(cells) + "</tr>")
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def examples_html(examples: list[dict], base: Path) -> str:
    out = []
    for ex in examples:
        q = ex.get("query")
        if isinstance(q, dict):
            qcell = thumbnail(q.get("image"), base, q.get("label", "")) + \
                (f'<div class="cap">true: {esc(q["label"])}</div>' if q.get("label") else "")
        else:
            qcell = f'<div class="qtext">&ldquo;{esc(q)}&rdquo;</div>'
        cells = []
        for rank, t in enumerate(ex.get("top") or [], 1):
            mark = "hit" if t.get("hit") else "miss"
            body = thumbnail(t["image"], base, t.get("text", "")) if t.get("image") else ""
            if t.get("text"):
                body += f'<div class="ttext">{esc(t["text"])}</div>'
            score = f'{t["score"]:.3f}' if _num(t.get("score")) else ""
            sign = "&#10003;" if t.get("hit") else "&#10007;"
            cells.append(f'<div class="cand {mark}"><div class="rank">#{rank} {sign} {score}</div>{body}</div>')
        arrow = "text &rarr; image" if ex.get("direction") == "text_to_image" else "image &rarr; text"
        out.append(f'<div class="example"><div class="query"><div class="dir">{arrow}</div>{qcell}</div>'
                   f'<div class="arrow">&rarr;</div>{"".join(cells)}</div>')
    return '<div class="examples">' + "".join(out) + "</div>"


def result_figures(r: dict, base: Path) -> str:
    """Every figure the result carries, in a fixed order; absent keys are skipped."""
    name, parts = r["method"], []
    sim = r.get("similarity")
    if isinstance(sim, dict) and sim.get("matrix"):
        parts.append(figure(rf.png_data_uri(rf.heatmap_figure(sim["matrix"], sim.get("rows", []), sim.get("cols", []),
                                                              f"{name}: similarity, images x texts")),
                            "similarity matrix (images x texts; the best text of each image is outlined)"))
    conf = r.get("confusion")
    if isinstance(conf, dict) and conf.get("matrix"):
        parts.append(figure(rf.png_data_uri(rf.confusion_figure(conf["matrix"], conf.get("labels", []),
                                                                f"{name}: confusion")), "confusion matrix"))
    elif isinstance(r.get("per_split"), list):
        for i, s in enumerate(r["per_split"]):
            if isinstance(s, dict) and s.get("unseen_confusion") and s.get("unseen"):
                parts.append(figure(rf.png_data_uri(rf.confusion_figure(
                    s["unseen_confusion"], s["unseen"], f"{name}: split {i}, unseen classes")),
                    f"split {i}: confusion among the unseen classes", "fig small"))
    if isinstance(r.get("per_class"), dict) and r["per_class"]:
        parts.append(figure(rf.png_data_uri(rf.per_class_figure(r["per_class"], f"{name}: per-class recall")),
                            "per-class recall"))
    if isinstance(r.get("history"), list) and r["history"]:
        parts.append(figure(rf.png_data_uri(rf.history_figure(r["history"], f"{name}: training")),
                            "training curve (loss; validation metric where recorded)"))
    out = f'<div class="figs">{"".join(parts)}</div>' if parts else ""
    if isinstance(r.get("examples"), list) and r["examples"]:
        out += f"<h4>retrieval examples: {esc(name)}</h4>" + examples_html(r["examples"], base)
    return out


def meta_table(data: dict, skip=("results", "env", "protocol")) -> str:
    rows = [(k, v) for k, v in data.items() if k not in skip and not isinstance(v, (dict, list))]
    proto = data.get("protocol")
    if isinstance(proto, dict):
        rows += [(f"protocol.{k}", v if not isinstance(v, (dict, list)) else json.dumps(v, ensure_ascii=False))
                 for k, v in proto.items()]
    env = data.get("env")
    if isinstance(env, dict):
        bits = [env.get("platform"), env.get("python") and f"Python {env['python']}",
                env.get("cpu_count") and f"{env['cpu_count']} CPUs",
                env.get("torch_threads") and f"torch threads {env['torch_threads']}",
                ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())]
        known = ("platform", "python", "cpu_count", "torch_threads", "versions")
        bits += [f"{k}: {json.dumps(v)}" for k, v in env.items() if k not in known]
        rows.append(("env", "; ".join(str(b) for b in bits if b)))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v, k) if _num(v) else esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


REPORT_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError)  # what an odd JSON value can raise


def fold(summary: str, body: str) -> str:
    """A closed ``<details>``: per-split detail is one click away, never in the way of the story."""
    return f'<details><summary>{summary}</summary><div class="fold">{body}</div></details>' if body else ""


def suite_section(path: Path, data: dict, anchor: str, skipped=None) -> str:
    """The suite's leaderboard in view; its protocol, per-split table and each method's figures folded."""
    title = data.get("suite") or path.stem
    results = data["results"]
    parts = [f'<section id="{anchor}"><h2>{esc(title)} <small>{esc(path.name)}</small></h2>',
             leaderboard(results) if results else "<p>no results</p>",
             fold("protocol and environment", meta_table(data))]
    h = rs.headline_for(str(title), results)
    if h:
        parts.append(fold(f"{esc(h.metric)} split by split", rs.split_table(results, h.metric)))
    for r in results:
        try:
            figs = result_figures(r, path.parent)
        except REPORT_ERRORS as e:  # one malformed figure key must not cost the suite its page
            if skipped is not None:
                skipped.add(f"{path} ({r['method']})", f"figures left out: {type(e).__name__}: {e}")
            continue
        if figs:
            n = figs.count("<figure") + figs.count('class="example"')
            parts.append(fold(f'{esc(r["method"])} <small>{n} figure(s)</small>', figs))
    parts.append("</section>")
    return "".join(parts)


def read_tensorboard(tb_dir: Path) -> tuple[dict, list[bytes]]:
    """Scalars (tag -> [(step, value)]) and the encoded PNGs of the last logged image of each image tag."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return {}, []
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 1})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags.get("scalars", [])}
    images = [acc.Images(t)[-1].encoded_image_string for t in tags.get("images", []) if acc.Images(t)]
    return scalars, images


def run_section(run: dict, root: Path, anchor: str) -> str:
    d = run["dir"]
    rel = d.relative_to(root) if d != root and root in d.parents else Path(d.name or ".")
    parts = [f'<section id="{anchor}"><h2>run <small>{esc(rel)}</small></h2>']
    res = run.get("results")
    if res:
        parts.append(meta_table({k: v for k, v in res.items() if k not in ("config", "metrics")}))
        fake = {"method": str(rel), "metrics": res["metrics"]}
        parts.append(leaderboard([fake]))
        m = res["metrics"]
        if m.get("unseen_confusion") and res.get("unseen"):
            parts.append('<div class="figs">' + figure(rf.png_data_uri(rf.confusion_figure(
                m["unseen_confusion"], res["unseen"], "confusion among the unseen classes")), "confusion matrix") + "</div>")
    for tb in run["tb"]:
        scalars, images = read_tensorboard(tb)
        figs = []
        if scalars:
            figs.append(figure(rf.png_data_uri(rf.scalars_figure(scalars, f"TensorBoard: {tb.relative_to(root)}")),
                               "training curves (TensorBoard scalars)", "fig wide"))
        for png in images:
            figs.append(figure("data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                               "last logged similarity heatmap (images x texts)"))
        if figs:
            parts.append('<div class="figs">' + "".join(figs) + "</div>")
    parts.append("</section>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:8px 28px;display:flex;align-items:baseline;gap:18px}
header h1{margin:0;font-size:20px}header p{margin:0;color:#c8d3df;font-size:12px}main{padding:4px 28px 40px}
section.summary{padding:6px 14px;margin:8px 0}.summary h2{margin:4px 0;font-size:18px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:8px 14px;align-items:start}
.card{border:1px solid #eee;border-radius:6px;padding:4px 8px}.card h3{margin:2px 0;font-size:14px}
.card h3 small{color:#888;font-weight:normal;font-size:11px}.card a{color:inherit;text-decoration:none}
svg.summary-fig{width:100%;height:auto;display:block}.takeaway{font-size:12px;margin:2px 0 4px;color:#333}
.skipped{font-size:12px;color:#8a4b00;margin:8px 0}.skipped ul{margin:2px 0}
details{margin:6px 0}summary{cursor:pointer;font-weight:600;font-size:14px;color:#1f4e79}
summary small{color:#888;font-weight:normal}.fold{padding:4px 0 4px 14px}
nav{font-size:13px;margin:10px 0}nav a{margin-right:14px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 18px;margin:16px 0}
h2 small{color:#888;font-weight:normal;font-size:13px}h3{margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f1f4f7}td.method{text-align:left;font-weight:600}td.best{font-weight:700;background:#e8f6e8}tr.other-setting td{color:#555;font-style:italic}td.setting{text-align:left;font-size:12px}
table.meta th{text-align:left;font-weight:600}table.meta td{text-align:left;max-width:900px;word-break:break-word}
.std{color:#888;font-size:11px}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;border:1px solid #eee;padding:4px;background:#fff}figure img{max-width:640px;display:block}
figure.small img{max-width:300px}figure.wide img{max-width:1000px}figcaption{font-size:11px;color:#666;max-width:560px}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:8px 24px}
.example{display:flex;align-items:center;gap:6px}.query{width:150px;font-size:12px;text-align:center}.dir{color:#888;font-size:10px}.qtext{font-style:italic}
.arrow{color:#aaa;font-size:18px}.cand{border:3px solid #ccc;border-radius:4px;padding:2px;text-align:center;min-width:70px}
.cand.hit{border-color:#2e9e44}.cand.miss{border-color:#d9534f}.rank{font-size:10px;color:#444}
.thumb{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;display:block;margin:auto;background:#000}
.thumb.missing{background:#eee;color:#999;font-size:10px;line-height:64px}.ttext,.cap{font-size:11px;max-width:140px}
"""


def summary_section(cards: list[str], skipped) -> str:
    notes = "".join(f"<li><code>{esc(i)}</code>: {esc(r)}</li>" for i, r in skipped.items)
    return ('<section id="summary" class="summary"><h2>Summary <small>per suite: each method\'s headline number '
            '&plusmn; spread over splits (dots: single splits); the clipforge default in orange; ceiling dashed'
            '</small></h2>'
            f'<div class="cards">{"".join(cards)}</div>'
            + (f'<div class="skipped"><b>left out</b> ({len(skipped)}):<ul>{notes}</ul></div>' if notes else "")
            + "</section>")


def render(directory: str | Path, title: str = "clipforge report") -> str:
    root = Path(directory)
    if not root.is_dir():
        raise ClipforgeError(f"report: '{root}' is not a folder")
    benches, runs, skipped = scan(root)
    if not benches and not runs:
        raise ClipforgeError(f"report: no benchmark JSON (with 'results') and no run logs under '{root}'")
    benches.sort(key=lambda b: rs.suite_order(str(b[1].get("suite") or b[0].stem)) + (str(b[0]),))
    cards, sections, nav = [], [], []
    for i, (path, data) in enumerate(benches):
        name = str(data.get("suite") or path.stem)
        try:
            card = rs.summary_card(name, f"suite-{i}", data["results"])
            section = suite_section(path, data, f"suite-{i}", skipped)
        except REPORT_ERRORS as e:
            skipped.add(path, f"suite left out: {type(e).__name__}: {e}")
            continue
        if card is None:
            skipped.add(path, "no summary figure: no row has a number to plot")
        else:
            cards.append(card)
        sections.append(section)
        nav.append(f'<a href="#suite-{i}">{esc(name)}</a>')
    for i, run in enumerate(runs):
        sections.append(run_section(run, root, f"run-{i}"))
        nav.append(f'<a href="#run-{i}">run {esc(run["dir"].name)}</a>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><h1>{esc(title)}</h1><p>{len(benches)} benchmark file(s), {len(runs)} run(s) from '
            f'{esc(root.resolve())}</p></header><main>{summary_section(cards, skipped)}'
            f'<nav>details by suite: {"".join(nav)}</nav>{"".join(sections)}</main></body></html>')


def build_report(directory: str | Path, out: str | Path | None = None, title: str = "clipforge report") -> Path:
    """Write the page (default ``DIR/report.html``) atomically and return its path."""
    page = render(directory, title)
    path = Path(out) if out else Path(directory) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

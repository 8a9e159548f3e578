"""Matplotlib figures of the HTML report (and of TensorBoard image logs), each returned as a Figure.

``png_data_uri(fig)`` turns one into a ``data:image/png;base64,...`` string and closes it, so a page that
embeds it needs no other file.
"""
from __future__ import annotations

import base64
import io

import numpy as np

from clipforge.util.extras import require


def _plt():
    matplotlib = require("matplotlib", "report", "the report's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png_data_uri(fig, dpi: int = 100) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap_figure(matrix, rows: list[str], cols: list[str], title: str = "", cmap: str = "viridis"):
    """An images x texts similarity matrix (rows: images, columns: texts)."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    h = min(14.0, max(2.6, 0.2 * len(rows) + 1.4))
    w = min(14.0, max(3.6, 0.36 * len(cols) + 2.4))
    fig, ax = plt.subplots(figsize=(w, h))
    im = ax.imshow(m, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), [str(c)[:28] for c in cols], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [str(r)[:28] for r in rows], fontsize=max(4, 8 - len(rows) // 20))
    ax.set_xlabel("texts", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    if len(rows) <= 60 and len(cols) <= 30:  # the best text of each image, marked
        for i, j in enumerate(m.argmax(1)):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=1.0))
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, labels: list[str], title: str = ""):
    """Counts, coloured by the fraction of each true class (row); the diagonal is what was right."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(labels)
    size = min(8.0, max(3.0, 0.34 * n + 1.6))
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    short = [str(lab)[:16] for lab in labels]
    ax.set_xticks(range(n), short, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6 if n > 10 else 7,
                            color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="fraction of true class")
    fig.tight_layout()
    return fig


def per_class_figure(per_class: dict, title: str = ""):
    """Recall per class as horizontal bars, the mean as a dashed line."""
    plt = _plt()
    labels = list(per_class)
    vals = np.array([float(per_class[k]) for k in labels])
    fig, ax = plt.subplots(figsize=(5.2, min(12.0, max(2.2, 0.26 * len(labels) + 1.0))))
    colors = plt.cm.RdYlGn(np.clip((vals - 0.5) * 2, 0, 1) * 0.85 + 0.075)
    ax.barh(range(len(labels)), vals, color=colors, edgecolor="#555", linewidth=0.4)
    ax.set_yticks(range(len(labels)), [str(lab)[:24] for lab in labels], fontsize=7)
    ax.invert_yaxis()
    # when every class is near 1, a 0..1 axis shows ten equal bars: start the axis near the lowest recall
    lo = float(np.floor((vals.min() - 0.01) * 50) / 50) if len(vals) and vals.min() > 0.8 else 0.0
    ax.set_xlim(lo, 1.0 + (1.0 - lo) * 0.08)
    ax.axvline(vals.mean(), color="#333", ls="--", lw=0.8)
    for i, v in enumerate(vals):
        ax.text(min(v, 1.0) + (1.0 - lo) * 0.01, i, f"{v:.3f}", va="center", fontsize=6)
    ax.set_xlabel(f"recall (mean {vals.mean():.3f})" + (f"; axis starts at {lo:.2f}" if lo else ""), fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def history_figure(history: list[dict], title: str = "", val_label: str = "val"):
    """Training loss per epoch (left axis) and the validation metric when recorded (right axis)."""
    plt = _plt()
    ep = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    loss = [h.get("loss") for h in history]
    ax.plot(ep, loss, "-o", ms=2.5, color="#1f77b4", label="train loss")
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("loss", fontsize=8, color="#1f77b4")
    val = [(e, h["val"]) for e, h in zip(ep, history) if h.get("val") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "-s", ms=2.5, color="#d62728", label=val_label)
        ax2.set_ylabel(val_label, fontsize=8, color="#d62728")
        ax2.tick_params(labelsize=7)
    ax.tick_params(labelsize=7)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def scalars_figure(series: dict[str, list[tuple[int, float]]], title: str = ""):
    """TensorBoard scalars (tag -> [(step, value)]), one panel per tag group (``lr/a`` and ``lr/b`` share one)."""
    plt = _plt()
    groups: dict[str, list[str]] = {}
    for tag in series:
        groups.setdefault(tag.split("/")[0] if "/" in tag else tag, []).append(tag)
    n = len(groups)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols + 0.4, 2.6 * rows), squeeze=False)
    for ax, (group, tags) in zip(axes.flat, groups.items()):
        for tag in tags:
            pts = series[tag]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.0, label=tag.split("/", 1)[-1])
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        if len(tags) > 1:
            ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def summary_figure(bars: list[dict], metric: str, title: str = "", ceiling: tuple[str, float] | None = None,
                   lower_is_better: bool = False):
    """One suite at a glance: each method's headline value as a horizontal bar, the spread over splits or folds
    as an error bar (``std``) with the single splits as dots, the clipforge default (the first bar) in a colour of
    its own, rows that used more than the inductive setting hatched, and the supervised ceiling as a dashed line.

    ``bars``: ``[{"label", "value", "std" (or None), "points": [float], "default": bool, "other": bool,
    "note": str (optional, e.g. the recall that a latency bought)}]``.
    Horizontal bars keep long method names readable; a metric that spans more than 50x (latencies) gets a log axis.
    """
    plt = _plt()
    n = len(bars)
    vals = np.array([b["value"] for b in bars], dtype=float)
    fig, ax = plt.subplots(figsize=(4.6, min(5.2, 0.24 * n + 0.95)))
    colors = ["#e4572e" if b["default"] else "#5b7fa6" for b in bars]
    ax.barh(range(n), vals, color=colors, edgecolor="#333", linewidth=0.4, height=0.7)
    for i, b in enumerate(bars):
        if b.get("other"):
            ax.barh(i, vals[i], color="none", edgecolor="#fff", hatch="///", linewidth=0, height=0.7)
        if b.get("std"):
            ax.errorbar(vals[i], i, xerr=b["std"], fmt="none", ecolor="#222", elinewidth=0.9, capsize=2.5)
        pts = [p for p in b.get("points") or [] if np.isfinite(p)]
        if len(pts) > 1:
            ax.plot(pts, [i] * len(pts), "o", ms=2.2, color="#111", alpha=0.55)
    everything = [*vals, *(p for b in bars for p in b.get("points") or []),
                  *([ceiling[1]] if ceiling else []), *(v + (b.get("std") or 0) for v, b in zip(vals, bars))]
    pos = [v for v in everything if np.isfinite(v) and v > 0]
    log = len(pos) == len(everything) and min(pos) > 0 and max(pos) / min(pos) > 50
    if log:
        ax.set_xscale("log")
    else:
        room = 1.45 if any(b.get("note") for b in bars) else 1.22  # space for the numbers right of the bars
        ax.set_xlim(min(0.0, *everything), max(everything) * room if max(everything) > 0 else 1.0)
    if ceiling:
        ax.axvline(ceiling[1], color="#2e7d32", ls="--", lw=1.2)
        ax.text(ceiling[1], -0.75, f" {ceiling[0]} {ceiling[1]:.3g}", color="#2e7d32", fontsize=7, va="bottom",
                ha="right" if not log and ceiling[1] > 0.7 * ax.get_xlim()[1] else "left")
    for i, b in enumerate(bars):  # the number just right of the bar, its error bar and its dots
        txt = f"{b['value']:.3g}" + (f" ± {b['std']:.2g}" if b.get("std") else "") + (
            f"  ({b['note']})" if b.get("note") else "")
        x = max([vals[i] + (b.get("std") or 0), *[p for p in b.get("points") or [] if np.isfinite(p)]])
        ax.text(x, i, "  " + txt, va="center", fontsize=7, color="#111",
                fontweight="bold" if b["default"] else "normal")
    ax.set_yticks(range(n), [str(b["label"])[:34] for b in bars], fontsize=7.5)
    for lab, b in zip(ax.get_yticklabels(), bars):
        if b["default"]:
            lab.set_fontweight("bold")
            lab.set_color("#b23a17")
    ax.set_ylim(n - 0.45, -1.0 if ceiling else -0.6)
    ax.set_xlabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def svg_inline(fig, prefix: str) -> str:
    """The figure as an ``<svg>`` element to paste into HTML (text stays text, so it is searchable and sharp).

    The XML prolog, DOCTYPE and metadata are dropped (they carry URLs, and the page must name no address), the
    namespace declarations too (the HTML parser puts ``<svg>`` in its namespace by itself), and every id gets
    ``prefix`` so that several figures on one page never share an id.
    """
    import re
    plt = _plt()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return re.sub(r'(\bid="|href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)

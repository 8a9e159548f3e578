"""The story first: the order of the suites on the report page, one headline metric per suite, and the summary
card (figure + one sentence) that answers "how good is the default, against what?" before any table.

Order is the order a reader asks in: does zero-shot work on classes nobody tuned on (the fresh splits), then on
the development splits and their variants, does it transfer to other data, does retrieval work, in Chinese too,
on digits, why the settings are what they are (model selection), and only then how fast and how big it is. A
suite this table does not know comes last (alphabetical) and gets its headline from :func:`fallback_metric`.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

from clipforge.evaluate import report_figures as rf

# (group title, suite names in order, prefixes that join the group after the named suites)
GROUPS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("zero-shot, fresh splits", ("fashion-zsl-fresh",), ("fashion-zsl-fresh",)),
    ("zero-shot, development splits", ("fashion-zsl", "fashion-zsl-descriptions", "fashion-zsl-zh"), ("fashion-zsl",)),
    ("transfer", ("transfer",), ("transfer",)),
    ("retrieval", ("tux-retrieval",), ("tux-retrieval",)),
    ("bilingual retrieval", ("tux-retrieval-zh",), ("tux-retrieval-zh",)),
    ("MNIST", ("mnist",), ("mnist",)),
    ("model selection (development splits)", ("fashion-zsl-selection",), ("fashion-zsl-selection",)),
    ("speed and size", ("train-cache", "embed", "serve", "ann", "scale", "install-size", "mutation"), ()),
]
OTHER_GROUP = "other suites"


@dataclass(frozen=True)
class Headline:
    """The one number a suite is summarised by. ``ceiling_method``: a row drawn as a line, not a bar (it used
    labels the others did not); ``ceiling_metric``: where the first row carries the ceiling as a metric instead."""
    metric: str
    lower_is_better: bool = False
    ceiling_method: str | None = None
    ceiling_metric: str | None = None
    ceiling_label: str = "linear probe"
    note_metric: str | None = None  # a second number printed beside each bar (what a latency bought)


ZSL = Headline("unseen_top1", ceiling_method="linear-probe", ceiling_metric="linear_probe_unseen_top1")
HEADLINES: dict[str, Headline] = {
    "fashion-zsl-fresh": ZSL,
    "fashion-zsl": ZSL,
    "fashion-zsl-descriptions": ZSL,
    "fashion-zsl-zh": Headline("unseen_top1_zh"),
    "fashion-zsl-selection": Headline("pseudo_unseen_top1"),
    "fashion-zsl-selection-4-pseudo": Headline("pseudo_unseen_top1"),
    "transfer": ZSL,
    "tux-retrieval": Headline("MR"),
    "tux-retrieval-zh": Headline("MR_zh"),
    "mnist": Headline("top1", ceiling_method="linear-probe"),
    "train-cache": Headline("seconds_per_epoch", lower_is_better=True, note_metric="MR"),
    "embed": Headline("images_per_second"),
    "serve": Headline("requests_per_second"),
    "ann": Headline("latency_p50_ms", lower_is_better=True, note_metric="recall@10"),
    "scale": Headline("images_per_second"),
    "install-size": Headline("core_venv_gib", lower_is_better=True),
    "mutation": Headline("survived_fraction", lower_is_better=True),
}
# The fallback's preference: the names benchmarks give their main number, most telling first.
PREFERRED = ("unseen_top1", "MR", "mr", "top1", "accuracy", "acc1", "recall@10", "images_per_second",
             "requests_per_second", "seconds")
LOWER_HINTS = ("seconds", "loss", "latency", "_ms", "median_rank", "mean_rank", "bytes", "memory", "error",
               "_gib", "_mib", "_mb", "survived")
SPLIT_KEYS = ("per_split", "per_fold", "per_pseudo_split")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def suite_order(name: str) -> tuple[int, int, str]:
    """Sort key: (group, place in the group, name); unknown suites after every group, alphabetical."""
    for g, (_, names, _) in enumerate(GROUPS):
        if name in names:
            return g, names.index(name), name
    # else the group of the longest prefix it starts with (fashion-zsl-selection-x: selection, not development)
    hits = [(len(p), g) for g, (_, _, prefixes) in enumerate(GROUPS) for p in prefixes if name.startswith(p)]
    if hits:
        g = max(hits)[1]
        return g, len(GROUPS[g][1]), name
    return len(GROUPS), 0, name


def group_title(name: str) -> str:
    g = suite_order(name)[0]
    return GROUPS[g][0] if g < len(GROUPS) else OTHER_GROUP


def metrics_of(r: dict) -> dict:
    m = r.get("metrics")
    return m if isinstance(m, dict) else {}


def fallback_metric(results: list[dict]) -> str | None:
    """For a suite the table does not know (or whose keyed metric is missing): the first PREFERRED name the default
    row reports, else the default row's first non-integer number (a count is not a score), else its first number."""
    first = metrics_of(results[0]) if results else {}
    nums = [k for k, v in first.items() if _num(v)]
    for k in PREFERRED:
        if k in nums:
            return k
    floats = [k for k in nums if isinstance(first[k], float)]
    return (floats or nums or [None])[0]


def headline_for(name: str, results: list[dict]) -> Headline | None:
    h = HEADLINES.get(name)
    if h and results and _num(metrics_of(results[0]).get(h.metric)):
        return h
    key = fallback_metric(results)
    if key is None:
        return None
    return Headline(key, lower_is_better=any(t in key for t in LOWER_HINTS),
                    ceiling_method=h.ceiling_method if h else "linear-probe")


def spread(r: dict, metric: str) -> tuple[float | None, list[float]]:
    """(std, per-split values): the row's ``std`` when given, else the population std of its per-split/per-fold
    values (as the benchmarks compute theirs); the values themselves are drawn as dots."""
    points: list[float] = []
    for key in SPLIT_KEYS:
        if isinstance(r.get(key), list):
            points = [float(s[metric]) for s in r[key] if isinstance(s, dict) and _num(s.get(metric))]
            if points:
                break
    std = (r.get("std") or {}).get(metric) if isinstance(r.get("std"), dict) else None
    if not _num(std):
        std = float(np.std(points)) if len(points) > 1 else None
    return (float(std) if std else None), points


def setting_of(r: dict) -> str:
    """A row's setting: "inductive" unless the row or its first split says otherwise (transductive, supervised)."""
    splits = r.get("per_split") if isinstance(r.get("per_split"), list) else []
    first = splits[0] if splits and isinstance(splits[0], dict) else {}
    return str(r.get("setting") or first.get("setting", "inductive"))


def summary_data(name: str, results: list[dict]) -> dict | None:
    """Bars, ceiling and headline of one suite, or None when no row has the headline number."""
    h = headline_for(name, results)
    if h is None:
        return None
    bars, ceiling = [], None
    for i, r in enumerate(results):
        v = metrics_of(r).get(h.metric)
        if h.ceiling_method and r.get("method") == h.ceiling_method and i > 0:
            if _num(v):
                ceiling = (h.ceiling_label, float(v))
            continue
        if not _num(v):
            continue
        std, points = spread(r, h.metric)
        note = metrics_of(r).get(h.note_metric) if h.note_metric else None
        bars.append({"label": str(r.get("method")), "value": float(v), "std": std, "points": points,
                     "default": i == 0, "other": setting_of(r) != "inductive",
                     "note": f"{h.note_metric} {note:.3g}" if _num(note) else None})
    if ceiling is None and h.ceiling_metric and results and _num(metrics_of(results[0]).get(h.ceiling_metric)):
        ceiling = (h.ceiling_label, float(metrics_of(results[0])[h.ceiling_metric]))
    if not bars:
        return None
    return {"headline": h, "bars": bars, "ceiling": ceiling}


def takeaway(s: dict) -> str:
    """One sentence (HTML): the default's number, the best other inductive method, the ceiling."""
    h, bars, esc = s["headline"], s["bars"], html.escape
    fmt = lambda b: (f"{b['value']:.3g}" + (f" &plusmn; {b['std']:.2g}" if b.get("std") else "")  # noqa: E731
                     + (f" ({esc(b['note'])})" if b.get("note") else ""))
    parts = []
    default = next((b for b in bars if b["default"]), None)
    if default:
        parts.append(f"<b>{esc(default['label'])}</b> {fmt(default)}")
    rivals = [b for b in bars if not b["default"] and not b["other"]]
    if rivals:
        best = (min if h.lower_is_better else max)(rivals, key=lambda b: b["value"])
        parts.append(f"best other method {esc(best['label'])} {fmt(best)}")
    if s["ceiling"]:
        parts.append(f"ceiling ({esc(s['ceiling'][0])}) {s['ceiling'][1]:.3g}")
    return f'<p class="takeaway">{esc(h.metric)}: ' + "; ".join(parts) + "</p>"


def summary_card(name: str, anchor: str, results: list[dict]) -> str | None:
    """The suite's card for the top of the page (an inline SVG figure and its sentence), or None."""
    s = summary_data(name, results)
    if s is None:
        return None
    h = s["headline"]
    fig = rf.summary_figure(s["bars"], h.metric, "", s["ceiling"], h.lower_is_better)
    svg = rf.svg_inline(fig, f"sum-{anchor}").replace(
        "<svg ", f'<svg class="summary-fig" role="img" aria-label="{html.escape(name)}: {html.escape(h.metric)} '
                 f'per method" ', 1)
    return (f'<div class="card" data-suite="{html.escape(name)}"><h3><a href="#{anchor}">{html.escape(name)}</a> '
            f'<small>{html.escape(group_title(name))}</small></h3>{svg}{takeaway(s)}</div>')


def split_table(results: list[dict], metric: str) -> str:
    """The headline metric split by split (rows: methods, columns: splits or folds); empty when no row has splits."""
    rows, width = [], 0
    for r in results:
        _, points = spread(r, metric)
        if points:
            rows.append((str(r.get("method")), points))
            width = max(width, len(points))
    if not rows:
        return ""
    head = "".join(f"<th>{i}</th>" for i in range(width))
    body = "".join(f'<tr><td class="method">{html.escape(m)}</td>'
                   + "".join(f"<td>{v:.3f}</td>" for v in pts) + "<td></td>" * (width - len(pts)) + "</tr>"
                   for m, pts in rows)
    return (f'<table class="splits"><thead><tr><th>{html.escape(metric)} per split</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")

"""One leaderboard over every suite: ``clipforge bench all`` runs them, then writes leaderboard.md + report.html.

Each suite writes its own JSON (clipforge first, docs/benchmarks.md); this module only reads them and puts
every method side by side on the suite's headline metrics, best value in bold, with the JSON's wall time.
"""
from __future__ import annotations

import json
from pathlib import Path

from clipforge.evaluate.report import setting_of

SUITES = {
    "fashion-zsl": ["unseen_top1", "unseen_mean_per_class_recall", "seen_top1", "gzsl_h"],
    "fashion-zsl-fresh": ["unseen_top1", "unseen_mean_per_class_recall", "seen_top1", "gzsl_h"],
    "general": ["MR_zh", "MR_en", "mr_ratio_zh_en"],
    "tux-retrieval": ["MR", "image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@10", "text_to_image_R@10"],
    "tux-retrieval-zh": ["MR_zh", "MR_en", "MR"],
    "mnist": ["top1", "mean_per_class_recall"],
}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


# The issue-8 methods; a suite that cannot run one says why (rendered under its table).
NOT_APPLICABLE = {
    "tux-retrieval": {"linear-probe": "retrieval has no classes to train a probe on",
                      "clipforge-transductive": "the transductive setting is defined for zero-shot classification"},
    "tux-retrieval-zh": {"linear-probe": "retrieval has no classes to train a probe on",
                         "clipforge-transductive": "the transductive setting is defined for zero-shot classification"},
    "mnist": {"clipforge-transductive": "every digit is seen in training: nothing is unseen"},
}



def suite_table(data: dict) -> str:
    """Inductive rows ranked by the suite's first metric; rows of other settings (transductive, supervised
    ceilings) listed after them, unranked, since they use what the inductive methods may not."""
    suite = data.get("suite") or data.get("dataset", "?")
    keys = [k for k in SUITES.get(suite, []) if any(k in r.get("metrics", {}) for r in data["results"])]
    if not keys:
        keys = sorted({k for r in data["results"] for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float))})[:5]
    inductive = [r for r in data["results"] if setting_of(r) == "inductive"]
    best = {k: max((r["metrics"][k] for r in inductive if isinstance(r.get("metrics", {}).get(k), (int, float))),
                   default=None) for k in keys}
    lines = [f"### {suite}  ({data.get('model', '')}; {data.get('wall_seconds', '?')} s)", "",
             "| rank | method | " + " | ".join(keys) + " | setting |", "|---|---|" + "---|" * len(keys) + "---|"]
    primary = keys[0] if keys else None

    def order(rows):
        return sorted(rows, key=lambda r: -(r.get("metrics", {}).get(primary) or -1)) if primary else rows

    others = [r for r in data["results"] if setting_of(r) != "inductive"]
    for i, r in enumerate([*order(inductive), *order(others)], 1):
        cells = []
        for k in keys:
            v = r.get("metrics", {}).get(k)
            cells.append(f"**{_fmt(v)}**" if v is not None and v == best[k] and setting_of(r) == "inductive" else _fmt(v))
        rank = str(i) if i <= len(inductive) else "–"
        lines.append(f"| {rank} | {r['method']} | " + " | ".join(cells) + f" | {setting_of(r)} |")
    missing = {m: why for m, why in NOT_APPLICABLE.get(suite, {}).items()
               if m not in {r["method"] for r in data["results"]}}
    if missing:
        lines += ["", "Not in this suite: " + "; ".join(f"`{m}` ({why})" for m, why in missing.items()) + "."]
    return "\n".join(lines)


def write_leaderboard(directory: str | Path) -> Path:
    d = Path(directory)
    parts = ["# clipforge leaderboard", "",
             "Every method on the same cached features and splits, per suite (ranked by the first column). "
             "Transductive and supervised rows are labelled in the last column and are not inductive zero-shot.", ""]
    for name in SUITES:
        path = d / f"{name}.json"
        if path.is_file():
            parts += [suite_table(json.loads(path.read_text())), ""]
        else:
            parts += [f"### {name}", "", f"(not run: {path.name} is missing)", ""]
    out = d / "leaderboard.md"
    out.write_text("\n".join(parts))
    return out


FASHION_ALL = ["clipforge", "clipforge-transductive", "seed-pair-siamese", "seed-contrastive", "clipforge-names",
               "conse", "procrustes", "least-squares", "asif", "linear-probe"]
TUX_ALL = ["clipforge", "seed-contrastive", "seed-pair-siamese", "conse", "procrustes", "least-squares", "asif", "csa"]
TUX_ZH_ALL = ["clipforge", "use-m3-mixed", "altclip-distill", "minilm-english", "seed-contrastive", "seed-pair-siamese",
              "conse", "procrustes", "least-squares", "asif", "csa"]
MNIST_ALL = ["clipforge", "scratch-cnn+frozen-minilm", "pretrained-clipforge", "seed-pair-siamese", "seed-contrastive",
             "conse", "procrustes", "least-squares", "asif", "linear-probe"]
# bench transfer: the default caption model and every closed-form baseline (benchmarks/transfer.py).
TRANSFER_ALL = ["clipforge", "conse", "procrustes", "least-squares", "asif", "csa"]


def run_all(out: str | Path) -> list[Path]:
    """Every suite with every method it supports, then the leaderboard and the HTML report."""
    from benchmarks.bilingual import run_tux_retrieval_zh
    from benchmarks.fashion_zsl import run_fashion_zsl
    from benchmarks.mnist import run_mnist
    from benchmarks.tux_retrieval import run_tux_retrieval
    out = Path(out)
    written = [
        run_fashion_zsl(out, FASHION_ALL),
        run_tux_retrieval(out, TUX_ALL),
        run_tux_retrieval_zh(out, TUX_ZH_ALL),
        run_mnist(out, MNIST_ALL),
    ]
    written.append(write_leaderboard(out))
    from clipforge.evaluate.report import build_report
    written.append(build_report(out, None, title="clipforge leaderboard"))
    return written

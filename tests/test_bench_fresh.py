"""bench fashion-zsl-fresh: the split rule (20 fixed unseen sets, none of the protocol's, all distinct) and a tiny
end-to-end run through the CLI that checks the JSON (default first, mean, sd and worst split per method)."""
import json
import random
import re

import numpy as np
from typer.testing import CliRunner

from benchmarks.fashion_zsl_fresh import FIRST_SEED, N_FRESH, fresh_splits, frozen_at
from clipforge.cli import app

# The rule run once by hand (seeds 207, 210, 218, 221 and 222 are skipped): a change to the rule or to
# protocol_unseen shows here, after the splits were published.
EXPECTED = [(200, [0, 3, 9]), (201, [1, 5, 6]), (202, [6, 7, 9]), (203, [0, 1, 7]), (204, [1, 3, 6]),
            (205, [1, 6, 7]), (206, [0, 1, 4]), (208, [3, 4, 8]), (209, [0, 2, 8]), (211, [3, 5, 9]),
            (212, [0, 6, 8]), (213, [2, 3, 6]), (214, [5, 6, 8]), (215, [0, 1, 5]), (216, [2, 3, 7]),
            (217, [2, 3, 4]), (219, [0, 5, 8]), (220, [3, 7, 9]), (223, [5, 7, 9]), (224, [1, 3, 7])]


def test_the_fresh_splits_follow_the_rule_and_avoid_the_protocol_splits():
    splits = fresh_splits()
    assert splits == EXPECTED and len(splits) == N_FRESH == 20
    protocol = [sorted(random.Random(s).sample(range(10), 3)) for s in range(5)]
    unseen = [u for _, u in splits]
    assert not any(u in protocol for u in unseen)
    assert len({tuple(u) for u in unseen}) == 20
    seeds = [s for s, _ in splits]
    assert seeds[0] == FIRST_SEED and seeds == sorted(seeds)
    for s, u in splits:
        assert u == sorted(random.Random(s).sample(range(10), 3))
    for s in set(range(FIRST_SEED, seeds[-1])) - set(seeds):   # every skipped seed repeats a set seen before it
        u = sorted(random.Random(s).sample(range(10), 3))
        earlier = protocol + [v for t, v in splits if t < s]
        assert u in earlier, s
    assert fresh_splits(3) == EXPECTED[:3]


def test_frozen_at_is_the_commit_of_the_clone():
    info = frozen_at()
    assert re.fullmatch(r"[0-9a-f]{40}", info["frozen_at"]) and isinstance(info["tracked_changes"], bool)


def test_frozen_at_outside_a_repository_is_null(tmp_path):
    assert frozen_at(tmp_path) == {"frozen_at": None, "tracked_changes": None}


def test_bench_fresh_end_to_end_on_two_splits(tmp_path):
    out = tmp_path / "out"
    sets = ["data.train_per_class=6", "data.test_per_class=6", "towers.image_size=32", "train.epochs=2",
            "train.ensemble=1", "train.gzsl_pseudo_splits=1", f"cache_dir={tmp_path / 'cache'}"]
    args = ["bench", "fashion-zsl-fresh", "--splits", "2", "--methods", "clipforge,least-squares,csa",
            "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "fashion-zsl-fresh.json").read_text())
    assert res["suite"] == "fashion-zsl-fresh" and re.fullmatch(r"[0-9a-f]{40}", res["frozen_at"])
    assert [s["seed"] for s in res["protocol"]["splits"]] == [200, 201]
    assert res["protocol"]["splits"][0]["unseen"] == ["T-shirt/top", "Dress", "Ankle boot"]   # classes 0, 3, 9
    assert [row["method"] for row in res["results"]] == ["clipforge", "least-squares", "csa"]
    for row in res["results"]:
        per = row["per_split"]
        assert [s["seed"] for s in per] == [200, 201]
        for k in ("unseen_top1", "seen_top1", "gzsl_seen", "gzsl_unseen", "gzsl_h"):
            vals = [s[k] for s in per]
            assert abs(row["metrics"][k] - np.mean(vals)) < 1e-12 and abs(row["std"][k] - np.std(vals)) < 1e-12
        worst = row["worst_split"]
        assert worst["unseen_top1"] == min(s["unseen_top1"] for s in per)
        assert worst["seed"] in (200, 201) and worst["unseen"] == next(s["unseen"] for s in per if s["seed"] == worst["seed"])


def test_bench_fresh_refuses_a_split_count_it_does_not_have(tmp_path):
    r = CliRunner().invoke(app, ["bench", "fashion-zsl-fresh", "--splits", "21", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--splits must be 1 to 20" in r.output
    r = CliRunner().invoke(app, ["bench", "fashion-zsl-fresh", "--methods", "clipfrog", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown method 'clipfrog'" in r.output

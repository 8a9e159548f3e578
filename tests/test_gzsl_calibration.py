"""GZSL calibration is chosen on pseudo-unseen splits of the SEEN classes only, averaged over several of them."""
from types import SimpleNamespace

import numpy as np

from clipforge.pipelines import classes as align
from clipforge.config import load_config
from clipforge.evaluate.zeroshot import GAMMA_GRID, gzsl_h_curve


def _prepared(n_classes=10, unseen=(2, 5, 8), per_class=30, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    return SimpleNamespace(class_names=[f"c{i}" for i in range(n_classes)], unseen=list(unseen),
                           seen=[c for c in range(n_classes) if c not in unseen],
                           train_x=np.c_[y, rng.rand(len(y))].astype(np.float32), train_y=y)


def test_pseudo_splits_hold_out_seen_classes_only_and_are_fixed_by_the_split_seed():
    p = _prepared()
    cfg = load_config(None, ["train.gzsl_pseudo_splits=6", "data.split_seed=3"])
    splits = align.pseudo_splits(cfg, p)
    assert len(splits) == 6 and len({tuple(u) for _, u in splits}) == 6          # six different hold-outs
    for val_seen, val_unseen in splits:
        assert len(val_unseen) == 2                                                 # 7 seen x 3/10 -> 2
        assert sorted(val_seen + val_unseen) == p.seen and not set(val_unseen) & set(p.unseen)
    assert splits == align.pseudo_splits(cfg, p)
    assert splits != align.pseudo_splits(load_config(None, ["data.split_seed=4"]), p)
    assert align.pseudo_splits(cfg, _prepared(n_classes=2, unseen=(1,))) == []     # nothing to hold out
    # AwA2-sized (40 seen, 12 held out: billions of subsets): sampled, distinct, never listed
    big = _prepared(n_classes=50, unseen=tuple(range(40, 50)), per_class=1)
    many = align.pseudo_splits(cfg, big)
    assert len(many) == 6 and len({tuple(u) for _, u in many}) == 6 and all(len(u) == 8 for _, u in many)
    assert all(not set(u) & set(big.unseen) for _, u in many)


def test_calibration_averages_the_h_curves_of_several_pseudo_splits_and_never_scores_unseen_classes():
    """A stand-in method with a known seen-class bias of 0.3 and a true-class signal of 0.2: H is 1 exactly when
    gamma lies between 0.1 and 0.5, so the calibration must land there."""
    p = _prepared()
    cfg = load_config(None, ["train.gzsl_pseudo_splits=4"])
    calls = []

    def scorer(classes):
        calls.append(list(classes))

        def score(x):
            y = x[:, 0].astype(int)
            s = 0.2 * np.eye(10)[y]
            s[:, classes] += 0.3
            return s + 0.001 * x[:, 1:2]
        return score

    gamma = align.calibrate_gamma(cfg, p, scorer=scorer)
    assert 0.1 < gamma < 0.5
    assert len(calls) == 4 and all(not set(c) & set(p.unseen) for c in calls)


def test_h_curve_is_zero_without_calibration_when_seen_scores_dominate():
    y = np.repeat([0, 1, 2], 10)
    s = np.eye(3)[y] * 0.1
    s[:, :2] += 0.5                                       # classes 0, 1 seen and favoured; 2 unseen
    curve = gzsl_h_curve(s, y, [0, 1], [2])
    assert curve[np.argmin(np.abs(GAMMA_GRID))] == 0.0 and curve.max() == 1.0


def test_calibration_models_train_for_gzsl_epochs_and_the_real_model_for_train_epochs(monkeypatch):
    """The pseudo-split models are cheap stand-ins trained for ``train.gzsl_epochs`` (null: as long as the run)."""
    p = _prepared()
    seen_epochs = []

    def fake_train(cfg, p, seen=None, **kw):
        seen_epochs.append((cfg.train.epochs, kw.get("ensemble")))
        return object()

    monkeypatch.setattr(align, "train_model", fake_train)
    monkeypatch.setattr(align, "class_scores", lambda model, p, x: np.zeros((len(x), 10)))
    align.calibrate_gamma(load_config(None, ["train.gzsl_pseudo_splits=3", "train.epochs=150"]), p)
    assert seen_epochs == [(30, 1)] * 3
    seen_epochs.clear()
    align.calibrate_gamma(load_config(None, ["train.gzsl_pseudo_splits=2", "train.epochs=77",
                                             "train.gzsl_epochs=null"]), p)
    assert seen_epochs == [(77, 1)] * 2

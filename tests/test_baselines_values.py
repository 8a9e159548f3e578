"""The closed-form baselines (baselines.py) against their formulas written out with numpy, so a changed constant,
axis or default shows. Found by the mutation run (scripts/mutation.sh)."""
import numpy as np
import pytest
import torch

from clipforge.evaluate.baselines import ASIF, BASELINES, ConSE, FeatureMethod, LinearMap, class_weights, make


def _n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(n=30, di=6, dt=4, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, di).astype(np.float32) * np.arange(1, di + 1), rng.randn(n, dt).astype(np.float32)


def test_least_squares_is_ridge_regression_on_standardised_features_onto_centred_texts():
    img, txt = _data()
    b = make("least-squares", ridge=0.5).fit(img, txt)
    assert b.name == "least-squares" and not b.orthogonal and b.pca is None
    mu, sd = img.mean(0), img.std(0)
    x = (img - mu) / sd
    y = _n(txt) - _n(txt).mean(0)
    w = np.linalg.solve(x.T @ x + 0.5 * len(x) * np.eye(x.shape[1]), x.T @ y)
    np.testing.assert_allclose(b.w, w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.ty, _n(txt).mean(0), atol=1e-6)
    np.testing.assert_allclose(b.image_embed(img[:3]), _n(x[:3] @ w), atol=1e-5)
    np.testing.assert_allclose(b.text_embed(txt[:3]), _n(_n(txt[:3]) - b.ty), atol=1e-6)
    assert make("least-squares").ridge == 1.0 and LinearMap().ridge == 1.0 and LinearMap().orthogonal


def test_a_constant_image_feature_is_ignored_not_divided_by_zero():
    img, txt = _data()
    img[:, 2] = 3.0
    img[:, 4] = 1e-9 * np.arange(len(img))                 # varies, but 1e-6 of the largest spread or less
    b = make("least-squares").fit(img, txt)
    assert np.isinf(b.sd[2]) and np.isinf(b.sd[4]) and np.isfinite(b.sd[[0, 1, 3, 5]]).all()
    other = img.copy()
    other[:, 2] = -50.0                                    # a dead feature cannot change an embedding
    np.testing.assert_allclose(b.image_embed(other), b.image_embed(img), atol=1e-6)
    assert np.isfinite(make("procrustes").fit(img, txt).image_embed(img)).all()
    wide = img.copy()                                       # the threshold is relative to the largest spread:
    wide[:, 0] *= 1000.0                                    # x1000 on one feature makes 1e-5 * arange dead ...
    wide[:, 4] = 1e-5 * np.arange(len(img))
    assert np.isinf(make("least-squares").fit(wide, txt).sd[4])
    small = img * 1e-3                                      # ... and on small features 1e-7 * arange is alive
    small[:, 4] = 1e-7 * np.arange(len(img))
    assert np.isfinite(make("least-squares").fit(small, txt).sd[4])


def test_procrustes_pca_width_is_the_smallest_of_text_width_samples_and_image_width():
    img, txt = _data(n=30, di=6, dt=4)
    assert make("procrustes").fit(img, txt).pca.shape == (6, 4)
    few_img, few_txt = _data(n=3, di=6, dt=4)
    assert make("procrustes").fit(few_img, few_txt).pca.shape == (6, 3)
    wide_txt = np.random.RandomState(1).randn(30, 9).astype(np.float32)
    b = make("procrustes").fit(img, wide_txt)
    assert b.pca.shape == (6, 6) and b.w.shape == (6, 9)
    np.testing.assert_allclose(b.w @ b.w.T, np.eye(6), atol=1e-5)
    assert b.name == "procrustes"


def test_conse_uses_its_temperature():
    class_text = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    logits = np.array([[1.0, 0.0]], np.float32)
    for t in (1.0, 0.5):
        p = np.exp(logits / t) / np.exp(logits / t).sum()
        emb = ConSE(lambda f: f, class_text, temperature=t).image_embed(logits)
        np.testing.assert_allclose(emb, _n(p @ class_text), atol=1e-6)
    assert ConSE(lambda f: f, class_text).temperature == 1.0 and ConSE(None, class_text).name == "conse"
    np.testing.assert_allclose(ConSE(None, class_text).text_embed(np.array([[3.0, 4.0]])), [[0.6, 0.8]])


def _asif_by_hand(x, anchors, k, p):
    s = x @ anchors.T
    out = np.zeros_like(s)
    for i, row in enumerate(s):
        top = np.argsort(-row)[:k]
        out[i, top] = np.clip(row[top], 0, None) ** p
    return _n(out)


def test_asif_keeps_the_top_k_anchor_similarities_raised_to_p():
    img, txt = _data(n=12, di=5, dt=4, seed=3)
    b = ASIF(k=3, p=2.0).fit(img, txt)
    np.testing.assert_allclose(b.img_mean, img.mean(0), atol=1e-6)
    np.testing.assert_allclose(b.anchors_img, _n(img - img.mean(0)), atol=1e-6)
    np.testing.assert_allclose(b.anchors_txt, _n(txt), atol=1e-6)
    q_img, q_txt = _data(n=4, di=5, dt=4, seed=4)
    np.testing.assert_allclose(b.image_embed(q_img), _asif_by_hand(_n(q_img - b.img_mean), b.anchors_img, 3, 2.0), atol=1e-5)
    np.testing.assert_allclose(b.text_embed(q_txt), _asif_by_hand(_n(q_txt), b.anchors_txt, 3, 2.0), atol=1e-5)
    assert (np.count_nonzero(b.text_embed(q_txt), axis=1) <= 3).all()
    many = ASIF(k=50, p=2.0).fit(img, txt)                 # k above the number of anchors: all of them
    np.testing.assert_allclose(many.text_embed(q_txt), _asif_by_hand(_n(q_txt), many.anchors_txt, 12, 2.0), atol=1e-5)
    d = make("asif")
    assert (d.k, d.p, d.name) == (64, 8.0, "asif")
    c = make("asif", k=5, p=3.0)
    assert (c.k, c.p) == (5, 3.0)


def test_class_weights_are_renormalised_means_of_sentence_embeddings():
    vocab = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    membership = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    want = _n(np.stack([_n(vocab[0]) + _n(vocab[1]), _n(vocab[2])]))
    np.testing.assert_allclose(class_weights(FeatureMethod(), vocab, membership), want, atol=1e-6)


def test_make_knows_every_baseline_and_names_an_unknown_one():
    assert BASELINES == ("conse", "procrustes", "least-squares", "asif", "csa")
    conse = make("conse", classifier=torch.from_numpy, class_text=np.eye(2, dtype=np.float32), temperature=0.5)
    assert isinstance(conse, ConSE) and conse.temperature == 0.5
    assert make("conse", classifier=None, class_text=np.eye(2)).temperature == 1.0
    assert make("least-squares", ridge=0.1).ridge == 0.1
    with pytest.raises(ValueError, match="unknown baseline 'pca'"):
        make("pca")
    base = FeatureMethod()
    assert base.fit(None, None) is base and base.name == "base"
    with pytest.raises(NotImplementedError):
        base.image_embed(np.zeros((1, 2)))
    np.testing.assert_allclose(base.text_embed(np.array([[0.0, 5.0]])), [[0.0, 1.0]])
    assert base.text_embed(np.zeros((1, 2))).dtype == np.float32 and np.isfinite(base.text_embed(np.zeros((1, 2)))).all()


def test_procrustes_by_hand_on_uncentred_features():
    img, txt = _data(n=25, di=6, dt=3, seed=5)
    img = img + 4.0                                        # far from the origin: centring matters
    b = make("procrustes").fit(img, txt)
    assert b.orthogonal is True and make("least-squares").orthogonal is False
    x0 = (img - img.mean(0)) / img.std(0)
    pca = np.linalg.svd(x0, full_matrices=False)[2][:3].T
    y = _n(txt) - _n(txt).mean(0)
    u, _, vt = np.linalg.svd((x0 @ pca).T @ y, full_matrices=False)
    q = (img[:4] - img.mean(0)) / img.std(0) @ pca @ (u @ vt)
    np.testing.assert_allclose(np.abs(b.image_embed(img[:4])), np.abs(_n(q)), atol=1e-4)   # PCA signs are free
    np.testing.assert_allclose(b.image_embed(img[:4]) @ b.text_embed(txt[:4]).T, _n(q) @ _n(_n(txt[:4]) - _n(txt).mean(0)).T,
                               atol=1e-4)


def test_make_conse_passes_its_classifier_and_class_texts():
    class_text = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = make("conse", classifier=lambda f: f * 50.0, class_text=class_text)
    np.testing.assert_allclose(b.image_embed(np.array([[0.0, 1.0]], np.float32)), [[0.0, 1.0]], atol=1e-6)

"""CSA (canonical similarity analysis, baselines.py) on small problems whose answer is known: a linear relation
gives canonical correlations of 1 and perfect retrieval, the score is the correlation-weighted cosine over the
kept components, and the weighting is what lets a strongly shared direction outvote weakly shared ones."""
import numpy as np
import pytest

from clipforge.evaluate.baselines import BASELINES, CSA, class_weights, make


def _n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _linear_pair(n=200, dt=8, di=12, seed=0):
    """Unit text features and image features that are a linear map of them (plus an offset): a known CCA."""
    rng = np.random.RandomState(seed)
    txt = _n(rng.randn(n, dt))
    return (txt @ np.random.RandomState(99).randn(dt, di) + 3.0).astype(np.float32), txt.astype(np.float32)


def test_csa_is_registered_and_made_with_its_defaults():
    assert "csa" in BASELINES
    b = make("csa")
    assert isinstance(b, CSA) and (b.name, b.dims, b.ridge, b.weighted) == ("csa", 64, 0.1, True)
    c = make("csa", dims=3, ridge=0.5)
    assert (c.dims, c.ridge) == (3, 0.5)


def test_linearly_related_spaces_have_correlations_of_one_and_retrieve_perfectly():
    img, txt = _linear_pair()
    b = make("csa", dims=5, ridge=1e-4).fit(img, txt)
    assert b.a.shape == (12, 5) and b.b.shape == (8, 5) and b.corr.shape == (5,)
    np.testing.assert_allclose(b.corr, 1.0, atol=1e-3)
    q_img, q_txt = _linear_pair(n=50, seed=1)          # the same map, new texts: unseen pairs
    s = b.image_embed(q_img) @ b.text_embed(q_txt).T
    assert (s.argmax(1) == np.arange(50)).mean() >= 0.98 and (s.argmax(0) == np.arange(50)).mean() >= 0.98
    noise = np.random.RandomState(7)
    u = make("csa", dims=5, ridge=1e-4).fit(noise.randn(200, 12), noise.randn(200, 8))
    assert u.corr.max() < 0.6                            # unrelated spaces: no correlation near 1


def test_score_is_the_correlation_weighted_cosine_of_the_kept_components():
    img, txt = _linear_pair(n=120, seed=2)
    rng = np.random.RandomState(3)
    img = img + 0.5 * rng.randn(*img.shape).astype(np.float32)
    b = make("csa", dims=4, ridge=0.1).fit(img, txt)
    # the components by hand: regularised whitening, SVD, Pearson correlations of the training variates
    x = img.astype(np.float64) - img.mean(0)
    y = _n(txt.astype(np.float64))
    y = y - y.mean(0)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        w = w.clip(0)
        return v @ np.diag(1 / np.sqrt(w + 0.1 * w.mean())) @ v.T

    wx, wy = inv_sqrt(x.T @ x / len(x)), inv_sqrt(y.T @ y / len(y))
    u, sv, vt = np.linalg.svd(wx @ (x.T @ y / len(x)) @ wy)
    a, bb = wx @ u[:, :4], wy @ vt[:4].T
    zx, zy = x @ a, y @ bb
    rho = np.array([np.corrcoef(zx[:, i], zy[:, i])[0, 1] for i in range(4)])
    np.testing.assert_allclose(b.corr, rho, atol=1e-6)
    assert (np.diff(sv[:4]) <= 1e-9).all() and (rho > 0).all()
    qi, qt = img[:6], txt[:6]
    xi = _n((qi - img.mean(0)) @ a)
    yt = _n((_n(qt.astype(np.float64)) - _n(txt.astype(np.float64)).mean(0)) @ bb)
    want = (xi * rho) @ yt.T                             # sum_i rho_i x_i y_i over unit canonical vectors
    np.testing.assert_allclose(b.image_embed(qi) @ b.text_embed(qt).T, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(b.text_embed(qt), axis=1), 1.0, atol=1e-6)
    assert not np.allclose(want, xi @ yt.T, atol=1e-3)   # the weights change the scores


def _one_shared_direction(n, seed):
    """One latent factor both spaces share strongly; five the image carries with only a faint echo in the text."""
    rng = np.random.RandomState(seed)
    z = rng.randn(n, 6)
    img = np.c_[z, rng.randn(n, 2)]
    txt = np.c_[z[:, :1] + 0.1 * rng.randn(n, 1), z[:, 1:] * 0.25 + rng.randn(n, 5), rng.randn(n, 2)]
    return img.astype(np.float32), txt.astype(np.float32)


def test_the_weighting_lets_the_strongly_shared_direction_decide():
    img, txt = _one_shared_direction(3000, 0)
    weighted = make("csa", dims=6, ridge=1e-3).fit(img, txt)
    plain = CSA(dims=6, ridge=1e-3, weighted=False).fit(img, txt)
    assert weighted.corr[0] > 0.9 and weighted.corr[1:].max() < 0.4
    np.testing.assert_allclose(plain.corr, weighted.corr)
    qi, qt = _one_shared_direction(300, 1)

    def wrong_above(m):                                  # mean share of wrong texts scored above an image's own
        s = m.image_embed(qi) @ m.text_embed(qt).T
        return float((s > np.diag(s)[:, None]).sum(1).mean() / (len(qi) - 1))
    assert wrong_above(weighted) < wrong_above(plain) - 0.03 and wrong_above(weighted) < 0.25


def test_class_weights_of_csa_are_means_of_unit_canonical_text_vectors():
    img, txt = _linear_pair(n=80, seed=4)
    b = make("csa", dims=3).fit(img, txt)
    membership = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
    w = class_weights(b, txt[:4], membership)
    t = b.text_embed(txt[:4])
    np.testing.assert_allclose(w, _n(np.stack([t[0] + t[1], t[2] + t[3]])), atol=1e-5)


def test_dims_is_capped_by_the_narrower_side_and_degenerate_inputs_stay_finite():
    img, txt = _linear_pair(n=40, di=6, dt=3)
    b = make("csa", dims=64).fit(img, txt)
    assert b.a.shape == (6, 3) and b.corr.shape == (3,)
    const = np.ones((10, 4), np.float32)                 # no spread at all: every weight 0, nothing NaN
    c = make("csa").fit(const, np.random.RandomState(0).randn(10, 3))
    assert np.isfinite(c.image_embed(const)).all() and np.isfinite(c.corr).all()
    assert np.allclose(c.corr, 0.0)


@pytest.mark.parametrize("n", [30, 400])
def test_more_image_features_than_pairs_still_fits(n):
    """Tux Paint has ~630 pairs for 1280 image features: the ridge keeps the whitening finite and the fit useful."""
    rng = np.random.RandomState(n)
    z = rng.randn(n + 50, 3)
    img = (z @ rng.randn(3, 500) + 0.1 * rng.randn(n + 50, 500)).astype(np.float32)
    txt = (z @ rng.randn(3, 16)).astype(np.float32)
    b = make("csa", dims=3).fit(img[:n], txt[:n])
    s = b.image_embed(img[n:]) @ b.text_embed(txt[n:]).T
    assert np.isfinite(s).all() and (s.argmax(1) == np.arange(50)).mean() > 0.5


def test_csa_equals_regularised_cca_written_with_covariance_matrices():
    """The thin-SVD CSA against the textbook construction: W = (C + lam I)^(-1/2) with lam = ridge x mean variance,
    SVD of Wx Cxy Wy, the top canonical pairs, their Pearson correlations as weights (more pairs than features, so
    'restricted to the data's span' is the whole space)."""
    from clipforge.evaluate.baselines import CSA
    rng = np.random.RandomState(7)
    n, dx, dy, k = 40, 12, 8, 5
    shared = rng.randn(n, 3)
    x = shared @ rng.randn(3, dx) + 0.5 * rng.randn(n, dx) + 3.0
    y = shared @ rng.randn(3, dy) + 0.5 * rng.randn(n, dy)
    csa = CSA(dims=k, ridge=0.1).fit(x, y)

    def whiten(c):
        lam = 0.1 * np.trace(c) / len(c)
        w, v = np.linalg.eigh(c + lam * np.eye(len(c)))
        return v @ np.diag(w ** -0.5) @ v.T

    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    xc, yc = x - x.mean(0), yn - yn.mean(0)
    wx, wy = whiten(xc.T @ xc / n), whiten(yc.T @ yc / n)
    p, _, qt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
    a, b = wx @ p[:, :k], wy @ qt[:k].T
    zx, zy = xc @ a, yc @ b
    corr = (zx * zy).sum(0) / np.sqrt((zx ** 2).sum(0) * (zy ** 2).sum(0))
    assert np.allclose(csa.corr, corr, atol=1e-6)
    tx, ty = rng.randn(6, dx) + 3.0, rng.randn(6, dy)
    tyn = ty / np.linalg.norm(ty, axis=1, keepdims=True)
    ex = (tx - x.mean(0)) @ a
    ey = (tyn - yn.mean(0)) @ b
    want = (ex / np.linalg.norm(ex, axis=1, keepdims=True) * corr) @ (ey / np.linalg.norm(ey, axis=1, keepdims=True)).T
    assert np.allclose(csa.image_embed(tx) @ csa.text_embed(ty).T, want, atol=1e-5)

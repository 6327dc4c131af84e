"""cljax.quantization: k-means and product quantisation, against numpy brute force."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import quantization
from cljax.quantization import (
    first_argmin,
    fit_codebooks,
    kmeans,
    kmeans_init,
    lloyd,
    nearest,
    pq_decode,
    pq_distortion,
    pq_encode,
)


def _np_lloyd(x, c, iters, w):
    """Lloyd's algorithm written out: exact squared distances, weighted means, an empty
    cluster keeps its centroid."""
    c = np.array(c, np.float64)
    for _ in range(iters):
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        a = d.argmin(1)
        for k in range(len(c)):
            sel = a == k
            if w[sel].sum() > 0:
                c[k] = (w[sel, None] * x[sel]).sum(0) / w[sel].sum()
    return c


def _np_encode(x, codebooks):
    m, k, d = codebooks.shape
    codes = np.zeros(x.shape[:-1] + (m,), np.int64)
    for s in range(m):
        sub = x[..., s * d:(s + 1) * d]
        dist = ((sub[..., None, :] - codebooks[s]) ** 2).sum(-1)
        codes[..., s] = dist.argmin(-1)
    return codes


def test_encode_and_decode_equal_a_brute_force_nearest_codeword_search():
    rng = np.random.default_rng(0)
    codebooks = rng.normal(size=(4, 16, 3)).astype(np.float32)
    x = rng.normal(size=(5, 7, 12)).astype(np.float32)
    codes = pq_encode(jnp.asarray(x), jnp.asarray(codebooks))
    assert codes.dtype == jnp.uint8 and codes.shape == (5, 7, 4)
    np.testing.assert_array_equal(codes, _np_encode(x, codebooks))
    want = np.concatenate([codebooks[s][np.asarray(codes)[..., s]] for s in range(4)], -1)
    np.testing.assert_array_equal(pq_decode(codes, jnp.asarray(codebooks)), want)
    # a vector equal to a concatenation of centroids is reconstructed exactly
    np.testing.assert_array_equal(pq_encode(jnp.asarray(want), jnp.asarray(codebooks)), codes)
    np.testing.assert_array_equal(nearest(jnp.asarray(x[0, :, :3]), jnp.asarray(codebooks[0])),
                                  _np_encode(x[0, :, :3], codebooks[:1])[:, 0])


def test_first_argmin_equals_numpy_argmin_with_ties_nans_and_ints():
    rng = np.random.default_rng(2)
    v = rng.integers(0, 4, size=(50, 6, 33)).astype(np.float32)     # many ties
    v[3, 2, [5, 9]] = np.nan
    v[7, 0, 0] = -np.inf
    got = first_argmin(jnp.asarray(v))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.argmin(v, -1))
    ints = rng.integers(-3, 3, size=(20, 17))
    np.testing.assert_array_equal(first_argmin(jnp.asarray(ints)), np.argmin(ints, -1))
    np.testing.assert_array_equal(jax.jit(first_argmin)(jnp.asarray(v)), np.argmin(v, -1))
    with pytest.raises(ValueError, match="non-empty last axis"):
        first_argmin(jnp.zeros((3, 0)))


def test_encoding_a_subspace_at_a_time_equals_the_batched_encoding(monkeypatch):
    """Above ``BATCHED_ENCODE_MAX`` distances pq_encode loops over the sub-spaces (bounded
    memory); the codes are the same."""
    rng = np.random.default_rng(1)
    codebooks = jnp.asarray(rng.normal(size=(4, 16, 3)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(40, 12)).astype(np.float32))
    batched = pq_encode(x, codebooks)
    monkeypatch.setattr(quantization, "BATCHED_ENCODE_MAX", 0)
    np.testing.assert_array_equal(pq_encode(x, codebooks), batched)
    np.testing.assert_array_equal(batched, _np_encode(np.asarray(x), np.asarray(codebooks)))


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_lloyd_equals_a_numpy_reference_from_the_same_init(x64, init):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(40, 3)) + 4 * rng.integers(0, 3, (40, 1)),
                        np.full((6, 3), 100.0)])
    w = np.concatenate([rng.uniform(0.5, 2.0, 40), np.zeros(6)])
    c0 = np.asarray(kmeans_init(jnp.asarray(x), jax.random.key(0), 5, weights=jnp.asarray(w),
                                init=init))
    assert c0.dtype == np.float64
    # the initial centroids are rows of positive weight
    assert all(any(np.array_equal(c, r) for r in x[:40]) for c in c0)
    got = lloyd(jnp.asarray(x), jnp.asarray(c0), iters=6, weights=jnp.asarray(w))
    np.testing.assert_allclose(got, _np_lloyd(x, c0, 6, w), rtol=1e-12, atol=1e-12)
    # the padding rows (weight 0) take no part: the same fit without them
    np.testing.assert_allclose(got, lloyd(jnp.asarray(x[:40]), jnp.asarray(c0), iters=6,
                                          weights=jnp.asarray(w[:40])), rtol=1e-12)
    # kmeans = init + lloyd, under jit
    km = jax.jit(lambda p, k, ww: kmeans(p, k, 5, iters=6, weights=ww, init=init))
    np.testing.assert_allclose(km(jnp.asarray(x), jax.random.key(0), jnp.asarray(w)), got,
                               rtol=1e-12)


def test_kmeans_init_spreads_its_centroids_and_survives_few_rows():
    rng = np.random.default_rng(2)
    # four tight, far-apart clusters: k-means++ puts one centroid in each
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], np.float32)
    x = (centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 2))).astype(np.float32)
    c = np.asarray(kmeans_init(jnp.asarray(x), jax.random.key(3), 4))
    hit = np.argmin(((c[:, None] - centres[None]) ** 2).sum(-1), 1)
    assert sorted(hit.tolist()) == [0, 1, 2, 3]
    # fewer weighted rows than centroids: every centroid is one of them (duplicates allowed)
    w = np.zeros(200, np.float32)
    w[:3] = 1
    for init in ("kmeans++", "random"):
        c = np.asarray(kmeans_init(jnp.asarray(x), jax.random.key(4), 8, weights=jnp.asarray(w),
                                   init=init))
        assert all(any(np.array_equal(ci, r) for r in x[:3]) for ci in c), init


def test_fit_codebooks_runs_one_kmeans_per_subspace():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(60, 6)), jnp.float32)
    key = jax.random.key(7)
    cb = fit_codebooks(x, key, 3, 4, 5)
    assert cb.shape == (3, 4, 2)
    keys = jax.random.split(key, 3)
    for s in range(3):
        np.testing.assert_allclose(cb[s], kmeans(x[:, 2 * s:2 * s + 2], keys[s], 4, iters=5),
                                   rtol=1e-6, atol=1e-6)


def test_reconstruction_error_decreases_with_more_codes():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(400, 8)), jnp.float32)
    fit = jax.jit(fit_codebooks, static_argnums=(2, 3, 4))
    errors = [float(pq_distortion(x, fit(x, jax.random.key(0), 2, k, 10)))
              for k in (1, 8, 64, 256)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # one code per sub-space: the mean; error = total variance
    np.testing.assert_allclose(errors[0], np.asarray(x).var(0).sum(), rtol=1e-4)


def test_inputs_are_validated():
    x = jnp.zeros((10, 4))
    cb = jnp.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="num_subvectors must divide"):
        fit_codebooks(x, jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match="num_codes must be <= 256"):
        fit_codebooks(x, jax.random.key(0), 2, 257)
    with pytest.raises(ValueError, match="float array"):
        fit_codebooks(jnp.zeros((10,)), jax.random.key(0), 1, 2)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        kmeans(x, jax.random.key(0), 2, weights=-jnp.ones(10))
    with pytest.raises(ValueError, match=r"weights must have shape \(10,\)"):
        lloyd(x, x[:2], iters=1, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="iters must be an int >= 0"):
        lloyd(x, x[:2], iters=-1)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans_init(x, jax.random.key(0), 2, init="farthest")
    with pytest.raises(ValueError, match="last axis must be m × d"):
        pq_encode(jnp.zeros((5, 5)), cb)
    with pytest.raises(ValueError, match="codebooks must be a float array"):
        pq_encode(x, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="codes must lie in"):
        pq_decode(jnp.array([[0, 3]], jnp.uint8), cb)
    with pytest.raises(ValueError, match="integer array"):
        pq_decode(jnp.zeros((1, 2)), cb)
    with pytest.raises(ValueError, match="same width"):
        nearest(x, jnp.zeros((2, 3)))

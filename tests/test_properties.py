"""chex variants and hypothesis property tests for the estimators, curvature tools and transforms.

* **chex variants** (``@chex.variants(with_jit=True, without_jit=True, with_pmap=True)`` on a
  ``chex.TestCase``): every estimator of :mod:`cljax.importance`, the Hessian / GGN-vector products
  of :mod:`cljax.curvature` and the transforms of :mod:`cljax.transforms`, called eagerly, inside
  ``jax.jit`` and inside ``jax.pmap`` (on ``jax.device_count()`` devices; chex would skip the
  pmap variant on one device, so these classes turn that off), each equal to an oracle computed
  outside the variant: the estimator's ``implementation="vmap"`` path, brute-force K-FAC factors,
  a dense Hessian / GGN, or a numpy formula for the transform. :func:`test_pmap_over_two_forced_host_devices`
  runs ``properties_multidevice.py`` in a subprocess with 2 forced host devices.
* **hypothesis** (``@given``, few examples, ``deadline=None``): shapes (examples, widths,
  classes, heads), dtypes (float32; float64 inside ``jax.enable_x64``), chunk sizes (including
  ones that do not divide N, or exceed it) and pytree structures (nested dicts of scalars,
  vectors and matrices) for the diagonal estimators, the quadratic penalty, A-GEM and the
  reservoir memory. Models are cached by shape (``logits_fn`` is a static ``jit`` argument hashed by
  identity) and drawn from small shape sets, so examples share compiled functions.

Runtime: the default selection of this file is about a minute on a 2-core CPU (jit compiles
dominate); ``-m slow`` runs the same estimator properties with more examples.
"""
from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess
import sys

import chex
import curvature_helpers as CH
import importance_helpers as IH
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import parameterized
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from cljax import curvature as cv
from cljax import importance as imp
from cljax import transforms as tr
from cljax import validation
from cljax.memory import init_memory, reservoir_add
from cljax.nn import MLP, as_model
from cljax.types import KFACFactors

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = dict(with_jit=True, without_jit=True, with_pmap=True)
SLOW_EXAMPLES = 40
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large,
             HealthCheck.function_scoped_fixture]


def _settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=_SUPPRESS,
                    print_blob=True)


def _tols(dtype) -> dict:
    return (dict(rtol=1e-9, atol=1e-12) if jnp.dtype(dtype) == jnp.float64
            else dict(rtol=2e-4, atol=2e-6))


def _np_tree(tree):
    return jax.tree.map(np.asarray, tree)


# =============================================================================================
# chex variants: eager, jit and pmap against oracles computed outside the variant
# =============================================================================================

class _VariantsCase(chex.TestCase):
    """Runs the pmap variant on a single device too (chex skips it by default when there is
    one), and, with ``X64``, every test of the class inside ``jax.enable_x64``."""

    X64 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        flag = flags.FLAGS["chex_skip_pmap_variant_if_single_device"]
        cls._skip_single, flag.value = flag.value, False
        cls._x64 = jax.enable_x64(cls.X64)
        cls._x64.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls._x64.__exit__(None, None, None)
        flags.FLAGS["chex_skip_pmap_variant_if_single_device"].value = cls._skip_single
        super().tearDownClass()

    def call_variant(self, fn, *args):
        """``fn(*args)`` in the current variant (pmap: args broadcast to every device, the first
        device's output returned)."""
        return self.variant(fn, n_devices=jax.device_count())(*args)


@functools.cache
def _estimator_problem(heads: int):
    """A tiny 2-layer MLP (float64), a batch of 6 examples with a task id when multi-head."""
    with jax.enable_x64(True):
        return IH.mlp_problem(n=6, d=4, widths=(3,), classes=3, heads=heads, seed=3)


@functools.cache
def _vmap_oracle(kind: str):
    model, params, batch = _estimator_problem(2)
    fn = getattr(imp, kind)
    extra = (jax.random.PRNGKey(5),) if kind == "true_fisher_diagonal" else ()
    return _np_tree(fn(model.logits_fn, params, batch, *extra, implementation="vmap"))


class EstimatorVariantsTest(_VariantsCase):
    """Each estimator in each variant equals its ``implementation="vmap"`` oracle (float64)."""

    def _check_diagonal(self, kind: str, chunk_size=None):
        model, params, batch = _estimator_problem(2)
        fn = getattr(imp, kind)
        if kind == "true_fisher_diagonal":
            est = lambda p, b, k: fn(model.logits_fn, p, b, k, chunk_size=chunk_size)
            got = self.call_variant(est, params, batch, jax.random.PRNGKey(5))
        else:
            est = lambda p, b: fn(model.logits_fn, p, b, chunk_size=chunk_size)
            got = self.call_variant(est, params, batch)
        chex.assert_trees_all_equal_shapes_and_dtypes(got, params)
        chex.assert_trees_all_close(_np_tree(got), _vmap_oracle(kind), rtol=1e-9, atol=1e-13)

    @chex.variants(**VARIANTS)
    def test_empirical_fisher_diagonal(self):
        self._check_diagonal("empirical_fisher_diagonal", chunk_size=4)   # 6 = 4 + 2 padded

    @chex.variants(**VARIANTS)
    def test_exact_fisher_diagonal(self):
        self._check_diagonal("exact_fisher_diagonal")

    @chex.variants(**VARIANTS)
    def test_true_fisher_diagonal(self):
        self._check_diagonal("true_fisher_diagonal")

    @chex.variants(**VARIANTS)
    def test_mas_importance(self):
        self._check_diagonal("mas_importance")

    @chex.variants(**VARIANTS)
    def test_kfac_factors(self):
        # kfac_factors has no vmap path (it needs the layers): the brute-force factors instead
        model, params, batch = _estimator_problem(1)
        est = lambda p, b: imp.kfac_factors(model.logits_fn, p, b, fisher="empirical")
        got = self.call_variant(est, params, batch)
        want = _kfac_oracle()
        self.assertEqual(sorted(got), sorted(want))
        for name, (a, g) in want.items():
            self.assertIsInstance(got[name], KFACFactors)
            chex.assert_trees_all_close(_np_tree(tuple(got[name])), (a, g), rtol=1e-9, atol=1e-13)


@functools.cache
def _kfac_oracle():
    _, params, batch = _estimator_problem(1)
    with jax.enable_x64(True):
        return {k: (np.asarray(a), np.asarray(g))
                for k, (a, g) in IH.oracle_kfac_mlp(params, batch, batch["y"]).items()}


@functools.cache
def _curvature_problem():
    """Tiny MLP (float64), a vector, and the dense Hessian and GGN of its mean CE loss."""
    with jax.enable_x64(True):
        logits_fn, params, batch = CH.tiny_mlp(2, n=7, d=4, hidden=3, classes=3)
        v = CH.random_like(3, params)
        loss = CH.mean_ce(logits_fn, batch)
        h = CH.dense_hessian(loss, params)
        g = CH.dense_ggn(logits_fn, params, batch)
        return logits_fn, params, batch, v, loss, h @ CH.flat_vec(v), g @ CH.flat_vec(v)


class CurvatureVariantsTest(_VariantsCase):
    """Hessian- and GGN-vector products in each variant equal dense-matrix products (float64)."""

    def _check(self, fn, want, *args):
        _, params, *_ = _curvature_problem()
        got = self.call_variant(fn, *args)
        chex.assert_trees_all_equal_shapes_and_dtypes(got, params)
        np.testing.assert_allclose(CH.flat_vec(got), want, rtol=1e-9, atol=1e-12)

    @chex.variants(**VARIANTS)
    def test_hvp(self):
        _, params, _, v, loss, hv, _ = _curvature_problem()
        self._check(lambda p, u: cv.hvp(loss, p, u), hv, params, v)

    @chex.variants(**VARIANTS)
    def test_ggn_vp(self):
        logits_fn, params, batch, v, _, _, gv = _curvature_problem()
        self._check(lambda p, b, u: cv.ggn_vp(logits_fn, p, b, u), gv, params, batch, v)

    @chex.variants(**VARIANTS)
    def test_task_hvp_chunked(self):
        logits_fn, params, batch, v, _, hv, _ = _curvature_problem()
        self._check(lambda p, b, u: cv.task_hvp(logits_fn, p, b, u, chunk_size=3), hv,
                    params, batch, v)   # 7 = 3 + 3 + 1 padded

    @chex.variants(**VARIANTS)
    def test_task_ggn_vp_chunked(self):
        logits_fn, params, batch, v, _, _, gv = _curvature_problem()
        self._check(lambda p, b, u: cv.task_ggn_vp(logits_fn, p, b, u, chunk_size=3), gv,
                    params, batch, v)


def _rand_tree(seed: int, shapes, scale=1.0, positive=False):
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in shapes.items():
        if isinstance(s, dict):
            out[k] = _rand_tree(seed + 1 + len(out), s, scale, positive)
        else:
            x = scale * rng.normal(size=s)
            out[k] = jnp.asarray(np.abs(x) if positive else x, jnp.float32)
    return out


_TREE = {"net": {"w": (3, 2), "b": (2,)}, "s": ()}
_LAYERS = {"Dense_0": {"kernel": (3, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 2)}}


def _spd(rng, n):
    m = rng.normal(size=(n, n))
    return (m @ m.T / n + 0.1 * np.eye(n)).astype(np.float32)


# One table of transforms: each case builds ``(step, args, check)``; the test runs ``step(*args)``
# in every variant and ``check``s the update against an oracle computed outside it (numpy, or the
# library called eagerly). Every optax transform cljax.transforms exports is a row, or is listed
# in CHAINS (a base optimizer chained to a row).

def _penalty_case():
    lam = 0.7
    g, p = _rand_tree(0, _TREE), _rand_tree(1, _TREE)
    th1, th2 = _rand_tree(2, _TREE), _rand_tree(3, _TREE)
    f1, f2 = _rand_tree(4, _TREE, positive=True), _rand_tree(5, _TREE, positive=True)
    tx = tr.quadratic_penalty(strength=lam)

    def step(g, p, th1, f1, th2, f2):
        ps = tr.init_penalty(p)
        ps = tr.consolidate(ps, th1, f1, mode="multi_task")
        ps = tr.consolidate(ps, th2, f2, mode="multi_task")
        upd, _ = tx.update(g, tx.init(p), p, penalty_state=ps)
        return upd, tr.penalty_loss(ps, p, strength=lam)

    def check(out):
        upd, loss = out
        n = _np_tree
        want_upd = jax.tree.map(lambda g, p, a, b, fa, fb: g + lam * (fa * (p - a) + fb * (p - b)),
                                n(g), n(p), n(th1), n(th2), n(f1), n(f2))
        want_loss = 0.5 * lam * sum(
            np.sum(fa * (p - a) ** 2) + np.sum(fb * (p - b) ** 2) for p, a, b, fa, fb in zip(
                *map(jax.tree.leaves, (n(p), n(th1), n(th2), n(f1), n(f2)))))
        chex.assert_trees_all_close(n(upd), want_upd, **_F32)
        np.testing.assert_allclose(loss, want_loss, **_F32)

    return step, (g, p, th1, f1, th2, f2), check


def _penalty_kfac_case():
    lam = 0.3
    rng = np.random.default_rng(7)
    g, p, anchor = (_rand_tree(s, _LAYERS) for s in (10, 11, 12))
    factors = {"Dense_0": KFACFactors(jnp.asarray(_spd(rng, 4)), jnp.asarray(_spd(rng, 4))),
               "Dense_1": KFACFactors(jnp.asarray(_spd(rng, 4)), jnp.asarray(_spd(rng, 2)))}
    tx = tr.quadratic_penalty(strength=lam)

    def step(g, p, anchor, factors):
        ks = tr.consolidate(tr.init_penalty(p, curvature="kfac"), anchor, factors, mode="replace")
        return tx.update(g, tx.init(p), p, penalty_state=ks)[0]

    def check(out):   # numpy: λ A ΔW̄ G per layer, W̄ = [kernel; bias]
        gn, pn, an = map(_np_tree, (g, p, anchor))
        d0 = np.concatenate([pn["Dense_0"]["kernel"] - an["Dense_0"]["kernel"],
                             (pn["Dense_0"]["bias"] - an["Dense_0"]["bias"])[None]])
        w0 = lam * np.asarray(factors["Dense_0"].A) @ d0 @ np.asarray(factors["Dense_0"].G)
        d1 = pn["Dense_1"]["kernel"] - an["Dense_1"]["kernel"]
        w1 = lam * np.asarray(factors["Dense_1"].A) @ d1 @ np.asarray(factors["Dense_1"].G)
        want = {"Dense_0": {"kernel": gn["Dense_0"]["kernel"] + w0[:-1],
                            "bias": gn["Dense_0"]["bias"] + w0[-1]},
                "Dense_1": {"kernel": gn["Dense_1"]["kernel"] + w1}}
        chex.assert_trees_all_close(_np_tree(out), want, **_F32)

    return step, (g, p, anchor, factors), check


def _ncl_case():
    s, d = 2.0, 0.1
    g, p, mean = (_rand_tree(k, _TREE) for k in (20, 21, 22))
    fisher = _rand_tree(23, _TREE, positive=True)
    tx = tr.ncl_preconditioner()

    def step(g, p, mean, fisher):
        ns = tr.ncl_consolidate(tr.init_ncl(p), mean, fisher, strength=s, damping=d)
        return tx.update(g, tx.init(p), p, ncl_state=ns)[0]

    def check(out):
        want = jax.tree.map(lambda g, p, m, f: g / (s * f + d) + (p - m),
                            *map(_np_tree, (g, p, mean, fisher)))
        chex.assert_trees_all_close(_np_tree(out), want, **_F32)

    return step, (g, p, mean, fisher), check


def _agem_case_table():
    g = _rand_tree(30, _TREE)
    conflicting = jax.tree.map(lambda a, b: -a + 0.5 * b, g, _rand_tree(31, _TREE))
    agreeing = jax.tree.map(lambda a, b: a + 0.5 * b, g, _rand_tree(31, _TREE))
    tx = tr.agem_projection()

    def step(g, r1, r2):
        return [tx.update(g, tx.init(g), None, reference_grads=r)[0] for r in (r1, r2)]

    def check(out):
        gv = CH.flat_vec(g)
        for got, ref in zip(out, (conflicting, agreeing)):
            rv, got = CH.flat_vec(ref), CH.flat_vec(got)
            dot = gv @ rv
            want = gv - (dot / (rv @ rv + 1e-7)) * rv if dot < 0 else gv
            np.testing.assert_allclose(got, want, **_F32)
            assert got @ rv >= -1e-5 * np.linalg.norm(got) * np.linalg.norm(rv)

    return step, (g, conflicting, agreeing), check


def _gem_case():
    g = _rand_tree(40, _TREE)
    refs = [jax.tree.map(lambda a, b: -a + b, g, _rand_tree(41 + k, _TREE)) for k in range(3)]
    stacked = jax.tree.map(lambda *r: jnp.stack(r), *refs)
    mask = jnp.array([True, True, False])
    tx = tr.gem_projection()

    def step(g, r, m):
        return tx.update(g, tx.init(g), None, reference_grads=r, reference_mask=m)[0]

    def check(out):
        got = CH.flat_vec(out)
        np.testing.assert_allclose(got, CH.flat_vec(tr.gem_project(g, stacked, mask)), **_F32)
        for k in (0, 1):   # the past tasks' constraints hold
            rv = CH.flat_vec(refs[k])
            assert got @ rv >= -1e-5 * np.linalg.norm(got) * np.linalg.norm(rv)

    return step, (g, stacked, mask), check


def _packed(tree, name):
    """A layer's W̄ = [kernel; bias] of a numpy params tree."""
    node = tree[name]
    return np.concatenate([node["kernel"], node["bias"][None]]) if "bias" in node \
        else node["kernel"]


def _unpacked_like(tree, name, w):
    node = tree[name]
    return {"kernel": w[:-1], "bias": w[-1]} if "bias" in node else {"kernel": w}


def _rgo_case():
    g, p = _rand_tree(50, _LAYERS), _rand_tree(51, _LAYERS)
    rng = np.random.default_rng(52)
    state = tr.init_rgo(p, alpha=1.0)
    for _ in range(3):   # three steps of a past task, then its boundary
        state = tr.rgo_accumulate(state, {"Dense_0": jnp.asarray(rng.normal(size=4), jnp.float32),
                                          "Dense_1": jnp.asarray(rng.normal(size=4), jnp.float32)})
    state = tr.rgo_consolidate(state)
    tx = tr.rgo_projection()

    def step(g, state):
        return tx.update(g, tx.init(g), None, rgo_state=state)[0]

    def check(out):   # numpy: P = rows / tr(H̄⁻¹) · H̄⁻¹ with H̄ = I + Σ ā āᵀ, then P ∇W̄
        rng = np.random.default_rng(52)
        rows = [{k: rng.normal(size=4).astype(np.float32) for k in ("Dense_0", "Dense_1")}
                for _ in range(3)]
        gn, want = _np_tree(g), {}
        for name in ("Dense_0", "Dense_1"):
            h = np.eye(4) + sum(np.outer(r[name], r[name]) for r in rows)
            q = np.linalg.inv(h)
            proj = 4 / np.trace(q) * q
            want[name] = _unpacked_like(gn, name, proj @ _packed(gn, name))
        chex.assert_trees_all_close(_np_tree(out), want, rtol=1e-4, atol=1e-5)

    return step, (g, state), check


def _gpm_case():
    g, p = _rand_tree(60, _LAYERS), _rand_tree(61, _LAYERS)
    rng = np.random.default_rng(62)
    reps = {"Dense_0": jnp.asarray(rng.normal(size=(6, 4)) * [3, 1, .1, .01], jnp.float32),
            "Dense_1": jnp.asarray(rng.normal(size=(6, 4)) * [1, 2, .1, .01], jnp.float32)}
    state = tr.gpm_consolidate(tr.init_gpm(p), reps, 0.9)
    tx = tr.gpm_projection()

    def step(g, state):
        return tx.update(g, tx.init(g), None, gpm_state=state)[0]

    def check(out):   # numpy: M = the stored basis columns (orthonormal), (I − M Mᵀ) ∇W̄
        gn, want = _np_tree(g), {}
        for name in ("Dense_0", "Dense_1"):
            m = np.asarray(state.bases[name])[:, :int(state.sizes[name])]
            assert 0 < m.shape[1] < 4
            np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-5)
            want[name] = _unpacked_like(gn, name, _packed(gn, name) - m @ (m.T @ _packed(gn, name)))
        chex.assert_trees_all_close(_np_tree(out), want, **_F32)

    return step, (g, state), check


def _ogd_case(factored: bool):
    def case():
        g, p = _rand_tree(70, _LAYERS), _rand_tree(71, _LAYERS)
        state = tr.init_ogd(p, capacity=3, factored_layers=None if factored else ())
        rng = np.random.default_rng(72)
        f32 = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
        dirs = tr.OGDDirections({k: f32((3,) + v.shape[2:]) for k, v in state.rows.items()},
                                {k: f32((3,) + v.shape[2:]) for k, v in state.cotangents.items()},
                                {k: f32((3,) + v.shape[2:]) for k, v in state.dense.items()})
        state = tr.ogd_consolidate(state, dirs)
        tx = tr.ogd_projection()

        def step(g, state):
            return tx.update(g, tx.init(g), None, ogd_state=state)[0]

        def check(out):   # numpy: g − Q Qᵀ g, Q an orthonormal basis of the 3 stored directions
            directions = []
            for i in range(3):
                d = jax.tree.map(np.zeros_like, _np_tree(p))
                for name in dirs.rows:
                    w = np.outer(dirs.rows[name][i], dirs.cotangents[name][i])
                    d[name] = _unpacked_like(d, name, w)
                for path, x in dirs.dense.items():
                    layer, leaf = path.split("/")
                    d[layer][leaf] = np.asarray(x[i])
                directions.append(CH.flat_vec(d))
            q, _ = np.linalg.qr(np.stack(directions, 1).astype(np.float64))
            gv = CH.flat_vec(g).astype(np.float64)
            got = CH.flat_vec(out)
            np.testing.assert_allclose(got, gv - q @ (q.T @ gv), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(q.T @ got, 0.0, atol=1e-5)

        return step, (g, state), check
    return case


def _task_decay_case():
    g = _rand_tree(70, _TREE)
    tx = tr.scale_by_task_decay(0.5, min_scale=0.2)

    def step(g, tasks):
        return [tx.update(g, tx.init(g), None, task=tasks[i])[0] for i in range(3)]

    def check(out):   # the closed form max(γ^t, floor) for tasks 0, 1, 3
        for got, t in zip(out, (0, 1, 3)):
            np.testing.assert_allclose(CH.flat_vec(got), max(0.5 ** t, 0.2) * CH.flat_vec(g),
                                       **_F32)

    return step, (g, jnp.array([0, 1, 3])), check


def _stiefel_case():
    rng = np.random.default_rng(71)
    q0, _ = np.linalg.qr(rng.normal(size=(5, 3)))
    params = {"Dense_0": {"kernel": jnp.asarray(q0, jnp.float32), "bias": jnp.zeros(3)}}
    g = {"Dense_0": {"kernel": jnp.asarray(0.1 * rng.normal(size=(5, 3)), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}}
    tx = tr.stiefel_retraction(clamp=False)

    def step(g, p):
        return tx.update(g, tx.init(g), p)[0]

    def check(out):   # numpy float64: W' = (I + A/2)⁻¹(I − A/2) W, A = Ĝ Wᵀ − W Ĝᵀ with
        # Ĝ = G − ½ W WᵀG and G = −update (their Euclidean-metric generator); the bias passes
        w, d = q0, np.asarray(g["Dense_0"]["kernel"], np.float64)
        gg = -d
        g_hat = gg - 0.5 * w @ (w.T @ gg)
        a = g_hat @ w.T - w @ g_hat.T
        eye = np.eye(5)
        want = np.linalg.solve(eye + a / 2, (eye - a / 2) @ w) - w
        np.testing.assert_allclose(out["Dense_0"]["kernel"], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(out["Dense_0"]["bias"], g["Dense_0"]["bias"])
        moved = w + np.asarray(out["Dense_0"]["kernel"], np.float64)
        np.testing.assert_allclose(moved.T @ moved, np.eye(3), atol=1e-5)

    return step, (g, params), check


_F32 = dict(rtol=2e-5, atol=1e-6)
TRANSFORM_CASES = {   # case: (the cljax.transforms factory it tests, its builder)
    "quadratic_penalty_multi_task": ("quadratic_penalty", _penalty_case),
    "quadratic_penalty_kfac": ("quadratic_penalty", _penalty_kfac_case),
    "ncl_preconditioner": ("ncl_preconditioner", _ncl_case),
    "agem_projection": ("agem_projection", _agem_case_table),
    "gem_projection": ("gem_projection", _gem_case),
    "rgo_projection": ("rgo_projection", _rgo_case),
    "gpm_projection": ("gpm_projection", _gpm_case),
    "ogd_projection_dense": ("ogd_projection", _ogd_case(False)),
    "ogd_projection_factored": ("ogd_projection", _ogd_case(True)),
    "scale_by_task_decay": ("scale_by_task_decay", _task_decay_case),
    "stiefel_retraction": ("stiefel_retraction", _stiefel_case),
}
# Exported optax chains of a row's transform and a base optimizer, tested through that row.
CHAINS = {"quadratic_penalty_adam": "quadratic_penalty", "ncl": "ncl_preconditioner"}


def test_every_exported_transform_is_in_the_table():
    """Every factory of cljax.transforms that returns an optax transform has a row (a new
    transform fails here until it gets one)."""
    factories = {name for name in tr.__all__ if callable(getattr(tr, name))
                 and "GradientTransformation" in str(
                     getattr(getattr(tr, name), "__annotations__", {}).get("return", ""))}
    rows = {factory for factory, _ in TRANSFORM_CASES.values()}
    assert {"rgo_projection", "gpm_projection", "ogd_projection"} <= rows
    assert set(CHAINS.values()) <= rows
    assert factories - rows - set(CHAINS) == set(), "transforms without a row in TRANSFORM_CASES"


class TransformVariantsTest(_VariantsCase):
    """Each transform of TRANSFORM_CASES in each variant (eager, jit, pmap) equals its oracle
    (float32, the default)."""

    X64 = False

    @chex.variants(**VARIANTS)
    @parameterized.named_parameters(*[(name, name) for name in sorted(TRANSFORM_CASES)])
    def test_transform(self, case):
        step, args, check = TRANSFORM_CASES[case][1]()
        check(self.call_variant(step, *args))


@pytest.mark.slow
def test_pmap_over_two_forced_host_devices():
    """One estimator and one transform under ``pmap`` over 2 forced host CPU devices, each device
    with its own shard (``properties_multidevice.py``, a subprocess: the device count is fixed when
    JAX starts)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(HERE / "properties_multidevice.py")], cwd=HERE,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "OK" in proc.stderr[-400:] and "skipped" not in proc.stderr[-400:], proc.stderr[-2000:]


# =============================================================================================
# hypothesis: shapes, dtypes, chunk sizes, pytree structures
# =============================================================================================

DTYPES = st.sampled_from(["float32", "float64"])
DIAGONAL = ["empirical_fisher_diagonal", "exact_fisher_diagonal", "true_fisher_diagonal",
            "mas_importance"]


@functools.cache
def _mlp(widths: tuple, classes: int, heads: int):
    """One model object per shape (its ``logits_fn`` keys the estimators' jit cache)."""
    return as_model(MLP(widths, classes, num_heads=heads))


def _batch(seed, n, d, classes, heads, dtype):
    rng = np.random.default_rng(seed)
    batch = {"x": jnp.asarray(rng.normal(size=(n, d)), dtype),
             "y": jnp.asarray(rng.integers(0, classes, n))}
    if heads > 1:
        batch["task"] = jnp.asarray(rng.integers(0, heads, n))
    return batch


def _estimate(kind, logits_fn, params, batch, seed, **kw):
    fn = getattr(imp, kind)
    if kind == "true_fisher_diagonal":
        return fn(logits_fn, params, batch, jax.random.PRNGKey(seed), **kw)
    return fn(logits_fn, params, batch, **kw)


@st.composite
def mlp_cases(draw):
    n = draw(st.sampled_from([3, 5]))
    return dict(kind=draw(st.sampled_from(DIAGONAL)), dtype=draw(DTYPES), n=n,
                widths=draw(st.sampled_from([(), (3,)])), classes=draw(st.sampled_from([2, 3])),
                heads=draw(st.sampled_from([1, 2])), chunk=draw(st.integers(1, n + 1)),
                seed=draw(st.integers(0, 2 ** 16)))


def _check_mlp_case(case):
    """The fast path with ``chunk_size=c`` equals the vmap path on all N at once."""
    with jax.enable_x64(case["dtype"] == "float64"):
        dtype = jnp.dtype(case["dtype"])
        model = _mlp(case["widths"], case["classes"], case["heads"])
        batch = _batch(case["seed"], case["n"], 3, case["classes"], case["heads"], dtype)
        params = IH.random_params(model, batch, case["seed"], dtype)
        got = _estimate(case["kind"], model.logits_fn, params, batch, case["seed"],
                        chunk_size=case["chunk"])
        want = _estimate(case["kind"], model.logits_fn, params, batch, case["seed"],
                         implementation="vmap")
        chex.assert_trees_all_equal_shapes_and_dtypes(got, params)
        chex.assert_tree_all_finite(got)
        assert all(np.all(np.asarray(x) >= 0) for x in jax.tree.leaves(got))
        chex.assert_trees_all_close(_np_tree(got), _np_tree(want), **_tols(dtype))


@_settings(6)
@given(mlp_cases())
def test_diagonal_estimators_chunk_invariant_and_equal_vmap_oracle(case):
    _check_mlp_case(case)


@pytest.mark.slow
@_settings(SLOW_EXAMPLES)
@given(mlp_cases())
def test_diagonal_estimators_chunk_invariant_and_equal_vmap_oracle_many(case):
    _check_mlp_case(case)


# ---- pytree structures ----------------------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "kernel", "bias", "scale", "z"])
_LEAF_SHAPE = st.one_of(st.just(()), st.tuples(st.integers(1, 3)),
                        st.tuples(st.integers(1, 3), st.integers(1, 3)))
TREE_SHAPES = st.recursive(
    st.dictionaries(_KEYS, _LEAF_SHAPE, min_size=1, max_size=3),
    lambda inner: st.dictionaries(_KEYS, st.one_of(_LEAF_SHAPE, inner), min_size=1, max_size=3),
    max_leaves=3)


def _build(shapes, rng, dtype, positive=False, zero_frac=0.0):
    """A nested dict of arrays with the given leaf shapes (numpy draws, no XLA compile)."""
    def leaf(s):
        x = rng.normal(size=s)
        if positive:
            x = np.abs(x) * (rng.random(size=s) >= zero_frac)
        return jnp.asarray(x, dtype)
    return {k: _build(v, rng, dtype, positive, zero_frac) if isinstance(v, dict) else leaf(v)
            for k, v in shapes.items()}


def pytree_logits_fn(params, batch, num_classes=3):
    """A non-flax model over any params pytree: logits = (tanh((x P) ⊙ θ) ⊙ θ) Q with θ the
    ravelled params and fixed P, Q built from the shapes (one function for every structure)."""
    flat = ravel_pytree(params)[0]
    d, n_par = batch["x"].shape[-1], flat.shape[0]
    p = jnp.cos(0.7 * jnp.arange(d * n_par, dtype=flat.dtype)).reshape(d, n_par)
    q = jnp.sin(1.3 * jnp.arange(n_par * num_classes, dtype=flat.dtype)).reshape(n_par,
                                                                                num_classes)
    h = jnp.tanh((batch["x"].astype(flat.dtype) @ p) * flat)
    return (h * flat + 0.1) @ q


def _check_pytree_case(shapes, kind, dtype_name, n, chunk, seed):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        rng = np.random.default_rng(seed)
        params = _build(shapes, rng, dtype)
        batch = {"x": jnp.asarray(rng.normal(size=(n, 2)), dtype),
                 "y": jnp.asarray(rng.integers(0, 3, n))}
        got = _estimate(kind, pytree_logits_fn, params, batch, seed, chunk_size=chunk)
        want = _estimate(kind, pytree_logits_fn, params, batch, seed, implementation="vmap")
        chex.assert_trees_all_equal_shapes_and_dtypes(got, params)
        chex.assert_tree_all_finite(got)
        for x in jax.tree.leaves(got):   # Fisher and MAS are means of squares / absolute values
            assert np.all(np.asarray(x) >= 0), x
        chex.assert_trees_all_close(_np_tree(got), _np_tree(want), **_tols(dtype))


@_settings(5)
@given(shapes=TREE_SHAPES, kind=st.sampled_from(DIAGONAL), dtype=DTYPES,
       n=st.sampled_from([2, 5]), chunk=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_diagonal_estimators_on_pytree_params_nonnegative_and_chunk_invariant(
        shapes, kind, dtype, n, chunk, seed):
    _check_pytree_case(shapes, kind, dtype, n, chunk, seed)


@pytest.mark.slow
@_settings(SLOW_EXAMPLES)
@given(shapes=TREE_SHAPES, kind=st.sampled_from(DIAGONAL), dtype=DTYPES,
       n=st.sampled_from([2, 5]), chunk=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_diagonal_estimators_on_pytree_params_many(shapes, kind, dtype, n, chunk, seed):
    _check_pytree_case(shapes, kind, dtype, n, chunk, seed)


# ---- quadratic penalty ----------------------------------------------------------------------
# Jitted once per pytree structure: eager dispatch compiles every primitive for every new shape
# (~1 s per example), one jit of the whole example ~0.2 s. The eager path is the variants' job.

@functools.partial(jax.jit, static_argnames=("modes",))
def _penalty_update_and_grad(params, anchors, omegas, g, strength, decay, *, modes):
    state = tr.init_penalty(params)
    for mode, anchor, omega in zip(modes, anchors, omegas):
        state = tr.consolidate(state, anchor, omega, mode=mode,
                               decay=decay if mode == "online" else 1.0)
    tx = tr.quadratic_penalty(strength=strength)
    upd, _ = tx.update(g, tx.init(params), params, penalty_state=state)
    grad = jax.grad(lambda p: tr.penalty_loss(state, p, strength=strength))(params)
    return jax.tree.map(jnp.subtract, upd, g), grad


@_settings(8)
@given(shapes=TREE_SHAPES, dtype=DTYPES, strength=st.floats(0.0, 10.0),
       modes=st.lists(st.sampled_from(["online", "multi_task", "replace"]), min_size=0,
                      max_size=3),
       decay=st.floats(0.05, 1.0), seed=st.integers(0, 2 ** 16))
def test_quadratic_penalty_update_is_grad_of_penalty_loss(shapes, dtype, strength, modes, decay,
                                                          seed):
    """After any sequence of consolidations, update − g == ∇ penalty_loss (same dtypes)."""
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(seed)
        params = _build(shapes, rng, dtype)
        anchors = [_build(shapes, rng, dtype) for _ in modes]
        omegas = [_build(shapes, rng, dtype, positive=True, zero_frac=0.3) for _ in modes]
        g = _build(shapes, rng, dtype)
        added, grad = _penalty_update_and_grad(params, anchors, omegas, g, strength, decay,
                                               modes=tuple(modes))
        chex.assert_trees_all_equal_shapes_and_dtypes(added, params)
        chex.assert_trees_all_close(_np_tree(added), _np_tree(grad), **_tols(dtype))


@jax.jit
def _multi_task_and_singles(params, anchors, omegas, strength):
    multi = tr.init_penalty(params)
    singles = []
    for anchor, omega in zip(anchors, omegas):
        multi = tr.consolidate(multi, anchor, omega, mode="multi_task")
        singles.append(tr.consolidate(tr.init_penalty(params), anchor, omega, mode="replace"))
    tx = tr.quadratic_penalty(strength=strength)
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd = lambda s: tx.update(zeros, tx.init(params), params, penalty_state=s)[0]
    loss = lambda s: tr.penalty_loss(s, params, strength=strength)
    return ((loss(multi), upd(multi)),
            (sum(loss(s) for s in singles), jax.tree.map(lambda *u: sum(u), *map(upd, singles))))


@_settings(8)
@given(shapes=TREE_SHAPES, dtype=DTYPES, num_tasks=st.integers(1, 4),
       strength=st.floats(0.01, 10.0), seed=st.integers(0, 2 ** 16))
def test_multi_task_consolidate_equals_sum_of_single_task_penalties(shapes, dtype, num_tasks,
                                                                    strength, seed):
    """Σ_s (λ/2) Ω_s (θ − θ*_s)² folded into one (Ω, a, offset): same value and gradient."""
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(seed)
        params = _build(shapes, rng, dtype)
        anchors = [_build(shapes, rng, dtype) for _ in range(num_tasks)]
        omegas = [_build(shapes, rng, dtype, positive=True, zero_frac=0.3)
                  for _ in range(num_tasks)]
        multi, singles = _np_tree(_multi_task_and_singles(params, anchors, omegas, strength))
        chex.assert_trees_all_close(multi, singles, **_tols(dtype))


# ---- A-GEM -----------------------------------------------------------------------------------

_agem_project = jax.jit(tr.agem_project)   # one compile per pytree structure


def _agem_case(shapes, dtype, seed, g_scale, ref_scale, mix):
    """g, and a reference gradient of norm ``ref_scale`` along −mix·ĝ + (1 − mix)·b̂ (b random):
    mix near 1 is a strong conflict, mix = 0 an independent direction."""
    rng = np.random.default_rng(seed)
    g = _build(shapes, rng, dtype)
    b = _build(shapes, rng, dtype)
    gn, bn = (max(float(np.linalg.norm(CH.flat_vec(t))), 1e-30) for t in (g, b))
    u = jax.tree.map(lambda a, c: -mix * a / gn + (1 - mix) * c / bn, g, b)
    un = max(float(np.linalg.norm(CH.flat_vec(u))), 1e-30)
    return (jax.tree.map(lambda a: (g_scale * a).astype(dtype), g),
            jax.tree.map(lambda a: (ref_scale / un * a).astype(dtype), u))


def _agem_conflict_left(g, ref):
    """g̃ᵀg_ref / (‖g‖‖g_ref‖) for g̃ = agem_project(g, g_ref) (the input's norm: when g is
    nearly antiparallel to g_ref, g̃ ≈ 0 and its own direction is rounding noise)."""
    out = _agem_project(g, ref)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, g)
    o, r, gv = (CH.flat_vec(t).astype(np.float64) for t in (out, ref, g))
    if gv @ r >= 0:
        np.testing.assert_array_equal(o, gv)   # no conflict: unchanged
    return o @ r / max(np.linalg.norm(gv) * np.linalg.norm(r), 1e-300)


@_settings(10)
@given(shapes=TREE_SHAPES, dtype=DTYPES, seed=st.integers(0, 2 ** 16),
       g_scale=st.floats(1e-2, 1e3), ref_scale=st.floats(1.0, 1e3), mix=st.floats(0.0, 1.0))
def test_agem_project_leaves_no_conflict(shapes, dtype, seed, g_scale, ref_scale, mix):
    """‖g_ref‖ ≥ 1: the projected g̃ satisfies g̃ᵀg_ref ≥ −1e-5‖g‖‖g_ref‖."""
    with jax.enable_x64(dtype == "float64"):
        g, ref = _agem_case(shapes, dtype, seed, g_scale, ref_scale, mix)
        assert _agem_conflict_left(g, ref) >= -1e-5


@_settings(10)
@given(shapes=TREE_SHAPES, seed=st.integers(0, 2 ** 16), ref_scale=st.floats(1e-4, 2e-2),
       mix=st.floats(0.5, 1.0))
@example(shapes={"w": (3, 4)}, seed=0, ref_scale=1e-2, mix=0.9)
def test_agem_project_leaves_no_conflict_for_small_reference_gradients(shapes, seed, ref_scale,
                                                                        mix):
    g, ref = _agem_case(shapes, "float32", seed, 1.0, ref_scale, mix)
    assert _agem_conflict_left(g, ref) >= -1e-5


# ---- reservoir memory -----------------------------------------------------------------------

_reservoir_add = jax.jit(reservoir_add)
_OFFER = 4   # rows per call; the mask picks 0..4 of them (one compile per capacity)


@_settings(15)
@given(capacity=st.sampled_from([0, 1, 3, 5]),
       masks=st.lists(st.integers(0, 2 ** _OFFER - 1), min_size=1, max_size=6),
       seed=st.integers(0, 2 ** 16))
def test_reservoir_add_counts_and_never_stores_an_example_twice(capacity, masks, seed):
    """valid.sum() == min(seen, capacity); each stored example is one offered, stored once."""
    mem = init_memory(capacity, (1,), jnp.int32)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed), len(masks)))
    seen, offered = 0, set()
    for call, bits in enumerate(masks):
        ids = np.arange(call * _OFFER, (call + 1) * _OFFER)
        mask = (bits >> np.arange(_OFFER)) & 1 == 1
        rows = {"x": jnp.asarray(ids[:, None], jnp.int32), "label": jnp.asarray(ids % 3, jnp.int32),
                "task": jnp.zeros((_OFFER,), jnp.int32)}
        mem = _reservoir_add(mem, rows, keys[call], mask=jnp.asarray(mask))
        seen += int(mask.sum())
        offered |= set(ids[mask].tolist())
        valid = np.asarray(mem.valid)
        assert int(mem.seen) == seen
        assert int(valid.sum()) == min(seen, capacity)
        stored = np.asarray(mem.x)[valid, 0]
        assert len(set(stored.tolist())) == len(stored), stored          # no example twice
        assert set(stored.tolist()) <= offered, (stored, offered)        # only offered ones
        np.testing.assert_array_equal(np.asarray(mem.label)[valid], stored % 3)  # rows kept whole


# ---- the validation layer (chex underneath) ------------------------------------------------

@_settings(20)
@given(shapes=TREE_SHAPES, seed=st.integers(0, 2 ** 16), bad=st.sampled_from([np.nan, np.inf]))
def test_check_finite_names_the_offending_leaf(shapes, seed, bad):
    rng = np.random.default_rng(seed)
    tree = _build(shapes, rng, jnp.float32)
    validation.check_finite(tree, name="tree")
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    target = paths[rng.integers(len(paths))]
    poisoned = jax.tree_util.tree_map_with_path(
        lambda p, x: x.at[(0,) * x.ndim].set(bad) if p == target else x, tree)
    with pytest.raises(FloatingPointError, match="tree" + re.escape(jax.tree_util.keystr(target))):
        validation.check_finite(poisoned, name="tree")
    # traced values are skipped (they cannot be checked eagerly)
    jax.jit(lambda t: validation.check_finite(t, name="tree") or t)(poisoned)


@_settings(20)
@given(shapes=TREE_SHAPES, seed=st.integers(0, 2 ** 16))
def test_check_same_structure_names_the_leaf_with_another_shape(shapes, seed):
    rng = np.random.default_rng(seed)
    tree = _build(shapes, rng, jnp.float32)
    validation.check_same_structure(_np_tree(tree), tree, name="v")
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    target = paths[rng.integers(len(paths))]
    reshaped = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros(x.shape + (2,)) if p == target else x, tree)
    with pytest.raises(ValueError, match="v" + re.escape(jax.tree_util.keystr(target)) +
                       " has shape"):
        validation.check_same_structure(reshaped, tree, name="v")
    validation.check_same_structure(reshaped, tree, name="v", check_shapes=False)
    with pytest.raises(ValueError, match="v must have the pytree structure of params"):
        validation.check_same_structure({"extra": tree}, tree, name="v")


"""Tiny models, data and dense oracles for the curvature / analysis tests (float64 callers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from cljax.curvature import softmax_cross_entropy
from cljax.nn import MLP, as_model


def _rng(seed):
    return np.random.default_rng(seed)


def tiny_mlp(seed, *, n=7, d=5, hidden=4, classes=3, num_heads=1, scale=1.0):
    """MLP d-hidden-classes (flax) with random params and a batch of ``n`` examples, float64
    inside the ``x64`` fixture. Data and params come from numpy (no PRNG compilation)."""
    model = as_model(MLP((hidden,), classes, num_heads=num_heads))
    rng = _rng(seed)
    batch = {"x": jnp.asarray(rng.normal(size=(n, d)), float),
             "y": jnp.asarray(rng.integers(0, classes, n))}
    if num_heads > 1:
        batch["task"] = jnp.asarray(rng.integers(0, num_heads, n))
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)
    params = jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s.shape) / np.sqrt(s.shape[0]), float),
        shapes)
    return model.logits_fn, params, batch


def linear_model(seed, *, n=6, d=4, classes=3):
    """Logits linear in the params: ``x @ W + b``."""
    rng = _rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(d, classes)) * 0.5, float),
              "b": jnp.zeros((classes,), float)}
    batch = {"x": jnp.asarray(rng.normal(size=(n, d)), float),
             "y": jnp.asarray(rng.integers(0, classes, n))}
    return (lambda p, b: b["x"] @ p["w"] + p["b"]), params, batch


def mean_ce(logits_fn, batch):
    return lambda p: jnp.mean(softmax_cross_entropy(logits_fn(p, batch), batch))


def dense_hessian(loss_fn, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat))


def dense_ggn(logits_fn, params, batch):
    """(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n from the dense Jacobian."""
    flat, unravel = ravel_pytree(params)
    f = lambda q: logits_fn(unravel(q), batch)
    jac = np.asarray(jax.jit(jax.jacobian(f))(flat))          # [N, C, D]
    p = np.asarray(jax.nn.softmax(jax.jit(f)(flat), axis=-1))  # [N, C]
    h_out = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - np.einsum("nc,nd->ncd", p, p)
    return np.einsum("ncd,nce,nef->df", jac, h_out, jac) / jac.shape[0]


def flat_vec(tree):
    return np.asarray(ravel_pytree(tree)[0])


def random_like(seed, params):
    flat, unravel = ravel_pytree(params)
    return unravel(jnp.asarray(_rng(seed).normal(size=flat.shape), flat.dtype))


def quadratic_loss(a):
    """``½ θᵀ A θ`` on a params dict ``{"w": [D]}``; Hessian ``A``."""
    a = jnp.asarray(a)
    return lambda p: 0.5 * p["w"] @ a @ p["w"]


def symmetric_with_spectrum(seed, eigenvalues):
    d = len(eigenvalues)
    q, _ = np.linalg.qr(_rng(seed).normal(size=(d, d)))
    return (q * np.asarray(eigenvalues, float)) @ q.T

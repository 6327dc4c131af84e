"""Tiny models, data and dense oracles for the curvature / analysis tests (float64 callers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from cljax.curvature import softmax_cross_entropy
from cljax.nn import MLP, as_model


def tiny_mlp(key, *, n=7, d=5, hidden=4, classes=3, num_heads=1, scale=1.0):
    """MLP d-hidden-classes (flax), random float64 params and a batch of ``n`` examples."""
    model = as_model(MLP((hidden,), classes, num_heads=num_heads))
    kx, ky, kp, kt = jax.random.split(key, 4)
    batch = {"x": jax.random.normal(kx, (n, d), float),
             "y": jax.random.randint(ky, (n,), 0, classes)}
    if num_heads > 1:
        batch["task"] = jax.random.randint(kt, (n,), 0, num_heads)
    params = jax.jit(model.init)(kp, batch)
    params = jax.tree.map(lambda p: scale * p.astype(float), params)
    return model.logits_fn, params, batch


def linear_model(key, *, n=6, d=4, classes=3):
    """Logits linear in the params: ``x @ W + b``."""
    kx, ky, kw = jax.random.split(key, 3)
    params = {"w": jax.random.normal(kw, (d, classes), float) * 0.5,
              "b": jnp.zeros((classes,), float)}
    batch = {"x": jax.random.normal(kx, (n, d), float),
             "y": jax.random.randint(ky, (n,), 0, classes)}
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


def random_like(key, params):
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(key, flat.shape, flat.dtype))


def quadratic_loss(a):
    """``½ θᵀ A θ`` on a params dict ``{"w": [D]}``; Hessian ``A``."""
    a = jnp.asarray(a)
    return lambda p: 0.5 * p["w"] @ a @ p["w"]


def symmetric_with_spectrum(key, eigenvalues):
    d = len(eigenvalues)
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (d, d), float)))
    return (q * np.asarray(eigenvalues)) @ q.T

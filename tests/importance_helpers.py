"""Tiny models and brute-force oracles for the importance-estimator tests.

The oracles are written independently of :mod:`cljax.importance`: Python loops over examples
with ``jax.grad`` of one example's log-likelihood, explicit sums over classes, dense Jacobians,
and a hand-written forward pass that exposes every layer's input and pre-activation.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from cljax.nn import CNN, MLP, as_model

# ---------------------------------------------------------------------------------------------
# Models and data (create inside the x64 fixture for float64)
# ---------------------------------------------------------------------------------------------

def random_params(model, batch, seed=0, dtype=jnp.float64):
    """Params with model.init's structure, filled from numpy (no XLA compile: tests stay fast).

    Kernels ~ N(0, 1/fan_in); other leaves (biases, scales) ~ N(0, 0.3²) + (1 for LayerNorm
    scales), so every parameter matters."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    rng = np.random.RandomState(seed + 1000)

    def fill(path, s):
        name = _leaf_name(path)
        if name.endswith("kernel"):
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), dtype)
        base = 1.0 if name.endswith("scale") else 0.0
        return jnp.asarray(base + 0.3 * rng.normal(size=s.shape), dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _leaf_name(path):
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _data(seed, n, shape, classes, heads, dtype):
    rng = np.random.RandomState(seed)
    batch = {"x": jnp.asarray(rng.normal(size=(n,) + shape), dtype),
             "y": jnp.asarray(rng.randint(0, classes, size=n))}
    if heads > 1:
        batch["task"] = jnp.asarray(rng.randint(0, heads, size=n))
    return batch


def mlp_problem(n=7, d=5, widths=(4, 3), classes=3, heads=1, seed=0, dtype=jnp.float64):
    model = as_model(MLP(widths, classes, num_heads=heads))
    batch = _data(seed, n, (d,), classes, heads, dtype)
    return model, random_params(model, batch, seed, dtype), batch


def cnn_problem(n=5, hw=6, cin=2, classes=3, heads=1, seed=0, dtype=jnp.float64):
    model = as_model(CNN(classes, num_heads=heads, channels=(2,), hidden=4))
    batch = _data(seed, n, (hw, hw, cin), classes, heads, dtype)
    return model, random_params(model, batch, seed, dtype), batch


class Mixed(nn.Module):
    """Recognised layers in unusual configurations plus parameters no fast path knows."""

    @nn.compact
    def __call__(self, x, task=None):
        x = nn.Conv(3, (2, 2), strides=(2, 1), padding="VALID")(x)       # strided, VALID
        x = nn.tanh(nn.LayerNorm()(x))                                    # → fallback
        x = nn.Conv(2, (3, 3), padding=((1, 0), (2, 1)), use_bias=False,
                    kernel_dilation=(1, 2))(x)                            # explicit pad, dilation
        x = x.reshape(x.shape[0], -1, 2)                                  # [B, T, 2]
        x = nn.Dense(3)(nn.tanh(x))                                       # Dense over positions
        x = x.reshape(x.shape[0], -1)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))  # → fallback
        return nn.Dense(3)(x * scale)


def mixed_problem(n=4, seed=0, dtype=jnp.float64):
    model = as_model(Mixed())
    batch = _data(seed, n, (6, 5, 2), 3, 1, dtype)
    return model, random_params(model, batch, seed, dtype), batch


class Shared(nn.Module):
    """One Dense applied twice (weight sharing): its kernel is not layer-local → fallback."""

    @nn.compact
    def __call__(self, x, task=None):
        d = nn.Dense(x.shape[-1])
        h = nn.tanh(d(nn.tanh(d(x))))
        return nn.Dense(3)(h)


def shared_problem(n=5, seed=0, dtype=jnp.float64):
    model = as_model(Shared())
    batch = _data(seed, n, (4,), 3, 1, dtype)
    return model, random_params(model, batch, seed, dtype), batch


def plain_logits_fn(params, batch):
    """A non-flax model: tanh MLP over a dict of arrays."""
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"] * jnp.sin(params["s"])


def plain_problem(n=6, d=4, h=3, classes=3, seed=0, dtype=jnp.float64):
    rng = np.random.RandomState(seed)
    shapes = {"w1": (d, h), "b1": (h,), "w2": (h, classes), "b2": (classes,), "s": (classes,)}
    params = {k: jnp.asarray(rng.normal(size=v), dtype) for k, v in shapes.items()}
    return plain_logits_fn, params, _data(seed, n, (d,), classes, 1, dtype)


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------

def _example(batch, n):
    return {k: v[n:n + 1] for k, v in batch.items()}


@functools.cache
def _oracle_fns(logits_fn):
    """Jitted single-example pieces (compiled once per model; eager op-by-op is slow)."""

    def logp(params, ex, y):
        return jax.nn.log_softmax(logits_fn(params, ex)[0])[y]

    grad_logp = jax.jit(jax.grad(logp))
    probs = jax.jit(lambda params, ex: jax.nn.softmax(logits_fn(params, ex)[0]))
    grad_sqnorm = jax.jit(jax.grad(lambda params, ex: jnp.sum(logits_fn(params, ex)[0] ** 2)))
    return grad_logp, probs, grad_sqnorm


def per_example_grad(logits_fn, params, batch, n, y):
    """∂ log p(y | x_n) / ∂θ for one example (jax.grad of that example alone)."""
    return _oracle_fns(logits_fn)[0](params, _example(batch, n), y)


def oracle_empirical(logits_fn, params, batch):
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
        g = per_example_grad(logits_fn, params, batch, i, int(batch["y"][i]))
        acc = jax.tree.map(lambda a, b: a + b ** 2, acc, g)
    return jax.tree.map(lambda a: a / n, acc)


def oracle_argmax(logits_fn, params, batch):
    """(1/N) Σ_n g_{n,ŷ_n}² with ŷ_n the argmax of example n's probabilities (a loop)."""
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
        top = int(jnp.argmax(_oracle_fns(logits_fn)[1](params, _example(batch, i))))
        g = per_example_grad(logits_fn, params, batch, i, top)
        acc = jax.tree.map(lambda a, b: a + b ** 2, acc, g)
    return jax.tree.map(lambda a: a / n, acc)


def _class_moments(logits_fn, params, batch, i):
    """(Σ_y p_y g_y², Σ_y p_y g_y⁴) for example i, an explicit loop over classes."""
    p = _oracle_fns(logits_fn)[1](params, _example(batch, i))
    m2 = jax.tree.map(jnp.zeros_like, params)
    m4 = jax.tree.map(jnp.zeros_like, params)
    for y in range(p.shape[0]):
        g = per_example_grad(logits_fn, params, batch, i, y)
        m2 = jax.tree.map(lambda a, b: a + p[y] * b ** 2, m2, g)
        m4 = jax.tree.map(lambda a, b: a + p[y] * b ** 4, m4, g)
    return m2, m4


def oracle_exact(logits_fn, params, batch):
    """(1/N) Σ_n Σ_y p(y|x_n) g_{n,y}², an explicit sum over classes."""
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
        m2, _ = _class_moments(logits_fn, params, batch, i)
        acc = jax.tree.map(jnp.add, acc, m2)
    return jax.tree.map(lambda a: a / n, acc)


def oracle_exact_fourth_moment(logits_fn, params, batch):
    """(1/N) Σ_n Var_{y~p}[g_{n,y}²]: the per-draw variance of the true-Fisher MC estimator."""
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
        m2, m4 = _class_moments(logits_fn, params, batch, i)
        acc = jax.tree.map(lambda a, s2, s4: a + s4 - s2 ** 2, acc, m2, m4)
    return jax.tree.map(lambda a: a / n, acc)


def oracle_mas(logits_fn, params, batch):
    n = batch["x"].shape[0]
    acc = jax.tree.map(jnp.zeros_like, params)
    for i in range(n):
        g = _oracle_fns(logits_fn)[2](params, _example(batch, i))
        acc = jax.tree.map(lambda a, b: a + jnp.abs(b), acc, g)
    return jax.tree.map(lambda a: a / n, acc)


def dense_ggn(logits_fn, params, batch):
    """(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n as a dense matrix over ravelled params."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    n = batch["x"].shape[0]
    total = jnp.zeros((flat.size, flat.size), flat.dtype)
    for i in range(n):
        ex = _example(batch, i)
        f = lambda v: logits_fn(unravel(v), ex)[0]
        j = jax.jacobian(f)(flat)
        p = jax.nn.softmax(f(flat))
        total = total + j.T @ (jnp.diag(p) - jnp.outer(p, p)) @ j
    return total / n, unravel


# Hand-written forward of cljax.nn.MLP (single head) exposing layer inputs and pre-activations.
def mlp_layer_quantities(params, batch, ys):
    """Per example: list over Dense_l of (ā_n, g_n) with g = ∂ log p(y|x)/∂s (brute force)."""
    names = sorted(params, key=lambda s: int(s.split("_")[1]))
    out = []
    for i in range(batch["x"].shape[0]):
        x = batch["x"][i]

        def forward(eps):
            h, acts = x, []
            for l, name in enumerate(names):
                acts.append(h)
                s = h @ params[name]["kernel"] + params[name]["bias"] + eps[l]
                h = jax.nn.relu(s) if l < len(names) - 1 else s
            return jax.nn.log_softmax(h)[ys[i]], acts

        eps = [jnp.zeros(params[nm]["kernel"].shape[1], x.dtype) for nm in names]
        g, acts = jax.grad(forward, has_aux=True)(eps)
        out.append([(jnp.append(a, 1.0), gl) for a, gl in zip(acts, g)])
    return names, out


def oracle_kfac_mlp(params, batch, ys):
    names, q = mlp_layer_quantities(params, batch, ys)
    n = len(q)
    res = {}
    for l, name in enumerate(names):
        a = sum(jnp.outer(q[i][l][0], q[i][l][0]) for i in range(n)) / n
        g = sum(jnp.outer(q[i][l][1], q[i][l][1]) for i in range(n)) / n
        res[name] = (a, g)
    return res


def oracle_kfac_cnn_first_conv(params, batch, ys):
    """Brute-force KFC factors of CNN's Conv_0 (3×3 SAME, stride 1) with explicit loops.

    A = (1/N) Σ_n Σ_t ā_{n,t} ā_{n,t}ᵀ (patches in (kh, kw, cin) order, bias last),
    G = (1/N) Σ_n (1/T) Σ_t g_{n,t} g_{n,t}ᵀ, g = ∂ log p(y|x)/∂(Conv_0 output at t).
    """
    model = as_model(CNN(params["Dense_1"]["kernel"].shape[1], channels=(2,), hidden=4))
    x = np.asarray(batch["x"])
    n, h, w, cin = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    a_sum = 0.0
    g_sum = 0.0
    cout = params["Conv_0"]["kernel"].shape[-1]
    for i in range(n):
        for r in range(h):
            for c in range(w):
                patch = np.append(xp[i, r:r + 3, c:c + 3, :].reshape(-1), 1.0)
                a_sum = a_sum + np.outer(patch, patch)

        def logp(eps):
            def icpt(next_fun, args, kwargs, ctx):
                out = next_fun(*args, **kwargs)
                if ctx.method_name == "__call__" and ctx.module.name == "Conv_0":
                    out = out + eps
                return out
            with nn.intercept_methods(icpt):
                lg = model.logits_fn(params, {"x": batch["x"][i:i + 1]})
            return jax.nn.log_softmax(lg[0])[ys[i]]

        g = np.asarray(jax.grad(logp)(jnp.zeros((1, h, w, cout), x.dtype)))[0]
        for r in range(h):
            for c in range(w):
                g_sum = g_sum + np.outer(g[r, c], g[r, c])
    return a_sum / n, g_sum / (n * h * w)


def rel_err(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))
    den = max(float(jnp.max(jnp.abs(y))) for y in lb)
    return num / max(den, 1e-300)

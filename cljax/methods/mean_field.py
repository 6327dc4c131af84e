"""Mean-field Gaussian networks: VCL's posterior family (Nguyen, Li, Bui & Turner 2018, ICLR, §2
and §5.1; Blundell et al. 2015), built from any configured network of flax ``Dense`` / ``Conv``
layers.

Every weight and bias w has q(w) = N(μ, σ²) with σ² = exp(v): the trained parameters are the tree
``{"mean": μ, "log_var": v}`` (:data:`MEAN`, :data:`LOG_VAR`), each shaped like the configured
network's parameters, so the layer helpers of :mod:`cljax.layers` still find the layers under
``"mean"``.

**Local reparameterisation** (Kingma, Salimans & Welling 2015) for Dense layers: instead of one
weight sample per batch, each layer's *pre-activations* are sampled, independently per example:
``b = x W + c`` has under q the Gaussian pre-activation ``N(x μ_W + μ_c, x² σ²_W + σ²_c)``, so
``b = x μ_W + μ_c + √(x² σ²_W + σ²_c) ⊙ ε``, ε ~ N(0, I) — per example exactly the distribution
of sampling the weights (the units' weights are independent), with less gradient variance.
**Conv layers** draw their kernel and bias once per call, shared by the batch: a kernel is shared
by every position of an image, so independent noise per output position (local
reparameterisation) would not be q's distribution (it drops the correlation the shared kernel
makes between positions). The configured module runs under ``flax.linen.intercept_methods``: a Dense call
computes its mean output with the means, its variance by applying the same layer to ``x²`` with
the variances as kernel and bias, and adds the noise; a Conv call applies the layer with drawn
weights (one key per call, folded from the sample's key in call order). Nothing of the
architecture is copied (widths, heads, activations are the configured module's).

:func:`gaussian_kl` is the closed form KL(q ‖ p) between two such factorised Gaussians, with an
optional mask (VCL's heads not yet seen are not in the objective).
"""
from __future__ import annotations

from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.nn.model import Model
from cljax.types import Array, Batch, Params, PRNGKey

MEAN = "mean"
LOG_VAR = "log_var"
INIT_LOG_VAR = -6.0          # Nguyen et al.'s initial log-variance (their code: ddm/alg)
LAYERS = (nn.Dense, nn.Conv)


def mean_field_params(params: Params, log_var: float = INIT_LOG_VAR) -> dict[str, Params]:
    """``{"mean": params, "log_var": log_var everywhere}``: a posterior centred on ``params``."""
    return {MEAN: params, LOG_VAR: jax.tree.map(lambda p: jnp.full_like(p, log_var), params)}


def check_mean_field(params: Any) -> None:
    """``params`` is a ``{"mean", "log_var"}`` tree with two parts of one structure."""
    if not isinstance(params, dict) or set(params) != {MEAN, LOG_VAR}:
        raise ValueError("mean-field params must be the dict {'mean': μ, 'log_var': v} "
                         f"(mean_field_params); got {type(params).__name__}"
                         + (f" with keys {sorted(params)}" if isinstance(params, dict) else ""))
    if jax.tree.structure(params[MEAN]) != jax.tree.structure(  # type: ignore[operator]  # jaxlib has no stub for PyTreeDef
            params[LOG_VAR]):
        raise ValueError("params['mean'] and params['log_var'] must have the same structure")


def gaussian_kl(q_mean: Params, q_log_var: Params, p_mean: Params, p_log_var: Params,
                mask: Params | None = None) -> Array:
    """KL(q ‖ p) = Σ_i ½ [v_p − v_q + (e^{v_q} + (μ_q − μ_p)²) / e^{v_p} − 1] of factorised
    Gaussians (v: log-variances), summed over the entries where ``mask`` (same structure, 0/1)
    is 1 (every entry when None)."""
    def one(mq, vq, mp, vp):
        return 0.5 * (vp - vq + jnp.exp(vq - vp) + jnp.square(mq - mp) * jnp.exp(-vp) - 1.0)

    terms = jax.tree.map(one, q_mean, q_log_var, p_mean, p_log_var)
    if mask is not None:
        terms = jax.tree.map(lambda t, m: t * m, terms, mask)
    total = jnp.zeros((), jnp.result_type(*jax.tree.leaves(q_mean)))
    for t in jax.tree.leaves(terms):
        total = total + jnp.sum(t)
    return total


def sample_params(params: dict[str, Params], key: PRNGKey) -> Params:
    """One draw of the weights themselves, θ = μ + σ ⊙ ε (shared by every example it is applied
    to: a prediction that does not depend on which other examples share the batch)."""
    leaves, treedef = jax.tree.flatten(params[MEAN])
    keys = jax.random.split(key, len(leaves))
    drawn = [m + jnp.exp(0.5 * v) * jax.random.normal(k, m.shape, m.dtype)
             for m, v, k in zip(leaves, jax.tree.leaves(params[LOG_VAR]), keys)]
    return jax.tree.unflatten(treedef, drawn)


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def sampled_logits(base: Model, params: dict[str, Params], batch: Batch, key: PRNGKey) -> Array:
    """One draw of the network's logits under q (module docstring): every Dense output is
    ``mean + √var ⊙ ε``, ε drawn per example and unit (local reparameterisation); every Conv
    applies one draw of its weights."""
    log_var = params[LOG_VAR]
    calls = [0]
    inside = [False]

    def sample(next_fun, args, kwargs, context):
        module = context.module
        if inside[0] or context.method_name != "__call__" or not isinstance(module, LAYERS):
            return next_fun(*args, **kwargs)
        k = jax.random.fold_in(key, calls[0])
        calls[0] += 1
        lv = _subtree(log_var, tuple(module.path))
        inside[0] = True
        try:
            if isinstance(module, nn.Conv):      # one draw of the kernel, shared by the batch
                drawn = sample_params({MEAN: module.variables["params"], LOG_VAR: lv}, k)
                return module.clone(parent=None).apply({"params": drawn}, *args, **kwargs)
            variances = jax.tree.map(jnp.exp, lv)
            var_out = cast(Array, module.clone(parent=None).apply(
                {"params": variances}, jnp.square(args[0]), *args[1:], **kwargs))
        finally:
            inside[0] = False
        mean_out = next_fun(*args, **kwargs)
        return mean_out + jnp.sqrt(var_out) * jax.random.normal(k, mean_out.shape,
                                                                mean_out.dtype)

    with nn.intercept_methods(sample):
        return base.logits_fn(params[MEAN], batch)


def check_layers(base: Model, mean: Params, batch: Batch) -> None:
    """Every parameter of ``mean`` belongs to a Dense / Conv layer the network calls (the
    mean-field family covers only those): a ``ValueError`` naming the others."""
    covered: set[tuple[str, ...]] = set()

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, LAYERS):
            covered.add(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):   # a call, not eval_shape: a cached trace runs no Python
        base.logits_fn(mean, batch)
    paths = [tuple(getattr(k, "key", str(k)) for k in path)
             for path, _ in jax.tree_util.tree_leaves_with_path(mean)]
    others = sorted("/".join(p) for p in paths if p[:-1] not in covered)
    if others:
        raise ValueError("a mean-field network needs every parameter in a flax Dense / Conv "
                         f"layer; these are not: {others}")


def mean_field_model(base: Model, *, init_log_var: float = INIT_LOG_VAR) -> Model:
    """The mean-field Gaussian version of ``base``: ``init`` gives ``{"mean": base.init(...),
    "log_var": init_log_var}``; ``logits_fn`` is the network at the means (what estimators and
    analysis tools see); ``train_logits_fn(params, batch, key)`` one draw under q
    (:func:`sampled_logits`)."""

    def init(key: PRNGKey, batch: Batch) -> Params:
        mean = base.init(key, batch)
        check_layers(base, mean, batch)
        return mean_field_params(mean, init_log_var)

    def logits_fn(params: Params, batch: Batch) -> Array:
        return base.logits_fn(params[MEAN], batch)

    def train_logits_fn(params: Params, batch: Batch, key: PRNGKey) -> Array:
        return sampled_logits(base, params, batch, key)

    return Model(base.module, init, logits_fn, train_logits_fn)


__all__ = ["MEAN", "LOG_VAR", "INIT_LOG_VAR", "mean_field_params", "check_mean_field",
           "gaussian_kl", "sampled_logits", "sample_params", "check_layers", "mean_field_model"]

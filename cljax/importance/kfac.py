"""K-FAC Kronecker factors per layer and products with them.

Martens & Grosse 2015 (ICML), "Optimizing neural networks with Kronecker-factored approximate
curvature", §3: for a dense layer s = ā W̄ (flax layout: W̄ = [W; b] is [in+1, out],
ā = [a, 1]) the Fisher block is approximated by A ⊗ G with

    A = E[ā āᵀ]  ([in+1, in+1]; [in, in] without bias),   G = E[g gᵀ]  ([out, out]),

g = ∂ log p(y|x) / ∂s, y sampled from the model (``fisher="true"``), every class y weighted by
p(y|x) (``fisher="exact"``: G = E_x Σ_y p(y|x) g_y g_yᵀ, the expectation the sampled labels
estimate; C backward passes) or the dataset label (``fisher="empirical"``). In this layout the quadratic form is
vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄) = tr(ΔW̄ᵀ A ΔW̄ G) (row-major vec), the matrix-vector product is A ΔW̄ G
and (A ⊗ G + λI)⁻¹ is applied through the eigendecompositions of A and G.

**Conv layers** (KFC, Grosse & Martens 2016, ICML, §3, their Ω and Γ under the IAD/SH/SUD
assumptions): with
im2col patches ā_{n,t} ([kh·kw·cin (+1)], the kernel's row-major order, t over the T output
positions) and output cotangents g_{n,t},

    A = (1/N) Σ_n Σ_t ā_{n,t} ā_{n,t}ᵀ   (a *sum* over positions),
    G = (1/N) Σ_n (1/T) Σ_t g_{n,t} g_{n,t}ᵀ   (a *mean* over positions),

so that A ⊗ G ≈ E[(Σ_t ā_t g_tᵀ)⊗²] when positions are uncorrelated (SUD) and homogeneous (SH).
A dense layer applied to [B, T, in] inputs is treated the same way (T = 1 for ordinary inputs).

**Scale.** Both factors are means over the N examples of ``batch``: A ⊗ G approximates the
per-example mean Fisher, the same scale as :func:`cljax.importance.exact_fisher_diagonal`.

**Recognised layers.** Flax linen ``nn.Dense`` and ``nn.Conv`` (see :mod:`cljax.importance.estimation`);
the factor dict is keyed by the '/'-joined path of the layer's parameters in ``params`` (e.g.
``"Dense_0"``, ``"Encoder_0/Dense_1"``). Parameters in no recognised layer get **no factor**: the
helpers below treat them as having zero curvature (matvec → 0, quadratic form → 0, damped inverse →
v / damping). A model with no recognised layer raises ``ValueError``.

Across tasks a sum of Kronecker products is not a Kronecker product; this module returns one
task's factors and leaves combining them (per-task lists, or summed factors à la Ritter et al. 2018)
to the caller.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from cljax import validation
from cljax._linalg import eigh
from cljax.importance.estimation import estimate
from cljax.layers import check_factors, get_layer, pack, param_layers, set_layer, unpack
from cljax.types import Array, Batch, KFACFactors, LogitsFn, Params, PRNGKey
from cljax.validation import check_choice

FISHER_TYPES = ("true", "exact", "empirical")


def kfac_factors(logits_fn: LogitsFn, params: Params, batch: Batch, key: PRNGKey | None = None, *,
                 fisher: str = "true", num_samples: int = 1, chunk_size: int | None = None,
                 sharding: NamedSharding | None = None) -> dict[str, KFACFactors]:
    """K-FAC factors {layer name: KFACFactors(A, G)} (Martens & Grosse 2015 §3; KFC for conv).

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]`` built from flax Dense/Conv layers.
      params: the pytree ``logits_fn`` expects.
      batch: dict with ``x`` [N, ...], ``y`` [N] (needed for ``fisher="empirical"``), optional
        ``task``.
      key: PRNG key for sampling y ~ p(· | x) (``fisher="true"``; draw n uses ``fold_in(key, n)``).
      fisher: ``"true"`` (sampled labels, ``num_samples`` per example, G averaged over them),
        ``"exact"`` (every class, weighted by its probability: no sampling noise, which matters
        for a confident model whose sampled label is almost never wrong) or ``"empirical"``
        (dataset labels).
      chunk_size: examples per chunk inside ``jit``; ``None`` = all N; padded with zero weights.
      sharding: the examples' ``NamedSharding`` when ``batch`` is split over devices (found
        by itself on a concrete sharded batch; pass it inside ``jit``): each device then
        sums its own examples, ``chunk_size`` per device (:mod:`cljax.chunking`).

    Returns:
      dict name → ``KFACFactors(A, G)``; both means over examples (see module docstring for conv).
    """
    check_choice(fisher, FISHER_TYPES, name="fisher")
    raw = estimate("kfac_" + fisher, logits_fn, params, batch, key, num_samples=num_samples,
                   chunk_size=chunk_size, sharding=sharding, require_y=fisher == "empirical",
                   fn_name="kfac_factors")
    return {name: KFACFactors(a, g) for name, (a, g) in raw.items()}


def _layer_nodes(factors: Mapping[str, KFACFactors], tree: Params
                 ) -> list[tuple[str, Array, Array, dict[str, Array]]]:
    """(name, A, G, layer node) per factored layer, after checking (:func:`cljax.layers.
    check_factors`) that each factor names a layer of ``tree`` whose W̄ = :func:`cljax.layers.pack`
    of the node is ``[rows, out]`` with A ``[rows, rows]`` and G ``[out, out]``."""
    shapes = param_layers(tree)
    check_factors(factors, {k: (s.rows, s.out) for k, s in shapes.items()})
    return [(name, f[0], f[1], jax.tree.map(jnp.asarray, dict(get_layer(tree, name))))
            for name, f in factors.items()]


def kfac_quadratic_form(factors: Mapping[str, KFACFactors], delta_params: Params) -> Array:
    """Σ_layers tr(ΔW̄ᵀ A ΔW̄ G) = Σ vec(ΔW̄)ᵀ (A ⊗ G) vec(ΔW̄) (a scalar).

    ``delta_params`` has the params' structure (e.g. θ − θ*); ΔW̄ stacks the kernel (reshaped to
    [in, out]) over the bias row (:func:`cljax.layers.pack`). Leaves in no factored layer
    contribute 0.
    """
    layers = _layer_nodes(factors, delta_params)
    total = jnp.zeros((), jnp.result_type(*[n["kernel"].dtype for *_, n in layers])
                      if layers else jnp.float32)
    for _, a, g, node in layers:
        w = pack(node)
        total = total + jnp.sum(w * (a @ w @ g))
    return total


def _write_layers(tree: Params, layers: list[tuple[str, Array, Array, dict[str, Array]]],
                  mats: list[Array]) -> Params:
    """``tree`` with each layer's node replaced by :func:`cljax.layers.unpack` of its W̄."""
    for (name, _, _, node), m in zip(layers, mats):
        tree = set_layer(tree, name, unpack(m, node))
    return tree


def kfac_matvec(factors: Mapping[str, KFACFactors], params_like: Params) -> Params:
    """(A ⊗ G) v per layer, i.e. A V̄ G in the flax [in(+1), out] layout; a params-shaped pytree.

    This is the gradient of ½ :func:`kfac_quadratic_form`. Leaves in no factored layer → zeros.
    """
    layers = _layer_nodes(factors, params_like)
    mats = [a @ pack(node) @ g for _, a, g, node in layers]
    return _write_layers(jax.tree.map(jnp.zeros_like, params_like), layers, mats)


def kfac_damped_inverse_matvec(factors: Mapping[str, KFACFactors], params_like: Params, *,
                               damping: float) -> Params:
    """(A ⊗ G + damping·I)⁻¹ v per layer, exactly, via A = Q_A Λ_A Q_Aᵀ and G = Q_G Λ_G Q_Gᵀ.

    Per layer: Q_A [(Q_Aᵀ V̄ Q_G) / (λ_A λ_Gᵀ + damping)] Q_Gᵀ (Martens & Grosse 2015 §6.3 use the
    factored Tikhonov approximation instead; this is the exact damped inverse). Leaves in no
    factored layer have zero curvature and are divided by ``damping``. Requires ``damping > 0``.
    """
    if validation.is_concrete(damping) and not float(damping) > 0:
        raise ValueError(f"damping must be > 0; got {damping}")
    layers = _layer_nodes(factors, params_like)
    mats = []
    for _, a, g, node in layers:
        w = pack(node)
        la, qa = eigh(a)
        lg, qg = eigh(g)
        la, lg = jnp.maximum(la, 0), jnp.maximum(lg, 0)  # PSD up to round-off
        mats.append(qa @ ((qa.T @ w @ qg) / (la[:, None] * lg[None, :] + damping)) @ qg.T)
    return _write_layers(jax.tree.map(lambda v: jnp.asarray(v) / damping, params_like),
                         layers, mats)


__all__ = ["kfac_factors", "kfac_quadratic_form", "kfac_matvec", "kfac_damped_inverse_matvec"]

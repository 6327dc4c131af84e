"""Diagonal Fisher information estimators (true, exact, empirical).

For softmax cross-entropy with p = softmax(f(x; θ)) and g_y = ∂ log p(y|x) / ∂θ (one example):

* true Fisher (Kirkpatrick et al. 2017, PNAS, the F_i of EWC's penalty, eq. 3; Martens 2020 "New
  insights and perspectives on the natural gradient method" for the names):
  F_i = E_{x~D} E_{y~p_θ(· | x)} [g_{y,i}²], the inner expectation by Monte Carlo;
* exact Fisher: the inner expectation in closed form, Σ_y p(y|x) g_{y,i}² — equal to the diagonal
  of the generalised Gauss–Newton matrix Jᵀ(diag(p) − ppᵀ)J for softmax CE (Martens 2020);
* empirical Fisher: y = the dataset label (Kunstner et al. 2019 explain its bias);
* argmax Fisher: y = the model's most probable class, argmax_y p(y|x) (Hsu et al. 2018's code
  estimates EWC's Fisher so: GT-RIPL/Continual-Learning-Benchmark ``agents/regularization.py``).

**Scale.** Every estimator returns the **mean over the examples of ``batch`` of per-example squared
gradients**, (1/N) Σ_n g_{n,i}², never the square of a minibatch-mean gradient (≈ F/B) nor that
times B. Multiply by N for the sum-over-data Fisher of a Laplace approximation.

Computation: see :mod:`cljax.importance.estimation` — chunks of ``chunk_size`` examples inside one
``jit`` (``lax.scan``), N padded to a multiple of ``chunk_size`` with zero-weighted copies of the
first example (no divisibility requirement); flax ``nn.Dense`` / ``nn.Conv`` layers take a fast
path (captured layer inputs and output cotangents), all other parameters a ``vmap``-over-examples
fallback. ``implementation="vmap"`` forces the fallback everywhere.

Compilation: ``logits_fn`` is a static argument of the internal ``jit`` (hashed by identity), so
reuse one function object (e.g. ``model.logits_fn``) — a new lambda per call recompiles. A new
batch or new params of the same shapes never recompile; the estimators also work inside a
user's ``jit`` (value checks — labels, NaN — then only run on concrete inputs).
"""
from __future__ import annotations

from jax.sharding import NamedSharding

from cljax.importance.estimation import estimate
from cljax.types import Batch, Importance, LogitsFn, Params, PRNGKey


def empirical_fisher_diagonal(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                              chunk_size: int | None = None, implementation: str = "auto",
                              sharding: NamedSharding | None = None) -> Importance:
    """Empirical Fisher diagonal: (1/N) Σ_n (∂ log p(y_n|x_n) / ∂θ)², y_n = the dataset label.

    Args:
      logits_fn: ``logits_fn(params, batch) -> logits[B, C]``; must treat examples independently.
      params: the pytree ``logits_fn`` expects.
      batch: dict with ``x`` [N, ...], int labels ``y`` [N] in [0, C), optional ``task`` [N].
      chunk_size: examples per chunk (memory bound); ``None`` = all N at once. N need not be a
        multiple: the last chunk is padded with zero-weight examples.
      implementation: ``"auto"`` (fast layer path where recognised) or ``"vmap"`` (fallback only).
      sharding: the examples' ``NamedSharding`` when ``batch`` is split over devices (found
        by itself on a concrete sharded batch; pass it inside ``jit``): each device then
        sums its own examples, ``chunk_size`` per device (:mod:`cljax.chunking`).

    Returns:
      A pytree like ``params`` (same shapes/dtypes): the per-example mean of squared gradients.

    Raises ``ValueError`` for labels outside [0, C) when the labels are concrete; inside ``jit``
    / ``vmap`` (traced labels, nothing can be raised) the whole estimate is NaN instead, never a
    silently wrong sum.
    """
    return estimate("empirical", logits_fn, params, batch, chunk_size=chunk_size,
                    implementation=implementation, sharding=sharding, require_y=True,
                    fn_name="empirical_fisher_diagonal")


def true_fisher_diagonal(logits_fn: LogitsFn, params: Params, batch: Batch, key: PRNGKey, *,
                         num_samples: int = 1, chunk_size: int | None = None,
                         implementation: str = "auto",
                         sharding: NamedSharding | None = None) -> Importance:
    """True (model) Fisher diagonal by Monte Carlo: (1/N) Σ_n (1/S) Σ_s (∂ log p(ŷ_ns|x_n)/∂θ)².

    ŷ_ns ~ softmax(logits_n), ``num_samples`` = S draws per example (not the argmax label). The
    draw for example n uses ``jax.random.fold_in(key, n)`` (n = its index in ``batch``), so the
    result depends neither on ``chunk_size`` nor on the devices. ``batch['y']`` is not used. Unbiased for
    :func:`exact_fisher_diagonal`, with variance O(1/(N·S)). Same scale and arguments as
    :func:`empirical_fisher_diagonal` (mean over examples).
    """
    return estimate("true", logits_fn, params, batch, key, num_samples=num_samples,
                    chunk_size=chunk_size, implementation=implementation, sharding=sharding,
                    require_y=False, fn_name="true_fisher_diagonal")


def exact_fisher_diagonal(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                          chunk_size: int | None = None, implementation: str = "auto",
                          sharding: NamedSharding | None = None) -> Importance:
    """Exact Fisher diagonal (1/N) Σ_n Σ_y p(y|x_n) (∂ log p(y|x_n)/∂θ)² — the GGN diagonal.

    The expectation over y is computed in closed form with C output directions √p_y (p − e_y),
    back-propagated (as layer-output cotangents only) through the layers above each weight; for a
    dense layer the C squared outer products are summed before one matmul. ``batch['y']`` is not
    used. Same scale and arguments as :func:`empirical_fisher_diagonal` (mean over examples).

    Example:
        >>> import jax.numpy as jnp
        >>> from cljax.importance import exact_fisher_diagonal
        >>> logits_fn = lambda params, batch: batch["x"] @ params["w"]
        >>> params = {"w": jnp.zeros((2, 2))}   # uniform predictions, p = (1/2, 1/2)
        >>> batch = {"x": jnp.array([[1.0, 2.0]])}
        >>> exact_fisher_diagonal(logits_fn, params, batch)["w"].round(4)   # x_i² p_c (1 − p_c)
        Array([[0.25, 0.25],
               [1.  , 1.  ]], dtype=float32)
    """
    return estimate("exact", logits_fn, params, batch, chunk_size=chunk_size,
                    implementation=implementation, sharding=sharding, require_y=False,
                    fn_name="exact_fisher_diagonal")


def argmax_fisher_diagonal(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                           chunk_size: int | None = None, implementation: str = "auto",
                           sharding: NamedSharding | None = None) -> Importance:
    """Argmax-label Fisher diagonal (1/N) Σ_n (∂ log p(ŷ_n|x_n) / ∂θ)², ŷ_n = argmax_y p(y|x_n):
    the empirical Fisher on the model's own most probable labels, as Hsu et al. 2018's code
    estimates EWC's (a biased stand-in for :func:`true_fisher_diagonal`: the other classes'
    terms are dropped). ``batch['y']`` is not used. Same scale and arguments as
    :func:`empirical_fisher_diagonal` (mean over examples)."""
    return estimate("argmax", logits_fn, params, batch, chunk_size=chunk_size,
                    implementation=implementation, sharding=sharding, require_y=False,
                    fn_name="argmax_fisher_diagonal")


__all__ = ["empirical_fisher_diagonal", "true_fisher_diagonal", "exact_fisher_diagonal",
           "argmax_fisher_diagonal"]

"""Lanczos iteration with full reorthogonalisation, and the top eigenvalues of a Hessian / GGN.

Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations* §10.1) builds an orthonormal basis
``V_m = [v_1 … v_m]`` of the Krylov space ``span{v, Av, …, A^{m−1}v}`` in which ``A`` is the
tridiagonal ``T_m = V_mᵀ A V_m`` (diagonal ``alphas``, off-diagonal ``betas``). The eigenvalues of
``T_m`` (Ritz values) converge to the extreme eigenvalues of ``A`` in far fewer matrix-vector
products than power iteration (as used by Mirzadeh et al. 2020), which is why it is the tool of
choice for λ_max of a network Hessian (Ghorbani et al. 2019; Yao et al. 2020).

Every new vector is reorthogonalised against the whole basis (twice, "twice is enough"), so the
basis stays orthonormal to working precision and no spurious copies of converged eigenvalues
appear. If the Krylov space becomes invariant (``β ≈ 0``) the iteration restarts from a random
vector orthogonal to the basis and records ``β = 0``: ``T`` is then block diagonal and its
eigenvalues are still eigenvalues of ``A``.

All functions work on pytrees (flattened internally with ``jax.flatten_util.ravel_pytree``). The
basis costs ``(num_iters + 1) × D`` floats of memory.
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from cljax._linalg import eigh
from cljax.curvature.hvp import check_finite, hvp
from cljax.types import Array, LossFn, Params, PRNGKey
from cljax.validation import check_positive_int, check_same_structure, is_concrete

Which = Literal["largest", "magnitude"]


class LanczosResult(NamedTuple):
    """``alphas: [m]`` (diagonal of T), ``betas: [m−1]`` (off-diagonal; 0 marks a restart),
    ``basis``: the Lanczos vectors as a pytree with a leading axis ``m`` (or ``None``)."""

    alphas: Array
    betas: Array
    basis: Any = None


class EigenResult(NamedTuple):
    """Result of :func:`top_eigenvalues` / :func:`top_eigenvalues_matvec`.

    * ``eigenvalues: [k]`` — ordered as selected by ``which`` (descending λ for ``"largest"``,
      descending :math:`|λ|` for ``"magnitude"``), signs kept.
    * ``eigenvectors``: unit-norm Ritz vectors as a pytree with a leading axis ``k``, or ``None``.
    * ``residuals: [k]`` — ``‖A y_i − θ_i y_i‖ = β_m |e_mᵀ s_i|``; ``|λ − θ_i| ≤ residual_i``.
    * ``num_matvecs`` — Lanczos iterations run (= matrix-vector products).
    * ``converged`` — every residual ≤ ``tol · |θ_i|`` (always ``False`` when ``tol`` is None,
      unless the Krylov space reached the full dimension).
    """

    eigenvalues: Array
    eigenvectors: Any
    residuals: Array
    num_matvecs: int
    converged: bool


# --------------------------------------------------------------------------------------------
# core iteration on flat vectors
# --------------------------------------------------------------------------------------------

class _State(NamedTuple):
    basis: Array   # [m + 1, D]; row i is v_{i+1}; rows not reached yet are 0
    alphas: Array  # [m]
    betas: Array   # [m]; betas[i] couples rows i and i + 1


def _orthogonalise(basis: Array, w: Array, num_rows) -> Array:
    """Project ``w`` off the first ``num_rows`` rows of ``basis`` (modified Gram–Schmidt, run
    twice: "twice is enough"). Only the filled rows are read, so a step costs O(i·D), not
    O(num_iters·D)."""

    def one(j, w):
        v = basis[j]
        return w - jnp.vdot(v, w) * v

    for _ in range(2):
        w = jax.lax.fori_loop(0, num_rows, one, w)
    return w


def _init_state(key: PRNGKey, dim: int, num_iters: int, dtype) -> _State:
    u = jax.random.normal(key, (dim + 1,), dtype)
    v0 = u[:dim] / jnp.linalg.norm(u[:dim])
    basis = jnp.zeros((num_iters + 1, dim), dtype).at[0].set(v0)
    # betas[-1] is only written by the last step; until then it carries the restart seed
    betas = jnp.zeros((num_iters,), dtype).at[-1].set(u[dim])
    return _State(basis, jnp.zeros((num_iters,), dtype), betas)


def _restart_vector(dim: int, i, seed, dtype) -> Array:
    """A pseudo-random vector for restarting after a breakdown (a cheap sine hash of the index,
    the step and the run's seed; it is orthogonalised against the basis before use)."""
    j = jnp.arange(1, dim + 1, dtype=jnp.float32)
    h = jnp.sin(j * 12.9898 + (i + 1).astype(jnp.float32) * 78.233 + seed.astype(jnp.float32))
    return (jnp.mod(h * 43758.5453, 1.0) - 0.5).astype(dtype)


def _step(matvec_flat: Callable[[Array], Array], seed: Array, i, state: _State) -> _State:
    basis, alphas, betas = state
    dim = basis.shape[1]
    dtype = basis.dtype
    v = basis[i]
    av = matvec_flat(v).astype(dtype)
    alpha = jnp.vdot(v, av)
    beta_prev = jnp.where(i > 0, betas[i - 1], 0.0)
    v_prev = jnp.where(i > 0, basis[jnp.maximum(i - 1, 0)], 0.0)
    w = av - alpha * v - beta_prev * v_prev
    w = _orthogonalise(basis, w, i + 1)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.linalg.norm(av), jnp.finfo(dtype).tiny)
    breakdown = beta <= 10.0 * np.sqrt(dim) * jnp.finfo(dtype).eps * scale

    def restart(_):
        r = _orthogonalise(basis, _restart_vector(dim, i, seed, dtype), i + 1)
        return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(dtype).tiny)

    v_next = jax.lax.cond(breakdown, restart, lambda w: w / beta, w)
    beta = jnp.where(breakdown, 0.0, beta)
    return _State(basis.at[i + 1].set(v_next), alphas.at[i].set(alpha), betas.at[i].set(beta))


def _flat_matvec(matvec: Callable[[Params], Params], unravel) -> Callable[[Array], Array]:
    return lambda x: ravel_pytree(matvec(unravel(x)))[0]


def flat_info(params_like: Params, name: str = "params_like"
              ) -> tuple[Array, Callable[[Array], Params]]:
    """``params_like`` raveled to one vector and its unravel function, checked to be non-empty
    and floating point (shared by the curvature tools)."""
    leaves = jax.tree.leaves(params_like)
    if not leaves:
        raise ValueError(f"{name} has no array leaves")
    flat, unravel = ravel_pytree(params_like)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(f"{name} must have floating-point leaves; got {flat.dtype}")
    return flat, unravel


def check_num_iters(num_iters: Any, dim: int) -> None:
    """A positive number of Lanczos iterations no larger than the dimension."""
    check_positive_int(num_iters, name="num_iters")
    if num_iters > dim:
        raise ValueError(f"num_iters must be <= the dimension of params_like ({dim}); "
                         f"got {num_iters}")


def check_matvec(matvec: Any, params_like: Params, *, name: str = "matvec") -> None:
    """``matvec`` is callable and ``matvec(v)`` returns a pytree of ``params_like``'s structure
    and leaf shapes (checked by tracing it once with ``jax.eval_shape``: nothing is computed)."""
    if not callable(matvec):
        raise TypeError(f"{name} must be callable; got {type(matvec).__name__}")
    out = jax.eval_shape(matvec, params_like)
    check_same_structure(out, params_like, name=f"{name}(v)", reference_name="params_like")


def check_finite_result(values: Any, what: str) -> None:
    """Concrete ``values`` (skipped under ``jit``) hold no NaN / inf: else a
    ``FloatingPointError`` saying the matvec returned non-finite values."""
    leaves = [x for x in jax.tree.leaves(values) if x is not None]
    if all(is_concrete(x) for x in leaves) and not all(
            bool(np.all(np.isfinite(np.asarray(x)))) for x in leaves):
        raise FloatingPointError(f"{what} is NaN/inf: the matvec returned non-finite values "
                                 "(check params and data)")


def check_key(key: Any) -> None:
    """A typed PRNG key or a raw uint32[2] one."""
    k = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not (jnp.issubdtype(k.dtype, jax.dtypes.prng_key) or
            (k.dtype == jnp.uint32 and k.shape == (2,))):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key or PRNGKey); got dtype "
                        f"{k.dtype} shape {k.shape}")


# --------------------------------------------------------------------------------------------
# public Lanczos
# --------------------------------------------------------------------------------------------

def lanczos(matvec: Callable[[Params], Params], params_like: Params, key: PRNGKey, *,
            num_iters: int, return_basis: bool = False) -> LanczosResult:
    """Run ``num_iters`` Lanczos iterations with full reorthogonalisation.

    Args:
      matvec: symmetric linear map ``v -> A v`` on pytrees shaped like ``params_like`` (e.g. a
        Hessian- or GGN-vector product from :mod:`cljax.curvature.hvp`).
      params_like: pytree giving the structure, shapes and dtype of the vectors.
      key: PRNG key for the Gaussian starting vector (and restarts after a breakdown).
      num_iters: number of iterations ``m`` (= products with ``A``), ``1 <= m <= D``; static.
      return_basis: also return the Lanczos vectors as a pytree with a leading axis ``m``.
    Returns:
      :class:`LanczosResult` ``(alphas [m], betas [m−1], basis)`` with ``T = tridiag(betas,
      alphas, betas) = Vᵀ A V``. Jit-able with ``num_iters`` / ``return_basis`` static.
    Raises:
      ValueError: ``matvec`` returns a pytree of another structure or shapes than
        ``params_like``. FloatingPointError: the coefficients are NaN/inf (the matvec returned
        non-finite values; checked outside ``jit`` only: under ``jit`` they are returned).
    """
    check_key(key)
    flat, unravel = flat_info(params_like)
    check_matvec(matvec, params_like)
    check_num_iters(num_iters, flat.size)
    result = lanczos_jit(matvec, num_iters, return_basis, params_like, key)
    check_finite_result((result.alphas, result.betas), "a Lanczos coefficient")
    return result


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def lanczos_jit(matvec: Callable[[Params], Params], num_iters: int, return_basis: bool,
                params_like: Params, key: PRNGKey) -> LanczosResult:
    """The jitted body of :func:`lanczos` (``num_iters`` steps with full reorthogonalisation)."""
    flat, unravel = ravel_pytree(params_like)
    mv = _flat_matvec(matvec, unravel)
    state = _init_state(key, flat.size, num_iters, flat.dtype)
    seed = state.betas[-1]
    state = jax.lax.fori_loop(0, num_iters, lambda i, s: _step(mv, seed, i, s), state)
    basis = jax.vmap(unravel)(state.basis[:num_iters]) if return_basis else None
    return LanczosResult(state.alphas, state.betas[:num_iters - 1], basis)


def tridiagonal_eigh(alphas: Array, betas: Array) -> tuple[Array, Array]:
    """Eigen-decomposition ``(θ [m] ascending, S [m, m])`` of the symmetric tridiagonal matrix
    with diagonal ``alphas`` and off-diagonal ``betas`` (the Ritz values / vectors of Lanczos)."""
    alphas = jnp.asarray(alphas)
    betas = jnp.asarray(betas)
    if alphas.ndim != 1 or betas.shape != (max(alphas.shape[0] - 1, 0),):
        raise ValueError(f"alphas must be [m] and betas [m-1]; got {alphas.shape}, {betas.shape}")
    t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    return eigh(t)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    order = np.argsort(-theta) if which == "largest" else np.argsort(-np.abs(theta), kind="stable")
    return order[:k]


def _check_which(which: Any) -> None:
    if which not in ("largest", "magnitude"):
        raise ValueError(f"which must be 'largest' (algebraically largest eigenvalues) or "
                         f"'magnitude' (largest |λ|); got {which!r}")


def _ritz_on_device(state: _State, m, k: int, which: str):
    """Ritz pairs of the leading ``m × m`` block of T (``m`` traced), on device.

    T is embedded in the full ``num_iters × num_iters`` matrix with its unfilled rows decoupled
    (β = 0) and set to a sentinel below the block's Gershgorin interval; Ritz vectors whose weight
    on the first ``m`` rows is < 1/2 belong to the sentinel block and are never selected.
    Returns ``(theta_sel [k], s_sel [n, k], residuals [k])``."""
    alphas, betas = state.alphas, state.betas
    n = alphas.shape[0]
    j = jnp.arange(n)
    filled = j < m
    b = jnp.where(j < m - 1, betas, 0.0)
    b_prev = jnp.concatenate([jnp.zeros((1,), b.dtype), b[:-1]])
    lower = jnp.min(jnp.where(filled, alphas - jnp.abs(b) - jnp.abs(b_prev), jnp.inf))
    sentinel = lower - 1.0 - jnp.abs(lower)
    diag = jnp.where(filled, alphas, sentinel)
    t = jnp.diag(diag) + jnp.diag(b[:-1], 1) + jnp.diag(b[:-1], -1)
    theta, s = eigh(t)
    valid = jnp.sum(jnp.where(filled[:, None], s * s, 0.0), axis=0) > 0.5
    score = theta if which == "largest" else jnp.abs(theta)
    score = jnp.where(valid, score, -jnp.inf)
    sel = jnp.argsort(-score, stable=True)[:k]
    s_sel = s[:, sel]
    beta_m = betas[jnp.maximum(m - 1, 0)]
    residuals = jnp.abs(beta_m * s_sel[jnp.maximum(m - 1, 0)])
    return theta[sel], s_sel, residuals


def _top_eigen_device(matvec_p, operand, params_like, key, *, k: int, num_iters: int,
                      tol: float | None, which: str, return_eigenvectors: bool,
                      check_every: int):
    """The whole stopping loop on device: ``lax.while_loop`` over blocks of ``check_every``
    Lanczos steps, the Ritz residual test after each block (no host round trip)."""
    flat, unravel = ravel_pytree(params_like)
    dim = flat.size
    mv = lambda x: ravel_pytree(matvec_p(operand, unravel(x)))[0]
    state = _init_state(key, dim, num_iters, flat.dtype)
    seed = state.betas[-1]
    tiny = jnp.finfo(flat.dtype).tiny

    def test(st, m):
        theta, s_sel, res = _ritz_on_device(st, m, k, which)
        finite = jnp.all(jnp.isfinite(jnp.where(jnp.arange(num_iters) < m, st.alphas, 0.0)))
        finite &= jnp.all(jnp.isfinite(jnp.where(jnp.arange(num_iters) < m, st.betas, 0.0)))
        conv = m == dim
        if tol is not None:
            conv |= jnp.all(res <= tol * jnp.maximum(jnp.abs(theta), tiny))
        return theta, s_sel, res, conv, finite

    def cond(carry):
        m, _, done = carry
        return ~done

    def body(carry):
        m, st, _ = carry
        stop = jnp.minimum(jnp.maximum(m + check_every, k), num_iters)
        st = jax.lax.fori_loop(m, stop, lambda i, s: _step(mv, seed, i, s), st)
        _, _, _, conv, finite = test(st, stop)
        return stop, st, conv | ~finite | (stop >= num_iters)

    m, state, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state,
                                                  jnp.zeros((), bool)))
    theta, s_sel, res, conv, finite = test(state, m)
    vectors = None
    if return_eigenvectors:
        y = state.basis[:num_iters].T @ s_sel.astype(flat.dtype)     # [D, k]
        y = y / jnp.linalg.norm(y, axis=0, keepdims=True)
        vectors = jax.vmap(unravel)(y.T)
    return theta.astype(flat.dtype), vectors, res.astype(flat.dtype), m, conv, finite


_top_eigen_jit = jax.jit(_top_eigen_device, static_argnums=(0,),
                         static_argnames=("k", "num_iters", "tol", "which",
                                          "return_eigenvectors", "check_every"))


_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_wrapper(fn, kind: str):
    """``(operand, v) -> A v`` for a user function, the same object for the same ``fn`` so that
    repeated calls hit the compilation cache of the Lanczos program."""
    try:
        cache = _WRAPPERS.setdefault(fn, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if kind not in cache:
        cache[kind] = ((lambda _, v: fn(v)) if kind == "matvec"
                       else (lambda p, v: hvp(fn, p, v)))
    return cache[kind]


def top_eigen(matvec_p: Callable[[Any, Params], Params], operand: Any, params_like: Params,
               key: PRNGKey, *, k: int, num_iters: int, tol: float | None, which: str,
               return_eigenvectors: bool, check_every: int) -> EigenResult:
    """Top-k eigenpairs of the operator ``matvec_p(operand, v)`` by Lanczos with the stopping
    test on device (the engine of :func:`top_eigenvalues_matvec` and the flatness analysis)."""
    check_key(key)
    flat, unravel = flat_info(params_like)
    dim = flat.size
    check_positive_int(k, name="k")
    check_num_iters(num_iters, dim)
    if k > num_iters:
        raise ValueError(f"k must be <= num_iters ({num_iters}); got {k}")
    _check_which(which)
    if tol is not None and (not np.isfinite(tol) or tol < 0):
        raise ValueError(f"tol must be None or a finite number >= 0; got {tol}")
    check_positive_int(check_every, name="check_every")
    check_matvec(lambda v: matvec_p(operand, v), params_like)
    template = jax.tree.map(jnp.zeros_like, params_like)
    theta, vectors, res, m, conv, finite = _top_eigen_jit(
        matvec_p, operand, template, key, k=k, num_iters=num_iters,
        tol=None if tol is None else float(tol), which=which,
        return_eigenvectors=return_eigenvectors, check_every=check_every)
    if not bool(finite):
        raise FloatingPointError("Lanczos produced NaN/inf coefficients: the matvec returned "
                                 "non-finite values (check params and data)")
    return EigenResult(theta, vectors, res, int(m), bool(conv))


def top_eigenvalues_matvec(matvec: Callable[[Params], Params], params_like: Params,
                           key: PRNGKey, *, k: int = 1, num_iters: int = 100,
                           tol: float | None = 1e-3, which: Which = "largest",
                           return_eigenvectors: bool = False,
                           check_every: int = 5) -> EigenResult:
    """The ``k`` top eigenvalues of a symmetric linear map given as a matvec (e.g. a GGN
    product from :func:`cljax.curvature.make_task_matvec`), by Lanczos with full
    reorthogonalisation, stopping early once converged.

    "Top" depends on ``which``:

    * ``"largest"``: the ``k`` algebraically largest eigenvalues λ_1 ≥ … ≥ λ_k (λ_1 = λ_max, the
      sharpest curvature, the quantity in the forgetting bound of seed 000 eq. 20);
    * ``"magnitude"``: the ``k`` eigenvalues of largest :math:`|λ|`, in decreasing :math:`|λ|`, signs kept (what
      power iteration converges to; a large negative eigenvalue wins over a smaller positive one).

    The run proceeds in blocks of ``check_every`` iterations; after each block the Ritz pairs of
    ``T_m`` are computed and the run stops when every selected Ritz value satisfies
    ``β_m |e_mᵀ s_i| ≤ tol · |θ_i|`` (residual norm; a bound on its absolute error, and the
    actual error is typically much smaller, ~residual²/gap), or after ``num_iters`` iterations.
    ``tol=None`` always runs ``num_iters``. The whole run — blocks, Ritz values, the stopping
    test — is one compiled ``lax.while_loop`` on the device (one program per matvec function and
    shapes; no host round trip until the result), so the wall time is that of the HVPs plus the
    O(m·D) reorthogonalisation. The function returns Python ``int`` / ``bool`` fields, so it is
    not itself jit-able; use :func:`lanczos` inside ``jit``.
    """
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    return top_eigen(_cached_wrapper(matvec, "matvec"), None, params_like, key, k=k,
                      num_iters=num_iters,
                      tol=tol, which=which, return_eigenvectors=return_eigenvectors,
                      check_every=check_every)


def top_eigenvalues(loss_fn: LossFn, params: Params, key: PRNGKey, *, k: int = 1,
                    num_iters: int = 100, tol: float | None = 1e-3, which: Which = "largest",
                    return_eigenvectors: bool = False, check_every: int = 5) -> EigenResult:
    """The ``k`` top eigenvalues of the Hessian ``∇²loss_fn(params)`` (HVPs by ``jvp(grad)``).

    See :func:`top_eigenvalues_matvec` for ``which`` ("largest" = algebraically largest,
    "magnitude" = largest :math:`|λ|`), the stopping rule and the result. For a whole task's data in
    chunks use ``top_eigenvalues_matvec(make_task_matvec(logits_fn, params, data, ...), params,
    key)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from cljax.curvature import top_eigenvalues
        >>> loss_fn = lambda p: 0.5 * (3.0 * p["a"] ** 2 + p["b"] ** 2)   # Hessian diag(3, 1)
        >>> params = {"a": jnp.array(0.0), "b": jnp.array(0.0)}
        >>> result = top_eigenvalues(loss_fn, params, jax.random.key(0), num_iters=2)
        >>> round(float(result.eigenvalues[0]), 4)
        3.0
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    check_finite(params, name="params")
    return top_eigen(_cached_wrapper(loss_fn, "hvp"), params, params, key, k=k,
                      num_iters=num_iters, tol=tol, which=which,
                      return_eigenvectors=return_eigenvectors, check_every=check_every)


__all__ = ["LanczosResult", "EigenResult", "lanczos", "tridiagonal_eigh",
           "top_eigenvalues", "top_eigenvalues_matvec", "check_key", "check_num_iters",
           "flat_info", "lanczos_jit", "top_eigen", "check_matvec", "check_finite_result"]

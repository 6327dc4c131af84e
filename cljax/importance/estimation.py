"""The engine shared by every estimator in :mod:`cljax.importance` (public: :func:`estimate`,
:func:`estimate_jit`, :func:`discover` for tests and benchmarks).

Every estimator here is a reduction of *per-example parameter gradients along output directions*:
for example n and a direction u_{n,k} in logit space (k = 1..K), the per-example gradient is
J_nᵀ u_{n,k} (J_n = ∂ logits_n / ∂θ). The public estimators only choose the directions:

* empirical Fisher: u = p − e_y (the gradient of −log p(y|x) w.r.t. the logits), K = 1;
* true Fisher: u_s = (p − e_{ŷ_s}) / √S with ŷ_s ~ p(· | x), K = S;
* exact Fisher: u_c = √p_c (p − e_c), K = C, so Σ_c u_c u_cᵀ = diag(p) − ppᵀ (the softmax-CE
  output Hessian; the result is the GGN diagonal);
* MAS: u = 2 f(x) (the gradient of ‖f(x)‖² w.r.t. f), K = 1, reduced with :math:`|·|` instead of (·)²;
* K-FAC: the layer-output cotangents g themselves (A = E[āāᵀ], G = E[ggᵀ]).

**Fast path (recognised layers).** For flax linen ``nn.Dense`` and ``nn.Conv`` and
:class:`cljax.nn.Conv` (``nn.Conv`` with the loop-friendly CPU convolution; exactly those
classes, ``feature_group_count == 1``, padding ``SAME``/``VALID``/explicit, default
``dot_general``/``conv_general_dilated``, no ``mask``, kernel and bias used by no other layer),
one forward pass per chunk runs under ``flax.linen.intercept_methods``
(:func:`cljax.layers.intercept_layer_calls`, which also holds the recognition rules,
:func:`cljax.layers.describe_call`): each such layer's input is recorded and a zero
perturbation ε is added to its output. One ``jax.vjp`` w.r.t. the
perturbations then yields, for every direction, the per-example output cotangents g_n of every
layer (each example's loss depends only on its own ε_n), back-propagated only as far as the
lowest layer's output — no weight gradients are formed. A dense layer's per-example weight
gradient is the outer product a_n g_nᵀ, so Σ_n (a_n g_nᵀ)² = (a²)ᵀ(g²) and :math:`Σ_n |a_n g_nᵀ| =
|a|ᵀ|g|` are single matmuls; for the exact Fisher Σ_c (a g_cᵀ)² = a²(Σ_c g_c²)ᵀ, so the C directions
are summed before the matmul. A conv layer (im2col patches a_{n,p}, positions p) has per-example
gradient Σ_p a_{n,p} g_{n,p}ᵀ — a sum inside the square/abs — so it uses a per-example contraction;
the K directions of one example (exact Fisher: the C classes) share the captured patches; their
cotangents are back-propagated one direction after the other inside a ``lax.scan`` (batching
them with ``vmap`` was measured 2.3× slower on the CPU, see ``_DIRECTION_GROUP``), each followed
by its contraction [B, in, P] @ [B, P, out] and accumulated in the carry.
A Dense applied to inputs with extra middle axes ([B, T, in]) is treated like a conv with T
positions.

**Fallback.** Parameters that belong to no recognised layer (plain-function models, LayerNorm,
Embed, shared kernels, custom modules, …) get per-example gradients from ``vmap`` over examples
of a ``vjp`` restricted to those parameters. Dispatch is automatic and per parameter; pass
``implementation="vmap"`` to force the fallback for everything (used by the tests to check the
two against each other). Requirement for both: ``logits_fn`` treats examples independently (no
batch statistics), and a recognised layer's kernel is not also used outside that layer.

**Chunks.** The N examples are cut into the fewest chunks of at most ``chunk_size``, of equal
size (:func:`cljax.chunking.chunk_layout`), padded by repeating example 0 with weight 0 (its
directions are multiplied by 0, and its activations are masked in K-FAC's A), then processed by
``lax.scan`` over chunks inside one ``jit``; memory is bounded by one chunk. Results are sums
divided by the true N, i.e. means over examples. When the examples are split over
several devices (``sharding=``, found on a concrete sharded batch by itself), each device sums its
own examples chunk by chunk and one all-reduce adds the devices' sums
(:func:`cljax.chunking.chunked_sum`); ``chunk_size`` is then the chunk of each device.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import chunking, validation
from cljax.layers import CallRecord, LayerCall, intercept_layer_calls, layer_inputs
from cljax.types import Array, Batch, LogitsFn, Params
from cljax.validation import check_choice

# Output directions (exact Fisher: the C classes; true Fisher: the samples) back-propagated together
# as one batch (vmap); groups of this many run one after the other (lax.scan). Measured on the
# CIFAR CNN (exact Fisher, chunk 128, 2-core CPU, interleaved): one at a time 2.5× a
# value_and_grad, groups of 5 3.2×, all 10 at once 5.6× (and 4× the memory): the batched
# cotangents fall out of cache. So one at a time.
_DIRECTION_GROUP = 1

KINDS = ("empirical", "true", "exact", "argmax", "mas", "kfac_true", "kfac_empirical",
         "kfac_exact")
IMPLEMENTATIONS = ("auto", "vmap")


# ----------------------------------------------------------------------------------------------
# Layer discovery (the recognition rules and the interception live in cljax.layers)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """Which parameters take the fast path: ``layers`` (one :class:`cljax.layers.LayerCall` per
    layer-local recognised layer, with its kernel / bias leaf indices), for every Dense/Conv call
    in order the layer it is (``call_to_layer``, ``None`` if not fast-path), the layers' output
    shapes on one chunk, and the param leaves served by the vmap fallback."""

    layers: tuple[LayerCall, ...]
    call_to_layer: tuple[int | None, ...]
    out_shapes: tuple[jax.ShapeDtypeStruct, ...]
    fallback_indices: tuple[int, ...]
    num_leaves: int


def discover(logits_fn: LogitsFn, params: Params, chunk_batch: Batch,
             implementation: str) -> Plan:
    """Trace ``logits_fn`` abstractly once and decide which layers take the fast path: the calls
    :func:`cljax.layers.describe_call` recognises, on the chunk's examples, whose kernel and bias
    are used by no other call."""
    n_leaves = len(jax.tree.leaves(params))
    records: list[CallRecord] = []
    batch_size = jax.tree.leaves(chunk_batch["x"])[0].shape[0]

    def traced(p: Params, b: Batch) -> Array:
        if implementation == "vmap":
            return logits_fn(p, b)
        ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(p))}
        out, seen = intercept_layer_calls(logits_fn, p, b, leaf_ids=ids)
        records.extend(seen)
        return out

    try:
        out = jax.eval_shape(traced, params, chunk_batch)
    except Exception as e:
        raise ValueError(
            "calling logits_fn(params, batch) failed; params must be the pytree logits_fn "
            f"expects (e.g. model.init(key, batch)) and batch must fit the model: "
            f"{type(e).__name__}: {e}") from e
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != batch_size:
        raise ValueError(f"logits_fn(params, batch) must return logits [B, C] with B = {batch_size};"
                         f" got {getattr(out, 'shape', type(out))}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"logits_fn must return floating-point logits; got {out.dtype}")

    calls = [r.call if r.call is not None and r.output.shape[0] == batch_size else None
             for r in records]
    # A kernel/bias used by more than one call is not layer-local: send it to the fallback.
    use_count: dict[int, int] = {}
    for c in calls:
        if c is not None:
            for i in (c.kernel_index, c.bias_index):
                if i is not None:
                    use_count[i] = use_count.get(i, 0) + 1
    layers: list[LayerCall] = []
    out_shapes: list[jax.ShapeDtypeStruct] = []
    call_to_layer: list[int | None] = []
    names: set[str] = set()
    for c, r in zip(calls, records):
        if c is not None and all(use_count.get(i, 0) == 1
                                 for i in (c.kernel_index, c.bias_index) if i is not None) \
                and c.name not in names:
            names.add(c.name)
            call_to_layer.append(len(layers))
            layers.append(c)
            out_shapes.append(r.output)
        else:
            call_to_layer.append(None)
    covered = {i for s in layers for i in (s.kernel_index, s.bias_index) if i is not None}
    fallback = tuple(i for i in range(n_leaves) if i not in covered)
    return Plan(tuple(layers), tuple(call_to_layer), tuple(out_shapes), fallback, n_leaves)


# ----------------------------------------------------------------------------------------------
# Capture and per-layer reductions
# ----------------------------------------------------------------------------------------------

def forward_with_capture(logits_fn: LogitsFn, params: Params, batch: Batch, plan: Plan,
                         perturbations: Sequence[Array]) -> tuple[Array, list[Array]]:
    """logits_fn with ε_l added to the fast-path layers' outputs; also returns their inputs."""
    eps = [None if j is None else perturbations[j] for j in plan.call_to_layer]
    try:
        logits, records = intercept_layer_calls(logits_fn, params, batch, perturbations=eps)
    except RuntimeError as e:
        raise RuntimeError("logits_fn called its layers differently from the discovery trace; "
                           "pass implementation='vmap'") from e
    inputs = [records[i].inputs for i, j in enumerate(plan.call_to_layer) if j is not None]
    return logits, inputs


def _per_example_fallback(logits_fn: LogitsFn, params: Params, batch: Batch, dirs: Array,
                          indices: tuple[int, ...]) -> list[Array]:
    """Per-example gradients [K, B, *leaf] of the leaves `indices` along dirs [K, B, C]."""
    leaves, treedef = jax.tree.flatten(params)
    sub = [leaves[i] for i in indices]

    def one(example: Batch, u: Array) -> list[Array]:
        def f(s: list[Array]) -> Array:
            full = list(leaves)
            for i, v in zip(indices, s):
                full[i] = v
            ex = jax.tree.map(lambda v: v[None], example)
            return logits_fn(jax.tree.unflatten(treedef, full), ex)[0]

        _, vjp = jax.vjp(f, sub)
        return jax.vmap(lambda d: vjp(d)[0])(u)  # list of [K, *leaf]

    per_ex = jax.vmap(one, in_axes=(0, 1))(batch, dirs)  # list of [B, K, *leaf]
    return [g.swapaxes(0, 1) for g in per_ex]


def _directions(kind: str, logits: Array, batch: Batch, w: Array, gidx: Array, key: Any,
                num_samples: int) -> Array:
    """Output-space directions [K, B, C], already multiplied by the example weights."""
    logits = jax.lax.stop_gradient(logits)
    c = logits.shape[-1]
    p = jax.nn.softmax(logits, axis=-1)
    if kind in ("empirical", "kfac_empirical"):
        u = (p - jax.nn.one_hot(batch["y"], c, dtype=p.dtype))[None]
    elif kind in ("true", "kfac_true"):
        def draw(i: Array, lg: Array) -> Array:
            return jax.random.categorical(jax.random.fold_in(key, i), lg, shape=(num_samples,))
        ys = jax.vmap(draw)(gidx, logits).T  # [S, B], keyed by global example index
        u = (p[None] - jax.nn.one_hot(ys, c, dtype=p.dtype)) / jnp.sqrt(
            jnp.asarray(num_samples, p.dtype))
    elif kind in ("exact", "kfac_exact"):
        eye = jnp.eye(c, dtype=p.dtype)
        u = jnp.sqrt(p).T[:, :, None] * (p[None, :, :] - eye[:, None, :])  # [C, B, C]
    elif kind == "argmax":
        u = (p - jax.nn.one_hot(jnp.argmax(logits, axis=-1), c, dtype=p.dtype))[None]
    elif kind == "mas":
        u = (2.0 * logits)[None]
    else:  # pragma: no cover
        raise ValueError(kind)
    return u * w[None, :, None].astype(u.dtype)


def _kfac_chunk_factors(plan: Plan, inputs: list[Array], vjp_fn, dirs: Array, w: Array) -> dict:
    """K-FAC's sums over one chunk, per layer: ``(Σ w ā āᵀ, Σ g gᵀ / positions)``, ā = [a, 1]
    with a bias (Martens & Grosse 2015 §3; Grosse & Martens 2016 for conv positions)."""
    cots = jax.vmap(lambda d: vjp_fn(d)[0])(dirs) if plan.layers else []  # [K, B, *out]
    factors = {}
    for spec, a, g in zip(plan.layers, inputs, cots):
        a3 = layer_inputs(a, spec)  # [B, P, in]
        positions = a3.shape[1]
        af = a3.reshape(-1, a3.shape[-1])
        wf = jnp.repeat(w.astype(af.dtype), positions)          # 0/1 example weights
        aa = (af * wf[:, None]).T @ af                          # Σ w a aᵀ (w² = w)
        if spec.bias_index is not None:  # ā = [a, 1]: border with Σ w a and Σ w
            col = (wf @ af)[:, None]
            aa = jnp.block([[aa, col], [col.T, jnp.sum(wf).reshape(1, 1)]])
        gf = g.reshape(-1, g.shape[-1])
        factors[spec.name] = (aa, (gf.T @ gf) / positions)
    return factors


def _layer_direction_terms(a3s: list[Array], gs: list[Array], fn) -> list[Any]:
    """A group of K directions' contribution (cotangents [K, B, *out]): dense → Σ_k f(g_k)
    [B, out] (the matmul with f(a) comes after summing directions); conv/positions →
    Σ_k Σ_n f(Σ_p a g_kᵀ) and Σ_k Σ_n f(Σ_p g_k), the K directions of a group sharing one
    batched matmul over positions ([B, in, P] @ [B, P, K·out]) on the patches captured once for
    all directions (the GGN's per-class structure)."""
    terms: list[Any] = []
    for a3, g in zip(a3s, gs):
        k, b = g.shape[:2]
        g3 = g.reshape(k, b, -1, g.shape[-1])              # [K, B, P, out]
        if a3.shape[1] == 1:
            terms.append(jnp.sum(fn(g3[:, :, 0]), 0))
        else:
            out = g3.shape[-1]
            gk = jnp.moveaxis(g3, 0, 2).reshape(b, g3.shape[2], k * out)   # [B, P, K·out]
            pe = jnp.einsum("bpi,bpn->bin", a3, gk).reshape(b, a3.shape[-1], k, out)
            terms.append((jnp.sum(fn(pe), (0, 2)), jnp.sum(fn(jnp.sum(g3, 2)), (0, 1))))
    return terms


def _diagonal_chunk_sums(kind: str, logits_fn: LogitsFn, params: Params, plan: Plan,
                         batch: Batch, inputs: list[Array], vjp_fn, dirs: Array) -> list[Any]:
    """Per leaf, Σ over the chunk's examples and directions of f(per-example gradient), f = (·)²
    (Fisher diagonals) or |·| (MAS): the fast path for recognised layers, the vmap fallback for
    the other leaves."""
    leaves = jax.tree.leaves(params)
    sums: list[Any] = [None] * plan.num_leaves
    use_abs = kind == "mas"
    fn = jnp.abs if use_abs else jnp.square
    specs = plan.layers
    a3s = [layer_inputs(a, spec) for spec, a in zip(specs, inputs)]  # [B, P, in]

    def group_terms(d: Array) -> list[Any]:   # d: [K, B, C]
        return _layer_direction_terms(a3s, jax.vmap(lambda u: vjp_fn(u)[0])(d), fn)

    if specs:
        k_all = dirs.shape[0]
        group = max(g for g in range(1, min(k_all, _DIRECTION_GROUP) + 1) if k_all % g == 0)
        if group == k_all:   # all directions batched into one backward pass
            acc = group_terms(dirs)
        else:  # groups of directions one after the other, accumulated in the carry
            groups = dirs.reshape((k_all // group, group) + dirs.shape[1:])
            shapes = jax.eval_shape(group_terms, groups[0])
            init = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), shapes)
            acc, _ = jax.lax.scan(
                lambda c, d: (optax.tree_utils.tree_add(c, group_terms(d)), None), init, groups)
        for spec, a3, term in zip(specs, a3s, acc):
            if a3.shape[1] == 1:   # Σ_k Σ_n f(a_n g_nkᵀ) = f(a)ᵀ Σ_k f(g_k)  (f = square or abs)
                kern = fn(a3[:, 0]).T @ term
                bias = jnp.sum(term, axis=0)
            else:
                kern, bias = term
            assert spec.kernel_index is not None   # a recognised layer locates its kernel
            sums[spec.kernel_index] = kern.reshape(spec.kernel_shape)
            if spec.bias_index is not None:
                sums[spec.bias_index] = bias.reshape(leaves[spec.bias_index].shape)

    if plan.fallback_indices:
        pe = _per_example_fallback(logits_fn, params, batch, dirs, plan.fallback_indices)
        for i, g in zip(plan.fallback_indices, pe):
            sums[i] = jnp.sum(jnp.abs(g), axis=(0, 1)) if use_abs else jnp.sum(g * g, axis=(0, 1))
    return sums


def _chunk_contribution(kind: str, logits_fn: LogitsFn, params: Params, plan: Plan,
                        batch: Batch, w: Array, gidx: Array, key: Any, num_samples: int):
    """Sums (not yet divided by N) over one chunk, plus the counts of valid examples with
    non-finite logits (``bad_logits``) and labels out of range (``bad_labels``)."""
    if plan.layers:
        def fwd(eps):
            return forward_with_capture(logits_fn, params, batch, plan, eps)

        zeros = [jnp.zeros(s.shape, s.dtype) for s in plan.out_shapes]
        logits, vjp_fn, inputs = jax.vjp(fwd, zeros, has_aux=True)
    else:
        logits = logits_fn(params, batch)
        inputs, vjp_fn = [], None

    out: dict[str, Any] = {
        "bad_logits": jnp.sum(~(jnp.isfinite(logits) | (w[:, None] == 0)), dtype=jnp.int32)}
    if "y" in batch:
        c = logits.shape[-1]
        y = batch["y"]
        out["bad_labels"] = jnp.sum(~(((y >= 0) & (y < c)) | (w == 0)), dtype=jnp.int32)
    dirs = _directions(kind, logits, batch, w, gidx, key, num_samples)  # [K, B, C]
    if kind.startswith("kfac"):
        out["factors"] = _kfac_chunk_factors(plan, inputs, vjp_fn, dirs, w)
    else:
        out["sums"] = _diagonal_chunk_sums(kind, logits_fn, params, plan, batch, inputs, vjp_fn,
                                           dirs)
    return out


# ----------------------------------------------------------------------------------------------
# Whole-dataset driver
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("logits_fn", "kind", "num_samples", "chunk_size",
                                             "implementation", "sharding"))
def estimate_jit(logits_fn: LogitsFn, params: Params, batch: Batch, key: Any, *, kind: str,
                  num_samples: int, chunk_size: int | None, implementation: str,
                  sharding: Any = None) -> tuple[Any, dict[str, Array]]:
    """The estimate as sums over chunks (:func:`cljax.chunking.chunked_sum`: data parallel over
    the devices of ``sharding``) divided by N, plus the flags ``finite`` / ``labels_ok``."""
    n = batch["x"].shape[0]
    _, c, _ = chunking.chunk_layout(n, chunk_size, chunking.shard_count(sharding))
    chunk0 = jax.tree.map(lambda v: jax.ShapeDtypeStruct((c,) + v.shape[1:], v.dtype), batch)
    plan = discover(logits_fn, params, chunk0, implementation)
    if kind.startswith("kfac") and not plan.layers:
        raise ValueError("kfac_factors found no recognised layer (flax nn.Dense / nn.Conv / "
                         "cljax.nn.Conv) in logits_fn; K-FAC needs layer structure")

    def body(chunk, valid, index):
        contrib = _chunk_contribution(kind, logits_fn, params, plan, chunk, valid, index, key,
                                      num_samples)
        numeric = contrib["factors"] if kind.startswith("kfac") else contrib["sums"]
        return numeric, {k: v for k, v in contrib.items() if k.startswith("bad_")}

    total, bad = chunking.chunked_sum(body, batch, chunk_size=chunk_size, sharding=sharding)
    fl = {"finite": bad["bad_logits"] == 0}
    if "bad_labels" in bad:
        fl["labels_ok"] = bad["bad_labels"] == 0
    total = jax.tree.map(lambda t: t / n, total)
    if kind.startswith("kfac"):
        return total, fl
    leaves, treedef = jax.tree.flatten(params)
    result = jax.tree.unflatten(treedef, [t.astype(l.dtype) for t, l in zip(total, leaves)])
    return result, fl


def check_estimator_inputs(logits_fn: LogitsFn, params: Params, batch: Batch, *,
                           chunk_size: int | None, implementation: str, require_y: bool,
                           fn_name: str) -> Batch:
    """Validate an estimator's common inputs (a callable ``logits_fn``; a batch of at least one
    example whose every key shares ``x``'s leading axis; floating ``params`` with leaves; a
    positive ``chunk_size`` or None; a known ``implementation``), errors naming ``fn_name`` and
    the argument. Returns the batch as arrays, without ``y`` unless ``require_y``."""
    if not callable(logits_fn):
        raise TypeError(f"{fn_name}: logits_fn must be callable logits_fn(params, batch) -> "
                        f"logits[B, C]; got {type(logits_fn).__name__}")
    validation.check_batch(batch, require_y=require_y or (hasattr(batch, "keys") and "y" in batch))
    n = int(jnp.shape(batch["x"])[0])
    if n == 0:
        raise ValueError(f"{fn_name}: batch['x'] has no examples")
    # labels are dropped where unused (true/exact/MAS); every other key is chunked with x
    batch = {k: v for k, v in batch.items() if require_y or k != "y"}
    for k, v in batch.items():
        if jnp.ndim(v) < 1 or jnp.shape(v)[0] != n:
            raise ValueError(f"{fn_name}: batch['{k}'] must have a leading axis of {n} examples "
                             f"(like batch['x']); got shape {jnp.shape(v)}")
    if chunk_size is not None:
        validation.check_positive_int(chunk_size, name="chunk_size")
    check_choice(implementation, IMPLEMENTATIONS, name="implementation")
    if not jax.tree.leaves(params):
        raise ValueError(f"{fn_name}: params has no array leaves")
    validation.check_float_leaves(params, name=f"{fn_name}: params")
    return {k: jnp.asarray(v) for k, v in batch.items()}


def estimate(kind: str, logits_fn: LogitsFn, params: Params, batch: Batch, key: Any = None, *,
             num_samples: int = 1, chunk_size: int | None = None, implementation: str = "auto",
             sharding: Any = None, require_y: bool, fn_name: str) -> Any:
    """Validate, run the jitted driver, then raise on concrete bad values (labels, NaN).
    ``sharding``: the examples' :class:`~jax.sharding.NamedSharding` (``None``: the one found on
    a concrete sharded ``batch``, else one device); see :mod:`cljax.chunking`."""
    batch = check_estimator_inputs(logits_fn, params, batch, chunk_size=chunk_size,
                                   implementation=implementation, require_y=require_y,
                                   fn_name=fn_name)
    validation.check_positive_int(num_samples, name="num_samples")
    if kind in ("true", "kfac_true"):
        if key is None or not hasattr(key, "dtype"):
            raise TypeError(f"{fn_name}: key must be a jax PRNG key (jax.random.key(0) or "
                            f"jax.random.PRNGKey(0)); got {type(key).__name__}")
    else:
        key = None
    sharding = chunking.resolve_sharding(batch["x"], sharding)
    result, fl = estimate_jit(logits_fn, params, batch, key, kind=kind, num_samples=num_samples,
                               chunk_size=chunk_size, implementation=implementation,
                               sharding=sharding)
    if "labels_ok" in fl and not validation.is_concrete(fl["labels_ok"]):
        # traced (inside jit / vmap): nothing can be raised, so an out-of-range label poisons
        # the estimate with NaN instead of silently dropping terms (a consolidation with NaN
        # importance is refused, a training run turning NaN is marked diverged)
        result = jax.tree.map(lambda r: jnp.where(fl["labels_ok"], r, jnp.nan).astype(r.dtype)
                              if jnp.issubdtype(r.dtype, jnp.floating) else r, result)
    if "labels_ok" in fl and validation.is_concrete(fl["labels_ok"]) and not bool(fl["labels_ok"]):
        y = np.asarray(batch["y"])
        raise ValueError(f"{fn_name}: batch['y'] must lie in [0, C) where C is the number of "
                         f"logits; got labels in [{y.min()}, {y.max()}]")
    if validation.is_concrete(fl["finite"]) and not bool(fl["finite"]):
        raise FloatingPointError(f"{fn_name}: logits_fn(params, batch) returned NaN or inf logits")
    return result


__all__ = ["estimate", "estimate_jit", "check_estimator_inputs", "discover", "Plan"]

"""Progressive neural networks (Rusu et al. 2016, arXiv 1606.04671, section 2) as a method.

One column per task, each a copy of the configured MLP with its own output head; column k's
layer i (i ≥ 2 in the paper's 1-based count: every layer after the first, the head included)
also reads the previous layer of every earlier column through a non-linear lateral *adapter*
(the paper's eq. 2, its bias terms written out)::

    h_i^(k) = f(W_i^(k) h_{i-1}^(k) + b_i^(k) + U_i^(k) σ(α_i^(k) V_i^(k) h_{i-1}^(<k) + c_i^(k)))

where ``h_{i-1}^(<k) = [h_{i-1}^(1) … h_{i-1}^(k-1)]`` concatenates the earlier columns, α is one
learned scalar per adapter ("initialized by a random small value": here U(0, ``alpha_init``),
``alpha_init`` = 0.1, the paper gives no number), V projects the (k-1)·n_{i-1} concatenated
features onto r dimensions, σ = ReLU and U maps them to the layer's n_i units. The paper's
equation gives V the shape ``n_{i-1} × n_{i-1}^(<k)``, i.e. r = n_{i-1}, the width of one earlier
column's layer (its prose says "a projection onto an n_i dimensional subspace": the same for the
hidden layers of an equal-width MLP, not at the head, where n_i is the number of outputs); we
follow the equation: ``adapter_dim=None`` (the default); an int sets r for every adapter. The
scale α multiplies V's output (the same as its input: V is linear). The adapters read the
earlier columns' activations after their dropout, as their own next layers do.

Fixed shapes: all T = ``spec.num_tasks`` columns and adapters are allocated at the start and
computed at every step (columns stacked along a leading axis; V stored as one ``n_{i-1} × r``
block per pair j < k), so nothing recompiles per task and runs ``vmap``. Training on task t
trains column t and its adapters only: the earlier columns' activations enter the adapters
through ``stop_gradient`` (constants), and :func:`owned_updates_only`, last in the optimizer
chain, zeroes the update of every parameter task t does not own — under any base optimizer
(Adam's momentum would otherwise move a weight whose gradient is zero), so earlier and later
columns stay bitwise fixed. Each example is predicted by the column of its own task id, which
only Task-IL gives at test time: the method supports the ``"task"`` scenario alone (on a
permuted stream too: each column has its own head of the base's width) and refuses a configured
model with a single head for several tasks (Domain-IL, Class-IL) when a run starts.

Cost: a batch whose largest task id is t computes the first t + 1 columns and their
t(t+1)/2 adapter blocks (the model's ``logits_fn`` / ``train_logits_fn`` switch over the static
prefixes; every T-column parameter is allocated all along): training and evaluating task t
costs ``(t+1)·|column| + t(t+1)/2·n·r``, about a third of the whole network on average over the
tasks (:func:`pnn_parameter_counts` gives the parameter side).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.methods.base import Method, PredictContext, StreamSpec
from cljax.nn import MLP, Model, as_model, check_init
from cljax.types import Array, Batch, Params
from cljax.validation import check_choice, check_positive, check_positive_int

OUTPUTS = ("logits", "all_heads", "features")
TRUNCATED_NORMAL_STD = 0.87962566103423978   # std of a unit normal truncated to [-2, 2] (flax)


def lateral_pairs(num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(k, j)`` of every lateral block j < k (column k reads column j), ordered by k then j:
    the order of the adapters' stacked V blocks (``T(T-1)/2`` of them)."""
    check_positive_int(num_tasks, name="num_tasks")
    k = np.array([k for k in range(1, num_tasks) for _ in range(k)], np.int32)
    j = np.array([j for k in range(1, num_tasks) for j in range(k)], np.int32)
    return k, j


def _parameter_kind(name: str) -> str:
    kind = name.rsplit("_", 1)[0]
    if kind not in ("W", "b", "alpha", "V", "c", "U"):
        raise ValueError(f"{name!r} is not a parameter of a ProgressiveMLP (W_i, b_i, alpha_i, "
                         f"V_i, c_i, U_i)")
    return kind


def parameter_owners(name: str, num_tasks: int) -> np.ndarray:
    """The task owning each slice along axis 0 of the ProgressiveMLP parameter ``name``: column
    weights ``W_i``/``b_i`` are stacked by column, adapter ``alpha_i``/``c_i``/``U_i`` by column
    1…T-1, ``V_i`` by the pairs of :func:`lateral_pairs` (owned by the reading column k)."""
    check_positive_int(num_tasks, name="num_tasks")
    kind = _parameter_kind(name)
    if kind in ("W", "b"):
        return np.arange(num_tasks, dtype=np.int32)
    if kind == "V":
        return lateral_pairs(num_tasks)[0]
    return np.arange(1, num_tasks, dtype=np.int32)


class ProgressiveMLP(nn.Module):
    """T columns of the MLP ``widths`` (ReLU, dropout after each hidden layer) with their own
    ``num_outputs``-wide heads and the adapters of eq. 2 (module docstring) into every layer
    after the first. ``__call__(x, task, *, train, output)``: ``"logits"`` (each example's
    column, by ``task``), ``"all_heads"`` (``[B, T, C]``: every column's head) or
    ``"features"`` (each example's column's last hidden layer)."""

    widths: Sequence[int]
    num_outputs: int
    num_tasks: int
    dropout: float = 0.0
    use_bias: bool = True
    adapter_dim: int | None = None
    alpha_init: float = 0.1
    kernel_stddev: float | None = None
    bias_init: float = 0.0

    def __post_init__(self):
        if not self.widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1
                                  for w in self.widths):
            raise ValueError(f"ProgressiveMLP widths must be a non-empty sequence of positive "
                             f"ints; got {self.widths!r}")
        check_positive_int(self.num_outputs, name="ProgressiveMLP num_outputs")
        check_positive_int(self.num_tasks, name="ProgressiveMLP num_tasks")
        if self.adapter_dim is not None:
            check_positive_int(self.adapter_dim, name="ProgressiveMLP adapter_dim")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"ProgressiveMLP dropout must be a rate in [0, 1); got "
                             f"{self.dropout!r}")
        check_positive(self.alpha_init, name="ProgressiveMLP alpha_init", scalar=True)
        check_init(self.kernel_stddev, self.bias_init, "ProgressiveMLP")
        if isinstance(self.bias_init, str):
            raise ValueError(f"ProgressiveMLP bias_init must be a float (a constant); got "
                             f"{self.bias_init!r}")
        super().__post_init__()

    @property
    def num_heads(self) -> int:
        """One head per column (what :class:`~cljax.methods.StreamSpec` reports)."""
        return self.num_tasks

    def _kernel_init(self, default):
        """The columns' W and the adapters' U: ``default`` (LeCun normal), or the base MLP's
        truncated normal of ``kernel_stddev``."""
        if self.kernel_stddev is None:
            return default
        return nn.initializers.truncated_normal(self.kernel_stddev)

    def _bias_init(self):
        return (nn.initializers.constant(self.bias_init) if self.bias_init
                else nn.initializers.zeros)

    def _adapter(self, i: int, h: Array, n_out: int, n: int) -> Array:
        """``U σ(α V h^(<k) + c)`` of layer ``i`` for columns 1…n-1: ``[n-1, B, n_out]`` (the
        parameters are allocated for all T columns; the first n are read)."""
        T, n_in = self.num_tasks, h.shape[-1]
        r = self.adapter_dim or n_in
        pair_k, pair_j = lateral_pairs(T)
        P = n * (n - 1) // 2                     # the blocks of columns < n come first
        lecun = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))

        def init_v(key, shape, dtype=jnp.float32):
            # lecun_normal of column k's concatenated V (fan-in k·n_in), block by block: a
            # truncated normal on [-2, 2] times one numpy constant per block (the same rounding
            # eager and jitted)
            std = np.sqrt(1.0 / (pair_k * n_in)) / TRUNCATED_NORMAL_STD
            return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * jnp.asarray(
                std.astype(np.float32)[:, None, None], dtype)

        def init_alpha(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, 0.0, self.alpha_init)

        alpha = self.param(f"alpha_{i}", init_alpha, (T - 1,))[:n - 1]
        V = self.param(f"V_{i}", init_v, (len(pair_k), n_in, r))[:P]
        U = self.param(f"U_{i}", self._kernel_init(lecun), (T - 1, r, n_out))[:n - 1]
        earlier = jax.lax.stop_gradient(h)[pair_j[:P]]             # [P, B, n_in], constants
        v = jax.ops.segment_sum(jnp.einsum("pbn,pnr->pbr", earlier, V), pair_k[:P] - 1,
                                num_segments=n - 1, indices_are_sorted=True)
        v = alpha[:, None, None] * v
        if self.use_bias:
            v = v + self.param(f"c_{i}", self._bias_init(), (T - 1, r))[:n - 1, None]
        return jnp.einsum("kbr,krm->kbm", nn.relu(v), U)

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits",
                 columns: int | None = None):
        """``columns`` (static, default all T): compute only the first ``columns`` columns —
        the ones a batch whose task ids are all below ``columns`` reads (the same values)."""
        check_choice(output, OUTPUTS, name="output")
        T = self.num_tasks
        n = T if columns is None else columns
        if not isinstance(n, int) or not 1 <= n <= T or (output == "all_heads" and n != T):
            raise ValueError(f"columns must be an int in [1, {T}] (all {T} for all_heads); got "
                             f"{columns!r}")
        x = x.reshape(x.shape[0], -1)
        sizes = (x.shape[-1], *self.widths, self.num_outputs)
        lecun = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        h = None                                                   # [n, B, width]: the columns
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            W = self.param(f"W_{i}", self._kernel_init(lecun), (T, n_in, n_out))[:n]
            z = (jnp.einsum("bn,knm->kbm", x, W) if h is None
                 else jnp.einsum("kbn,knm->kbm", h, W))
            if self.use_bias:
                z = z + self.param(f"b_{i}", self._bias_init(), (T, n_out))[:n, None]
            if h is not None and n > 1:
                z = z.at[1:].add(self._adapter(i, h, n_out, n))
            if i == len(self.widths):
                break
            h = nn.relu(z)
            if self.dropout > 0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            if i == len(self.widths) - 1 and output == "features":
                return _own_column(h, task, n)
        if output == "all_heads":
            return jnp.swapaxes(z, 0, 1)
        return _own_column(z, task, n)


def _own_column(per_column: Array, task: Array | None, num_tasks: int) -> Array:
    """``per_column[task[b], b]`` for every example b: ``[T, B, ...]`` → ``[B, ...]``."""
    if task is None:
        raise ValueError(f"batch['task'] is required: a progressive network predicts each "
                         f"example with its task's column ({num_tasks} columns)")
    task = jnp.asarray(task)
    if task.shape != per_column.shape[1:2]:
        raise ValueError(f"batch['task'] must have shape {per_column.shape[1:2]} (one id per "
                         f"example); got {task.shape}")
    idx = task.astype(jnp.int32).reshape((1, -1) + (1,) * (per_column.ndim - 2))
    return jnp.take_along_axis(per_column, idx, axis=0)[0]


def progressive_model(base: Model, num_tasks: int, *, adapter_dim: int | None = None,
                      alpha_init: float = 0.1) -> Model:
    """The progressive network of ``num_tasks`` columns built from a :class:`cljax.nn.MLP` base
    model: its hidden widths, dropout, bias setting and initialisation, each column with a head
    of the base's ``num_outputs`` (Rusu et al. 2016, section 2)."""
    if not isinstance(base, Model):
        raise TypeError(f"base must be a cljax.nn.Model (cljax.nn.as_model(module)); got "
                        f"{type(base).__name__}")
    module = base.module
    if not isinstance(module, MLP):
        raise ValueError(f"pnn builds its columns from a cljax.nn.MLP base model; got "
                         f"{type(module).__name__} (config['model']['kind'] must be 'mlp')")
    if module.feature_encoding:
        raise ValueError("pnn does not take an MLP with RGO's feature encoding layer "
                         "(feature_encoding must be 0)")
    if module.kernel_init != "lecun_normal" or isinstance(module.bias_init, str):
        raise ValueError(f"pnn initialises its columns and adapters with LeCun normal weights "
                         f"(or the MLP's kernel_stddev) and a constant bias; the MLP's "
                         f"kernel_init={module.kernel_init!r}, bias_init={module.bias_init!r} "
                         f"would not be carried (use kernel_stddev and a float bias_init)")
    check_positive_int(num_tasks, name="num_tasks")
    net = ProgressiveMLP(tuple(module.widths), module.num_outputs, num_tasks,
                         dropout=module.dropout, use_bias=module.use_bias,
                         adapter_dim=adapter_dim, alpha_init=alpha_init,
                         kernel_stddev=module.kernel_stddev, bias_init=float(module.bias_init))
    model = as_model(net)

    def columns_read(params: Params, batch: Batch, key: Array | None) -> Array:
        """Each example's logits from the columns up to the batch's largest task id only
        (``lax.switch`` over the static prefixes: a batch of task t computes t + 1 columns and
        their adapters, not T; the same values as the whole network)."""
        x, task = batch["x"], batch.get("task")
        if task is None:
            return model.logits_fn(params, batch)    # its error: the task id is required

        def prefix(n):
            def run(params, x, task, key):
                if key is None:
                    return net.apply({"params": params}, x, task, columns=n)
                return net.apply({"params": params}, x, task, train=True, columns=n,
                                 rngs={"dropout": key})
            return run

        last = jnp.clip(jnp.max(jnp.asarray(task, jnp.int32)), 0, num_tasks - 1)
        return jax.lax.switch(last, [prefix(n) for n in range(1, num_tasks + 1)], params, x,
                              task, key)

    return model._replace(logits_fn=lambda params, batch: columns_read(params, batch, None),
                          train_logits_fn=columns_read)


def owned_updates_only() -> optax.GradientTransformationExtraArgs:
    """Zero the update of every ProgressiveMLP parameter the task ``pnn_task`` (an extra
    argument, a traced int) does not own (:func:`parameter_owners`): put it last in the chain,
    after the base optimizer, so that no other column or adapter moves, bitwise."""

    def update(updates, state, params=None, *, pnn_task=None, **extra):
        del params, extra
        if pnn_task is None:
            raise ValueError("owned_updates_only needs the extra argument pnn_task (the task "
                             "being trained)")
        if not isinstance(updates, dict) or "W_0" not in updates:
            raise ValueError("owned_updates_only expects the parameters of a ProgressiveMLP "
                             f"(a dict with W_0, …); got {type(updates).__name__}")
        T = updates["W_0"].shape[0]
        out = {}
        for name, u in updates.items():
            owners = jnp.asarray(parameter_owners(name, T))
            if owners.shape[0] != u.shape[0]:
                raise ValueError(f"parameter {name!r} has {u.shape[0]} slices along axis 0; a "
                                 f"{T}-column network has {owners.shape[0]}")
            keep = (owners == pnn_task).reshape((-1,) + (1,) * (u.ndim - 1))
            out[name] = jnp.where(keep, u, jnp.zeros_like(u))
        return out, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


class PNNParameterCounts(NamedTuple):
    """Parameter counts of a progressive network: ``per_task[t]`` the parameters task t adds
    and trains (column t and its adapters), ``cumulative[t]`` those of columns 0…t (what task
    t's predictions read), ``base`` those of the configured MLP (all its heads)."""

    per_task: tuple[int, ...]
    cumulative: tuple[int, ...]
    base: int


def pnn_parameter_counts(base_model: Model, spec: StreamSpec, *, adapter_dim: int | None = None
                         ) -> PNNParameterCounts:
    """The :class:`PNNParameterCounts` of the network :func:`pnn` builds from ``base_model`` for
    ``spec``'s stream (shapes only: nothing is initialised)."""
    if not isinstance(spec, StreamSpec):
        raise TypeError(f"spec must be a cljax.methods.StreamSpec; got {type(spec).__name__}")
    model = progressive_model(base_model, spec.num_tasks, adapter_dim=adapter_dim)
    dummy = {"x": jax.ShapeDtypeStruct((1, *spec.example_shape), jnp.float32),
             "task": jax.ShapeDtypeStruct((1,), jnp.int32)}
    T = spec.num_tasks
    per_task = np.zeros(T, np.int64)
    for name, leaf in jax.eval_shape(model.init, jax.random.key(0), dummy).items():
        owners = parameter_owners(name, T)
        per_task += np.bincount(owners, minlength=T) * int(np.prod(leaf.shape[1:]))
    base = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(
        jax.eval_shape(base_model.init, jax.random.key(0), dummy)))
    return PNNParameterCounts(tuple(int(c) for c in per_task),
                              tuple(int(c) for c in np.cumsum(per_task)), base)


def pnn(*, adapter_dim: int | None = None, alpha_init: float = 0.1) -> Method:
    """Progressive networks (Rusu et al. 2016): the model hook builds T columns with adapters
    (:func:`progressive_model`) from the configured MLP; training on task t moves column t and
    its adapters only (:func:`owned_updates_only` after the base optimizer); prediction routes
    each example to its task's column. ``adapter_dim``: the adapters' r (None: the paper's
    n_{i-1}); ``alpha_init``: α ~ U(0, alpha_init) at initialisation."""
    if adapter_dim is not None:
        check_positive_int(adapter_dim, name="adapter_dim")
    check_positive(alpha_init, name="alpha_init", scalar=True)

    def model(base: Model, spec: StreamSpec) -> Model:
        if spec.num_tasks > 1 and spec.num_heads == 1:
            raise ValueError(f"pnn predicts each example with its task's column, so it needs the "
                             f"task id at test time: the 'task' scenario only (the configured "
                             f"model has one head for {spec.num_tasks} tasks: the 'domain' or "
                             f"'class' scenario)")
        return progressive_model(base, spec.num_tasks, adapter_dim=adapter_dim,
                                 alpha_init=alpha_init)

    def predict(params: Params, mstate: Any, batch: Batch, ctx: PredictContext) -> Array:
        del mstate
        return ctx.model.logits_fn(params, {**batch, "task": ctx.tasks})

    return Method("pnn", make_optimizer=lambda hparams, base: optax.chain(base,
                                                                          owned_updates_only()),
                  optimizer_args=lambda params, batch, mstate, ctx: {"pnn_task": ctx.task},
                  predict=predict, model=model, scenarios=("task",))


__all__ = ["pnn", "ProgressiveMLP", "progressive_model", "owned_updates_only",
           "pnn_parameter_counts", "PNNParameterCounts", "parameter_owners", "lateral_pairs"]

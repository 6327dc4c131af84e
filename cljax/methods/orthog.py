"""ORTHOG-SUBSPACE (Chaudhry, Khan, Dokania & Torr 2020, "Continual learning in low-rank
orthogonal subspaces", NeurIPS, arXiv 2010.11635) as a recipe on the method protocol.

Each task t owns a fixed rank-r subspace of the last hidden layer's features, spanned by the
orthonormal columns of A_t ∈ ℝ^{d×r}, with A_sᵀA_t = 0 for s ≠ t; an example of task t is
classified from its features projected there: logits = head(P_t φ(x)), P_t = A_t A_tᵀ. The task
id is known at training and test time (each example's ``batch["task"]``: a batch may mix tasks).
Where the paper's networks are deep, their hidden layers are kept isometric by training them on
the Stiefel manifold (:mod:`cljax.transforms.stiefel`), and a tiny episodic memory is replayed,
each stored example through its own task's projection.

What their code does (arslan-chaudhry/orthog_subspace: ``utils/utils.py``
``generate_projection_matrix``, ``model/model.py``, ``fc_permute_mnist.py``,
``conv_split_cifar.py``, ``replicate_results.sh``):

* **The subspaces.** ``QR = False`` in every script: A_t are the columns [t·r, (t+1)·r) of the
  identity, r = d // T (Python 2 division; d = 256 and T = 20 on MNIST: r = 12, the last 16
  features unused; d = 512 and T = 17 on their CIFAR ResNet: r = 30), P_t = A_t A_tᵀ a 0/1
  diagonal (``basis="identity"``, the default). ``QR = True`` takes the columns of the Q of a
  uniform random d × d matrix (``basis="random"``). T is the number of tasks trained (their 23
  minus the 3 cross-validation tasks).
* **Where P_t acts.** MLP (``FC-S``, 784-256-256): on the second hidden layer's pre-activation,
  relu((h W + b) P_t); ResNet: on the pooled features, relu(φ P_t). For the identity basis both
  equal head(P_t φ(x)), what this module computes for any network (the output layer's input is
  multiplied by P_t); for a random basis their ReLU after P_t is not applied here.
* **MNIST** (``SUBSPACE-PROJ`` in ``replicate_results.sh``, "Orthog Subspace w/o memory"):
  no memory and no Stiefel update — plain SGD, lr 0.1, batch 10, one pass over 10,000 examples
  per task, orthogonal initialisation of every weight matrix, biases 0.1. Here: ``per_class=0``,
  ``stiefel=False`` (the configs ``permuted_mnist_rgo`` / ``rotated_mnist_rgo`` already have
  that protocol).
* **CIFAR-100 / miniImageNet** (``ER-SUBSPACE --maintain-orthogonality``, lr 0.4 / 0.2, batch
  10, ``--mem-size 1``): one example per class kept (their ring buffer per class; here the
  per-class memory filled at each task's end, :mod:`cljax.methods.rehearsal`); each step draws
  one past task uniformly and replays its whole memory block (``replay="task"``), and the
  gradients of the current and the replayed batch are summed and divided by t, the number of
  tasks seen (``accum_grads += grad / task_id`` with ``task_id = task + 1``: ``loss="scaled"``,
  (ℓ_current + ℓ_memory) / t); every conv kernel (shortcuts included) and no other parameter
  (batch-norm, classifier) is updated by the Cayley retraction (``stiefel=True``; the kernels
  orthogonally initialised — here the Stiefel kernels are moved onto the manifold at
  initialisation, :func:`cljax.transforms.orthonormalize`, which keeps an orthogonal
  initialisation as it is).

Options (see :func:`orthog`) select those variants; ``replay="uniform"`` with ``loss="concat"``
replays ER-Ring's way instead (Chaudhry et al. 2019): a uniform draw from the whole memory, one
cross-entropy over the current and memory rows together.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import memory as mem
from cljax.layers import get_layer, set_layer
from cljax.methods.base import Method, StreamSpec, cross_entropy, current_task_batch
from cljax.methods.rehearsal import MemoryPlan, core_rows, memory_plan, store_finished_task
from cljax.nn.model import Model
from cljax.transforms.stiefel import (
    kernel_names,
    orthonormalize,
    selected_kernels,
    stiefel_retraction,
)
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_choice, check_positive_int

BASES = ("identity", "random")
"""The task bases: columns of the identity (their code's ``QR = False``) or of a random
orthogonal matrix (``QR = True``)."""
REPLAYS = ("task", "uniform")
"""How a step draws its memory rows: one past task's stored examples (their ER-SUBSPACE), or a
uniform draw from the whole memory (ER-Ring)."""
LOSSES = ("scaled", "concat")
"""(ℓ_current + ℓ_memory) / t, t the tasks seen (their code), or one mean cross-entropy over the
current and memory rows together (ER-Ring)."""


def subspace_rank(num_tasks: int, features: int, rank: int | None = None) -> int:
    """The rank r of each task's subspace: ``rank``, or ``features // num_tasks`` (their
    ``generate_projection_matrix``); an error unless 1 ≤ r and r · num_tasks ≤ features."""
    check_positive_int(num_tasks, name="num_tasks")
    check_positive_int(features, name="features")
    r = features // num_tasks if rank is None else rank
    if rank is not None:
        check_positive_int(rank, name="rank")
    if r < 1 or r * num_tasks > features:
        raise ValueError(f"{num_tasks} tasks of rank {r} need {num_tasks * max(r, 1)} feature "
                         f"dimensions; the features have {features}: widen the last hidden "
                         f"layer or lower rank")
    return r


@functools.lru_cache(maxsize=32)
def _bases(num_tasks: int, features: int, rank: int, basis: str, seed: int) -> np.ndarray:
    if basis == "identity":
        q = np.eye(features, dtype=np.float64)
    else:
        rng = np.random.default_rng(seed)
        q, r = np.linalg.qr(rng.uniform(size=(features, features)))
        q = q * np.sign(np.diag(r))        # a unique Q (diag R > 0)
    out = np.stack([q[:, t * rank:(t + 1) * rank] for t in range(num_tasks)]).astype(np.float32)
    out.setflags(write=False)
    return out


def task_bases(num_tasks: int, features: int, *, rank: int | None = None,
               basis: str = "identity", seed: int = 0) -> np.ndarray:
    """float32 ``[num_tasks, features, r]``: A_t, task t's orthonormal basis (A_tᵀA_t = I_r,
    A_sᵀA_t = 0 for s ≠ t): the columns [t·r, (t+1)·r) of the identity (``basis="identity"``)
    or of a random orthogonal matrix, the Q of a uniform ``features × features`` matrix drawn
    from ``seed`` (``"random"``); r = :func:`subspace_rank`. Read-only, cached."""
    check_choice(basis, BASES, name="basis")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int; got {seed!r}")
    r = subspace_rank(num_tasks, features, rank)
    return _bases(int(num_tasks), int(features), r, basis, seed)


def task_projections(bases: Any) -> np.ndarray:
    """P_t = A_t A_tᵀ for ``bases`` ``[T, d, r]`` (:func:`task_bases`): ``[T, d, d]``, each an
    orthogonal projector (P_t² = P_t, P_sP_t = 0 for s ≠ t)."""
    a = np.asarray(bases, np.float64)
    return np.einsum("tdr,ter->tde", a, a)


def project_features(features: Array, tasks: Array, bases: Any) -> Array:
    """Each example's features ``[B, d]`` projected on its task's subspace: A_t A_tᵀ φ for
    ``tasks`` ``[B]`` (int) and ``bases`` ``[T, d, r]``."""
    bases = jnp.asarray(bases, features.dtype)
    tasks = jnp.asarray(tasks, jnp.int32)
    if features.ndim != 2 or tasks.shape != features.shape[:1]:
        raise ValueError(f"features must be [B, d] and tasks [B]; got {features.shape} and "
                         f"{tasks.shape}")
    a = bases[tasks]                                               # [B, d, r]
    return jnp.einsum("bdr,br->bd", a, jnp.einsum("bdr,bd->br", a, features))


def output_layer(params: Params) -> str:
    """The output layer of a cljax network: the top-level ``Dense_k`` with the largest k (the
    classifier of :class:`cljax.nn.MLP`, :class:`~cljax.nn.CNN`, :class:`~cljax.nn.ResNet18`
    and :class:`~cljax.nn.AlexNet`)."""
    dense = [name for name in params if isinstance(name, str) and name.startswith("Dense_")
             and name[len("Dense_"):].isdigit()]
    if not dense:
        raise ValueError(f"orthog finds the output layer as the last top-level Dense_k; the "
                         f"params have none: {sorted(map(str, params))}")
    return max(dense, key=lambda name: int(name[len("Dense_"):]))


def stiefel_kernels(params: Params, layers: Sequence[str] | None = None) -> list[str]:
    """The layers whose kernels the Stiefel retraction trains: ``layers`` (checked), or by
    default every Dense and Conv kernel but the output layer's (their code: every ``kernel``
    variable, shortcut convolutions included; the classifier is not one)."""
    if layers is not None:
        return selected_kernels(params, layers)
    out = output_layer(params)
    return [name for name in kernel_names(params) if name != out]


def _tasks_of(batch: Batch) -> Array:
    if batch.get("task") is None:
        raise ValueError("orthog projects each example on its task's subspace: it needs "
                         "batch['task'] (one task id per example)")
    return jnp.asarray(batch["task"], jnp.int32)


def subspace_model(base: Model, spec: StreamSpec, *, rank: int | None = None,
                   basis: str = "identity", seed: int = 0, stiefel: bool = False,
                   stiefel_layers: Sequence[str] | None = None) -> Model:
    """``base`` with ORTHOG-SUBSPACE's task projections: the output layer (:func:`output_layer`)
    reads P_t φ(x) for each example's task t (:func:`task_bases` of ``spec.num_tasks`` tasks over
    the ``spec.feature_dim`` features), and ``features_fn`` (and ``apply_fn``'s features)
    return P_t φ(x), what the output layer reads. With ``stiefel``, ``init`` moves the kernels
    of :func:`stiefel_kernels` onto the Stiefel manifold
    (:func:`cljax.transforms.orthonormalize`). The parameters are the base model's."""
    if not isinstance(base, Model):
        raise TypeError(f"base must be a cljax.nn.Model (as_model(module)); got "
                        f"{type(base).__name__}")
    if base.features_fn is None or base.apply_fn is None or spec.feature_dim is None:
        raise ValueError(f"orthog projects the features the output layer reads: it needs a "
                         f"network whose __call__ takes output='features' (cljax.nn.MLP, CNN, "
                         f"ResNet18, AlexNet); got a {type(base.module).__name__}")
    base_features, base_apply = base.features_fn, base.apply_fn
    dummy = {"x": jax.ShapeDtypeStruct((1, *spec.example_shape), jnp.float32),
             "task": jax.ShapeDtypeStruct((1,), jnp.int32)}
    shapes = jax.eval_shape(base.init, jax.random.key(0), dummy)
    out_name = output_layer(shapes)
    kernel = shapes[out_name]["kernel"]
    if kernel.shape[0] != spec.feature_dim:
        raise ValueError(f"orthog: the output layer {out_name!r} reads {kernel.shape[0]} inputs, "
                         f"not the {spec.feature_dim} features of features_fn")
    bases = task_bases(spec.num_tasks, spec.feature_dim, rank=rank, basis=basis, seed=seed)
    masks = bases.sum(axis=-1) if basis == "identity" else None    # [T, d], 0/1
    chosen = stiefel_kernels(shapes, stiefel_layers) if stiefel else []

    def project(features: Array, tasks: Array) -> Array:
        if masks is not None:
            return features * jnp.asarray(masks, features.dtype)[tasks]
        return project_features(features, tasks, bases)

    def interceptor(tasks: Array, seen: list[str]):
        def run(next_fun, args, kwargs, ctx):
            scope = ctx.module.scope
            if (ctx.method_name == "__call__" and scope is not None
                    and "/".join(scope.path) == out_name):
                seen.append(out_name)
                args = (project(args[0], tasks), *args[1:])
            return next_fun(*args, **kwargs)
        return run

    def projected(fn):
        def run(params, batch, *args, **kwargs):
            seen: list[str] = []
            with nn.intercept_methods(interceptor(_tasks_of(batch), seen)):
                out = fn(params, batch, *args, **kwargs)
            if seen != [out_name]:
                raise RuntimeError(f"orthog projected the input of {seen}; expected one call of "
                                   f"the output layer {out_name!r}")
            return out
        return run

    def init(key: PRNGKey, batch: Batch) -> Params:
        params = base.init(key, batch)
        for name in chosen:
            kernel = get_layer(params, name)["kernel"]
            params = set_layer(params, name, {"kernel": orthonormalize(kernel)})
        return params

    def features_fn(params: Params, batch: Batch) -> Array:
        return project(base_features(params, batch), _tasks_of(batch))

    def apply_fn(params: Params, batch: Batch, key: PRNGKey | None = None,
                 output: str = "logits") -> Array:
        if output == "features":
            return project(base_apply(params, batch, key, output=output), _tasks_of(batch))
        return projected(base_apply)(params, batch, key, output=output)

    return Model(base.module, init if chosen else base.init, projected(base.logits_fn),
                 projected(base.train_logits_fn), features_fn,
                 None if base.all_heads_fn is None else projected(base.all_heads_fn), apply_fn)


def _empty(kind: str, per_class: int | None, capacity: int | None) -> bool:
    """A memory of no examples (the method is then the projection alone)."""
    return (kind == "per_class" and per_class == 0) or capacity == 0 or (
        kind == "reservoir" and capacity is None and per_class == 0)


def replay_size(plan: MemoryPlan, replay: str, memory_batch_size: int | None, ctx: Any) -> int:
    """Memory rows drawn per step: ``memory_batch_size``, else a past task's whole block of a
    per-class memory (``replay="task"``: their ER-SUBSPACE), else the current batch's size."""
    if memory_batch_size is not None:
        return memory_batch_size
    if replay == "task" and plan.kind == "per_class":
        assert plan.per_class is not None
        return plan.per_class * ctx.spec.classes_per_task
    return ctx.batch_size


def replay_batch(ctx: Any, memory_state: Any, *, replay: str, size: int) -> dict[str, Any]:
    """The current task's examples and ``size`` distinct memory rows (``"memory"``, with
    ``"memory_ok"``): of one past task drawn uniformly (``replay="task"``, none during the
    first task) or of every stored task (``"uniform"``, ER-Ring's)."""
    check_choice(replay, REPLAYS, name="replay")
    rows: dict[str, Any] = dict(current_task_batch(ctx, None))
    if replay == "task":
        k_task, k_rows = jax.random.split(ctx.key)
        past = jax.random.randint(k_task, (), 0, jnp.maximum(ctx.task, 1))
        rows["memory"], ok = mem.sample_memory(memory_state, k_rows, size,
                                               where=memory_state.task == past, replace=False)
        ok = ok & (ctx.task > 0)
    else:
        rows["memory"], ok = mem.sample_memory(memory_state, ctx.key, size, replace=False)
    rows["memory_ok"] = ok
    return rows


def replay_loss(params: Any, batch: Any, ctx: Any, *, loss: str) -> Any:
    """ORTHOG-SUBSPACE's loss on the current examples and the replayed memory rows (each through
    its own task's projection, the model's): ``"scaled"``, their ``(ℓ_current + ℓ_memory) / t``
    (the code's ``grad / task_id``), or ``"concat"``, one mean over the current and the valid
    memory rows (ER-Ring's). ``batch["memory"]`` / ``batch["memory_ok"]``: the rows and which are
    stored."""
    check_choice(loss, LOSSES, name="loss")
    k_cur, k_mem = jax.random.split(ctx.key)
    ce_cur = cross_entropy(ctx.model.train_logits_fn(params, batch, k_cur), batch["y"])
    mb = ctx.to_batch(batch["memory"])
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        ctx.model.train_logits_fn(params, mb, k_mem), mb["y"])
    ok = batch["memory_ok"].astype(per_example.dtype)
    n_mem = jnp.sum(ok)
    ce_mem = jnp.sum(per_example * ok) / jnp.maximum(n_mem, 1.0)
    if loss == "scaled":
        return (ce_cur + ce_mem) / (ctx.task + 1).astype(ce_cur.dtype)
    n_cur = jnp.asarray(batch["y"].shape[0], ce_cur.dtype)
    return (n_cur * ce_cur + n_mem * ce_mem) / (n_cur + n_mem)


def _check_options(*, rank: Any, basis: Any, basis_seed: Any, replay: Any,
                   memory_batch_size: Any, loss: Any, stiefel: Any, stiefel_layers: Any,
                   cayley_iterations: Any) -> None:
    """:func:`orthog`'s static options (the memory's are :func:`memory_plan`'s), each with an
    error naming it."""
    check_choice(basis, BASES, name="basis")
    check_choice(replay, REPLAYS, name="replay")
    check_choice(loss, LOSSES, name="loss")
    if not isinstance(stiefel, bool):
        raise TypeError(f"stiefel must be a bool; got {stiefel!r}")
    if not isinstance(basis_seed, int) or isinstance(basis_seed, bool):
        raise TypeError(f"basis_seed must be an int; got {basis_seed!r}")
    if rank is not None:
        check_positive_int(rank, name="rank")
    if memory_batch_size is not None:
        check_positive_int(memory_batch_size, name="memory_batch_size")
    if cayley_iterations is not None:
        check_positive_int(cayley_iterations, name="cayley_iterations")
    if stiefel_layers is not None and (isinstance(stiefel_layers, str) or not isinstance(
            stiefel_layers, Sequence) or not all(isinstance(n, str) for n in stiefel_layers)):
        raise TypeError(f"stiefel_layers must be a list of layer names (e.g. ['Dense_0']); got "
                        f"{stiefel_layers!r}")
    if not stiefel and (stiefel_layers is not None or cayley_iterations is not None):
        raise ValueError("stiefel_layers and cayley_iterations set the Stiefel update: they "
                         "need stiefel=True")


def orthog(*, rank: int | None = None, basis: str = "identity", basis_seed: int = 0,
           memory: str = "per_class", per_class: int | None = 1, capacity: int | None = None,
           replay: str = "task", memory_batch_size: int | None = None, loss: str = "scaled",
           stiefel: bool = False, stiefel_layers: Sequence[str] | None = None,
           cayley_iterations: int | None = None) -> Method:
    """ORTHOG-SUBSPACE (Chaudhry et al. 2020): each task classifies from its own rank-``rank``
    subspace of the last hidden layer's features (default d // T), the subspaces of different
    tasks orthogonal (``basis="identity"``: blocks of the identity, their code; ``"random"``: a
    random orthogonal basis from ``basis_seed``), with a small episodic memory replayed through
    each stored example's own projection and optionally the hidden layers trained on the
    Stiefel manifold.

    Memory (:mod:`cljax.methods.rehearsal`'s options ``memory``, ``per_class``, ``capacity``;
    default one example per class, their ``--mem-size 1``; ``per_class=0``: no memory, their
    MNIST runs): ``replay="task"`` replays each step the stored examples of one past task drawn
    uniformly (``memory_batch_size`` of them, default all ``per_class × classes per task``;
    their ER-SUBSPACE), ``"uniform"`` ``memory_batch_size`` (default the batch size) distinct
    examples of the whole memory; ``loss="scaled"``: (ℓ_current + ℓ_memory) / t with t the
    tasks seen (their code), ``"concat"``: one cross-entropy over all rows.
    ``stiefel=True`` chains :func:`cljax.transforms.stiefel_retraction` after the base optimizer
    (plain SGD in the paper) for ``stiefel_layers`` (default every Dense and Conv kernel but the
    output layer's), moved onto the manifold at initialisation; ``cayley_iterations`` = k runs
    their k-step fixed-point Cayley iteration (2 in their code) instead of the closed form.
    Task-aware: the task id of every example is used at training and test time (Task-IL, or
    Domain-IL with a shared head as in the paper's MNIST); Class-IL is refused."""
    _check_options(rank=rank, basis=basis, basis_seed=basis_seed, replay=replay,
                   memory_batch_size=memory_batch_size, loss=loss, stiefel=stiefel,
                   stiefel_layers=stiefel_layers, cayley_iterations=cayley_iterations)
    plan = memory_plan(memory, per_class, capacity)
    layers = None if stiefel_layers is None else tuple(stiefel_layers)

    def model(base: Model, spec: StreamSpec) -> Model:
        return subspace_model(base, spec, rank=rank, basis=basis, seed=basis_seed,
                              stiefel=stiefel, stiefel_layers=layers)

    def make_optimizer(hparams, base):
        del hparams
        if not stiefel:
            return base
        return optax.chain(base, stiefel_retraction(
            lambda params: stiefel_kernels(params, layers), iterations=cayley_iterations))

    common: dict[str, Any] = dict(model=model, make_optimizer=make_optimizer,
                                  scenarios=("task", "domain"))
    if _empty(plan.kind, plan.per_class, plan.capacity):
        return Method("orthog", **common)

    def batch(ctx, memory_state):
        return replay_batch(ctx, memory_state, replay=replay,
                            size=replay_size(plan, replay, memory_batch_size, ctx))

    def loss_fn(params, batch, memory_state, ctx):
        del memory_state
        return replay_loss(params, batch, ctx, loss=loss), {}

    def init(params, key, hparams, spec):
        del params, key, hparams
        return plan.build(spec)[0]

    def after_step(info):
        if plan.kind != "reservoir":
            return info.keep_params(info.mstate)
        return info.keep_params(mem.reservoir_add(info.mstate, core_rows(info.rows), info.key))

    def end_task(ctx):
        return ctx.keep_params(store_finished_task(ctx.mstate, plan, ctx, ctx.key))

    return Method("orthog", init=init, batch=batch, loss=loss_fn, after_step=after_step,
                  end_task=end_task, check=plan.check_config, **common)


__all__ = ["orthog", "subspace_model", "subspace_rank", "task_bases", "task_projections",
           "project_features", "output_layer", "stiefel_kernels", "replay_size",
           "replay_batch", "replay_loss", "BASES", "REPLAYS", "LOSSES"]

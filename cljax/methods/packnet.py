"""PackNet (Mallya & Lazebnik 2018, CVPR, arXiv 1711.05769) as a recipe on the method protocol.

One network holds every task: each task trains the weights still free, then, per layer, releases
the smallest-magnitude fraction ``prune_ratio`` of them (set to zero, free for the next task),
retrains the kept ones for ``retrain_steps`` steps and freezes them; task t predicts with the
weights of tasks ≤ t (those of later tasks masked to zero). Biases and normalisation parameters
train with task 0 and are fixed afterwards (the authors' ``nobias-nobn`` runs).

State (:class:`PackNetState`, shapes fixed for the stream): the owner of every weight of the
Dense / Conv kernels (:mod:`cljax.layers`) as an int32 array — a task id, or :data:`FREE` for a
released weight. The current task claims the free weights at its start (``init``, ``end_task``),
so "trainable now" is ``owner == task`` and "in task t's network" is ``owner <= t``; a leaf
without an owner array (biases, normalisation parameters) is owned by task 0.

Choices, and where they come from:

* The update rule (:func:`owner_masked`) keeps the optimizer's input gradient and its output
  update to the current task's weights (the authors zero the gradients of fixed weights before
  each SGD step; Adam's moments would still move a weight whose gradient is zero, so the update
  is masked too). A masked update is −0.0, the exact identity of IEEE addition: frozen weights do
  not change, bit for bit, under any base optimizer.
* Multi-head models (Task-IL, :mod:`cljax.nn.heads`): the output layer's columns of head h, and
  their biases, belong to task h from the start (the authors give each task its own unpruned
  classifier), so no task trains or prunes another's head; a single shared head is pruned like
  the other layers.
* Pruning per layer keeps the ``round(ratio × F)`` smallest of the F weights the task claimed
  released (ties by position), as the authors' ``SparsePruner``; the counts follow from the
  static options alone, so a layer that runs out of free weights for some task is an error when
  the state is built, before any training.
* The prune happens in ``after_step`` of the step ``task_steps − retrain_steps − 1`` (a
  ``lax.cond``; under ``vmap`` the predicate is "some run prunes now", which all runs share, so
  it stays a cond and no other step pays for the selection).

Cost of a step (784-400-400 MLP, batch 128, Adam): the masked update is ≈ free (1.01–1.06× on
an H200); the per-step cond costs ≈ 2% on the CPU but on a GPU its predicate is read by the host
at every step (≈ +50 µs there, 1.6–1.75× a 66 µs step; 1.15× with XLA's command buffers holding
conditionals).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.custom_batching import custom_vmap

from cljax.layers import get_layer, param_layers, path_name, set_layer
from cljax.methods.base import ConfigPlan, Method, StreamSpec
from cljax.transforms.common import stateless_with_extra_args
from cljax.types import Array, Params

FREE = int(np.iinfo(np.int32).max)
"""Owner id of a released weight: zero, in no task's network, claimed by the next task."""


class PackNetState(NamedTuple):
    """``owner``: {leaf path ("Dense_0/kernel"): int32 array of the leaf's shape}, each weight's
    task (or :data:`FREE`) — every Dense/Conv kernel, and the output layer's kernel and bias in a
    multi-head model."""

    owner: dict[str, Array]


class PackNetPlan(NamedTuple):
    """The static layout of a model's weights (from the params' shapes and the stream spec)."""

    prunable: tuple[str, ...]       # layer names whose kernels are pruned, in params order
    head: str | None                # the multi-head output layer (columns owned per head)
    head_leaves: tuple[str, ...]    # its kernel (and bias) paths
    releases: np.ndarray            # int64 [T, len(prunable)]: weights each task releases


# --------------------------------------------------------------------------------------------
# One run's decisions shared by every vmapped run (a cond stays a cond under vmap)
# --------------------------------------------------------------------------------------------

@custom_vmap
def any_run(pred: Array) -> Array:
    """``pred`` (a bool scalar); under ``vmap`` over runs, True when it holds in some run: an
    unbatched predicate, so ``lax.cond(any_run(p), ...)`` stays a cond (both branches would run
    at every step otherwise). The branch must then act only on the runs where ``p`` holds."""
    return pred


@any_run.def_vmap
def _any_run_vmap(axis_size, in_batched, pred):
    del axis_size
    return (any_run(jnp.any(pred)) if in_batched[0] else any_run(pred)), False


@custom_vmap
def all_runs(pred: Array) -> Array:
    """``pred``; under ``vmap`` over runs, True when it holds in every run (unbatched, as
    :func:`any_run`)."""
    return pred


@all_runs.def_vmap
def _all_runs_vmap(axis_size, in_batched, pred):
    del axis_size
    return (all_runs(jnp.all(pred)) if in_batched[0] else all_runs(pred)), False


# --------------------------------------------------------------------------------------------
# Pure functions of the method
# --------------------------------------------------------------------------------------------

def release_smallest(weights: Array, owner: Array, task: Array, count: Array
                     ) -> tuple[Array, Array]:
    """PackNet's pruning of one layer (Mallya & Lazebnik 2018, §3): of the weights ``task``
    owns, the ``count`` of smallest magnitude (ties: the earlier position in row-major order)
    are released — set to +0.0, owner :data:`FREE`. Returns ``(weights, owner)``.

    The ``count``-th smallest magnitude is found by bisection over the bit patterns of ``|w|``
    (ordered as the floats are, for non-negative floats; NaN last): one counting pass per bit,
    no sort (XLA's CPU sort of a 784×400 kernel takes ~30× longer)."""
    if jnp.shape(weights) != jnp.shape(owner):
        raise ValueError(f"weights and owner must have the same shape; got {jnp.shape(weights)} "
                         f"and {jnp.shape(owner)}")
    if not jnp.issubdtype(jnp.asarray(owner).dtype, jnp.integer):
        raise TypeError(f"owner must be an int array of task ids; got {jnp.asarray(owner).dtype}")
    if not jnp.issubdtype(jnp.asarray(weights).dtype, jnp.floating):
        raise TypeError(f"weights must be floats; got {jnp.asarray(weights).dtype}")
    mine = owner == task
    magnitude = jnp.abs(weights)
    nbits = magnitude.dtype.itemsize * 8
    udt = {16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[nbits]
    bits = jax.lax.bitcast_convert_type(magnitude, udt)

    def halve(_, bounds):       # the smallest v with at least `count` of mine at bits <= v
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(mine & (bits <= mid)) >= count
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    cut, _ = jax.lax.fori_loop(0, nbits, halve, (jnp.zeros((), udt),
                                                 jnp.asarray(np.iinfo(udt).max, udt)))
    below = mine & (bits < cut)
    tied = mine & (bits == cut)
    rank = (jnp.cumsum(tied.ravel()) - 1).reshape(tied.shape)
    release = below | (tied & (rank < count - jnp.sum(below)))
    return (jnp.where(release, jnp.zeros_like(weights), weights),
            jnp.where(release, jnp.asarray(FREE, owner.dtype), owner))


def task_weights(params: Params, owner: Mapping[str, Array], task: Array) -> Params:
    """The network of ``task`` (Mallya & Lazebnik 2018, §3, inference): every weight with an
    owner keeps its value where its owner is ≤ ``task`` and is zero elsewhere (later tasks'
    weights, released ones); other leaves are unchanged."""
    _check_owner_paths(params, owner)
    return jax.tree_util.tree_map_with_path(
        lambda p, w: _mask(w, owner[path_name(p)] <= task) if path_name(p) in owner else w,
        params)


def _mask(w: Array, keep: Array) -> Array:
    return jnp.where(keep, w, jnp.zeros_like(w))


def _check_owner_paths(params: Params, owner: Mapping[str, Array]) -> None:
    if not isinstance(owner, Mapping):
        raise TypeError(f"owner must be a dict {{leaf path: int array}}; got "
                        f"{type(owner).__name__}")
    leaves = {path_name(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for name, o in owner.items():
        if name not in leaves:
            raise ValueError(f"owner names {name!r}, which is not a leaf of params; leaves: "
                             f"{sorted(leaves)}")
        if jnp.shape(o) != leaves[name]:
            raise ValueError(f"owner[{name!r}] has shape {jnp.shape(o)}; the params leaf has "
                             f"{leaves[name]}")


def trainable(path: str, owner: Mapping[str, Array], task: Array) -> Array:
    """Where the leaf at ``path`` may change while ``task`` trains: its weights owned by
    ``task``; a leaf without an owner array (biases, normalisation) only during task 0."""
    return owner[path] == task if path in owner else task == 0


def _restrict(updates: optax.Updates, owner: Mapping[str, Array], task: Array,
              fill: float) -> optax.Updates:
    return jax.tree_util.tree_map_with_path(
        lambda p, u: jnp.where(trainable(path_name(p), owner, task), u,
                               jnp.asarray(fill, u.dtype)), updates)


def owner_masked(base: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``base`` restricted to the weights of the task being trained (PackNet's frozen weights):
    the gradient it sees is zero elsewhere, and its update there is −0.0, so ``params +
    update`` is the old weight bit for bit whatever ``base`` keeps in its state (Adam's moments,
    weight decay). Extra arguments ``packnet_owner`` ({leaf path: owner ids},
    :class:`PackNetState`'s) and ``packnet_task`` (the task being trained)."""
    if not isinstance(base, optax.GradientTransformation):
        raise TypeError(f"base must be an optax.GradientTransformation; got "
                        f"{type(base).__name__}")
    required = {"packnet_owner": "the owner ids, PackNetState.owner",
                "packnet_task": "the task being trained"}

    def zero_grads(updates, params, *, packnet_owner, packnet_task):
        del params
        return _restrict(updates, packnet_owner, packnet_task, 0.0)

    def freeze(updates, params, *, packnet_owner, packnet_task):
        del params
        return _restrict(updates, packnet_owner, packnet_task, -0.0)

    return optax.chain(stateless_with_extra_args(zero_grads, name="packnet_gradients",
                                                 required=required),
                       optax.with_extra_args_support(base),
                       stateless_with_extra_args(freeze, name="packnet_updates",
                                                 required=required))


# --------------------------------------------------------------------------------------------
# Options → the static plan
# --------------------------------------------------------------------------------------------

def _check_ratio(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1) (of the free weights a task "
                         f"releases); got {value!r}")
    return float(value)


def _check_ratios(value: Any, name: str) -> float | tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be a fraction or one fraction per task; got {value!r}")
        return tuple(_check_ratio(v, f"{name}[{i}]") for i, v in enumerate(value))
    return _check_ratio(value, name)


def _per_task(ratios: float | tuple[float, ...], name: str, num_tasks: int) -> list[float]:
    if isinstance(ratios, float):
        return [ratios] * num_tasks
    if len(ratios) != num_tasks:
        raise ValueError(f"{name} gives {len(ratios)} fractions (one per task) for a stream of "
                         f"{num_tasks} tasks")
    return list(ratios)


def release_counts(size: int, ratios: Sequence[float]) -> np.ndarray:
    """How many weights of a layer of ``size`` weights each task releases: task t claims the
    F_t weights left free (F_0 = ``size``, F_{t+1} = the weights task t released) and releases
    round(ratios[t] · F_t) of them (half up), keeping the rest. ``[len(ratios)]`` int64."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (the layer's weights); got {size!r}")
    ratios = [_check_ratio(r, f"ratios[{i}]") for i, r in enumerate(ratios)]
    free, out = int(size), []
    for r in ratios:
        out.append(math.floor(r * free + 0.5))
        free = out[-1]
    return np.asarray(out, np.int64)


def make_plan(params: Params, spec: StreamSpec, prune_ratio: float | tuple[float, ...],
              layer_prune_ratio: Mapping[str, float | tuple[float, ...]]) -> PackNetPlan:
    """The layers PackNet prunes, the multi-head output layer and every task's release counts;
    raises if a layer cannot give some task of the stream a weight of its own."""
    layers = param_layers(params)
    if not layers:
        raise ValueError("packnet prunes Dense/Conv kernels, and params has no dense/conv layer "
                         "(cljax.layers.param_layers)")
    names = list(layers)
    head = None
    if spec.num_heads > 1:
        head = names[-1]
        width = spec.num_heads * spec.num_outputs
        if layers[head].out != width:
            raise ValueError(f"packnet takes the last layer {head!r} of a {spec.num_heads}-head "
                             f"model as its output layer, but it has {layers[head].out} outputs, "
                             f"not num_heads × classes = {width}")
        names = names[:-1]
        if not names:
            raise ValueError("packnet needs a layer to prune besides the multi-head output layer")
    unknown = sorted(set(layer_prune_ratio) - set(names))
    if unknown:
        raise ValueError(f"layer_prune_ratio names {unknown}, which are not layers packnet "
                         f"prunes; they are {names}"
                         + (f" (the output layer {head!r} of a multi-head model is never pruned)"
                            if head is not None and head in unknown else ""))
    T = spec.num_tasks
    releases = np.zeros((T, len(names)), np.int64)
    for j, name in enumerate(names):
        option = "layer_prune_ratio" if name in layer_prune_ratio else "prune_ratio"
        ratios = _per_task(layer_prune_ratio.get(name, prune_ratio),
                           f"layer_prune_ratio[{name!r}]" if name in layer_prune_ratio
                           else "prune_ratio", T)
        size = (layers[name].rows - layers[name].has_bias) * layers[name].out
        releases[:, j] = release_counts(size, ratios)
        free = np.concatenate([[size], releases[:-1, j]])
        for t in range(T):
            if free[t] - releases[t, j] < 1:
                raise ValueError(
                    f"packnet: layer {name!r} ({size} weights) has {free[t]} free weight(s) left "
                    f"for task {t} (of {T}) and {option}={ratios[t]} releases {releases[t, j]} of "
                    f"them, so task {t} would own none of the layer: too many tasks for these "
                    f"ratios. Change {option} (a task keeps 1 - ratio of the weights left free "
                    f"to it and releases the rest to the next: a higher ratio early leaves more "
                    f"for later tasks), or use fewer tasks or a wider layer")
    head_leaves = () if head is None else tuple(
        f"{head}/{leaf}" for leaf in ("kernel", "bias") if leaf in get_layer(params, head))
    return PackNetPlan(tuple(names), head, head_leaves, releases)


def init_owner(params: Params, spec: StreamSpec, plan: PackNetPlan) -> dict[str, Array]:
    """Task 0 claims every prunable weight; the output layer's columns of head h (and their
    biases) belong to task h."""
    owner = {f"{n}/kernel": jnp.zeros(get_layer(params, n)["kernel"].shape, jnp.int32)
             for n in plan.prunable}
    for leaf in plan.head_leaves:
        shape = get_layer(params, leaf).shape
        column = jnp.arange(shape[-1], dtype=jnp.int32) // spec.num_outputs
        owner[leaf] = jnp.broadcast_to(column, shape)
    return owner


def _prune(params: Params, owner: dict[str, Array], task: Array, plan: PackNetPlan
           ) -> tuple[Params, dict[str, Array]]:
    """Every prunable layer releases the task's share (``plan.releases[task]``)."""
    counts = jnp.asarray(plan.releases)[jnp.clip(task, 0, plan.releases.shape[0] - 1)]
    owner = dict(owner)
    new_params = params
    for j, name in enumerate(plan.prunable):
        kernel, owner[f"{name}/kernel"] = release_smallest(
            get_layer(params, name)["kernel"], owner[f"{name}/kernel"], task, counts[j])
        new_params = set_layer(new_params, name, {"kernel": kernel})
    return new_params, owner


def _claim(owner: dict[str, Array], plan: PackNetPlan, task: Array, num_tasks: int
           ) -> dict[str, Array]:
    """Task ``task`` claims every free prunable weight (none claimed past the last task)."""
    ok = task < num_tasks
    out = dict(owner)
    for name in plan.prunable:
        o = owner[f"{name}/kernel"]
        out[f"{name}/kernel"] = jnp.where((o == FREE) & ok, task.astype(o.dtype), o)
    return out


def _select(pred: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

def _check_options(prune_ratio: Any, layer_prune_ratio: Any, retrain_steps: Any,
                   retrain_fraction: Any
                   ) -> tuple[float | tuple[float, ...], dict[str, float | tuple[float, ...]]]:
    """:func:`packnet`'s options checked; the ratios as :func:`_check_ratios` returns them."""
    prune_ratio = _check_ratios(prune_ratio, "prune_ratio")
    if layer_prune_ratio is None:
        layer_prune_ratio = {}
    if not isinstance(layer_prune_ratio, Mapping) or not all(
            isinstance(k, str) for k in layer_prune_ratio):
        raise TypeError(f"layer_prune_ratio must be a dict {{layer name: fraction or one per "
                        f"task}}; got {layer_prune_ratio!r}")
    layer_prune_ratio = {k: _check_ratios(v, f"layer_prune_ratio[{k!r}]")
                         for k, v in layer_prune_ratio.items()}
    if retrain_steps is not None and (not isinstance(retrain_steps, (int, np.integer))
                                      or isinstance(retrain_steps, bool) or retrain_steps < 0):
        raise ValueError(f"retrain_steps must be None or an int >= 0 (steps after the prune); "
                         f"got {retrain_steps!r}")
    if isinstance(retrain_fraction, bool) or not isinstance(
            retrain_fraction, (int, float)) or not 0 <= retrain_fraction < 1:
        raise ValueError(f"retrain_fraction must be a fraction in [0, 1) of each task's steps; "
                         f"got {retrain_fraction!r}")
    return prune_ratio, layer_prune_ratio


def _logits_of_each_task(params, owner, batch, tasks, logits_fn, num_tasks):
    """Each example's logits from the network of its own task (the weights owned by tasks up to
    it, :func:`task_weights`): one pass when the batch holds one task, else one per task present."""
    def one_task(_):
        return logits_fn(task_weights(params, owner, tasks[0]), batch)

    def mixed(_):
        shape = jax.eval_shape(one_task, None)

        def add(t, out):
            present = tasks == t
            return jax.lax.cond(
                any_run(jnp.any(present)),
                lambda o: jnp.where(present.reshape((-1,) + (1,) * (o.ndim - 1)), logits_fn(
                    task_weights(params, owner, t), batch), o),
                lambda o: o, out)

        return jax.lax.fori_loop(0, num_tasks, add, jnp.zeros(shape.shape, shape.dtype))

    return jax.lax.cond(all_runs(jnp.all(tasks == tasks[0])), one_task, mixed, None)


def packnet(*, prune_ratio: float | Sequence[float] = 0.75,
            layer_prune_ratio: Mapping[str, float | Sequence[float]] | None = None,
            retrain_steps: int | None = None, retrain_fraction: float = 1 / 3) -> Method:
    """PackNet (Mallya & Lazebnik 2018): iterative pruning and retraining, one task at a time.

    Args:
      prune_ratio: the fraction of the weights a task trained that it releases for later tasks,
        in every layer: one value, or one per task (the authors' scripts: 0.5 after ImageNet,
        then 0.75 per added task, the last task unpruned = 0). Default 0.75, their ratio per
        added task: with 5 tasks each keeps 25, 19, 14, 11, 8 % of every layer (0.5 would leave
        the fifth 3 %).
      layer_prune_ratio: per-layer overrides {layer name as in :func:`cljax.layers.param_layers`
        ("Dense_0"): a fraction, or one per task}.
      retrain_steps: steps of retraining after the prune, at the end of each task (the prune
        follows step ``task_steps − retrain_steps − 1``); None: ``retrain_fraction`` of the
        task's steps, rounded half up. Either is capped at ``task_steps − 1``: a task trains at
        least one step before its prune (the method does not see the number of steps before
        the run, and a traced value cannot raise).
      retrain_fraction: default 1/3, the authors' scripts' 10 epochs of retraining after 20 of
        training per task.

    The model must be Dense/Conv layers (and any others, whose parameters train with task 0
    only); prediction needs each example's task id, so PackNet is a Task-IL method
    (``scenarios=("task",)``: Domain- and Class-IL hide the task at test time). No
    hyperparameter lives in ``hparams``: the ratios fix
    how many weights each task gets, which the capacity check needs before training.
    """
    ratio, layer_ratios = _check_options(prune_ratio, layer_prune_ratio, retrain_steps,
                                         retrain_fraction)

    def plan_of(params, spec):
        return make_plan(params, spec, ratio, layer_ratios)

    def init(params, key, hparams, spec):
        del key, hparams
        return PackNetState(init_owner(params, spec, plan_of(params, spec)))

    def optimizer_args(params, batch, mstate, ctx):
        del params, batch
        return {"packnet_owner": mstate.owner, "packnet_task": ctx.task}

    def retrain_of(task_steps):
        if retrain_steps is not None:
            steps = jnp.asarray(retrain_steps, jnp.int32)
        else:
            steps = jnp.floor(retrain_fraction * task_steps.astype(jnp.float32) + 0.5).astype(
                jnp.int32)
        return jnp.minimum(steps, task_steps - 1)

    def after_step(info):
        clock, owner = info.clock, info.mstate.owner
        hit = clock.task_step + 1 == clock.task_steps - retrain_of(clock.task_steps)
        plan = plan_of(info.params, info.spec)

        def prune(_):
            return _select(hit, _prune(info.params, owner, info.task, plan), (info.params, owner))

        params, owner = jax.lax.cond(any_run(hit), prune, lambda _: (info.params, owner), None)
        return params, info.opt_state, PackNetState(owner)

    def end_task(ctx):
        plan = plan_of(ctx.params, ctx.spec)
        owner = _claim(ctx.mstate.owner, plan, ctx.task + 1, ctx.spec.num_tasks)
        return ctx.params, ctx.opt_state, PackNetState(owner)

    def predict(params, mstate, batch, ctx):
        return _logits_of_each_task(params, mstate.owner, batch, jnp.asarray(ctx.tasks, jnp.int32),
                                    ctx.model.logits_fn, ctx.spec.num_tasks)

    def check(plan: ConfigPlan) -> None:
        """Before any data is loaded: per-task ratios give one fraction per task."""
        if plan.num_tasks is not None:
            for name, ratios in [("prune_ratio", ratio), *(
                    (f"layer_prune_ratio[{k!r}]", v) for k, v in layer_ratios.items())]:
                _per_task(ratios, name, plan.num_tasks)

    return Method("packnet", make_optimizer=lambda hparams, base: owner_masked(base), init=init,
                  optimizer_args=optimizer_args, after_step=after_step, end_task=end_task,
                  predict=predict, scenarios=("task",), check=check)


__all__ = ["packnet", "PackNetState", "PackNetPlan", "FREE", "any_run", "all_runs",
           "release_smallest", "release_counts", "task_weights", "trainable", "owner_masked",
           "make_plan", "init_owner"]

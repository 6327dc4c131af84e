"""HAT — hard attention to the task (Serrà, Surís, Miron & Karatzoglou 2018, ICML, arXiv
1801.01423) — as a recipe on the method protocol.

A task embedding ``e_l^t`` per gated layer gates its units, ``a_l^t = σ(s·e_l^t)`` (§2,
"Architecture"); ``s`` is annealed over each epoch's batches from 1/s_max to s_max ("Hard
attention training") and is s_max at the end of a task, when the cumulative attention
``a^{≤t} = max(a^t, a^{≤t−1})`` is updated ("Network training"); each weight's gradient is
scaled by ``1 − min(a_i^{<t}, a_j^{<t})`` of the two units it connects ("Network training",
:func:`conditioning_scales`); the embeddings' gradient is compensated for the annealed sigmoid
("Embedding gradient compensation", :func:`embedding_compensation`); the loss gets
``c·Σ a^t(1 − a^{<t}) / Σ(1 − a^{<t})`` ("Promoting low capacity usage",
:func:`attention_regulariser`); prediction gates with the binarised mask ``1[e > 0]`` (s → ∞) of
each example's own task.

Details from the authors' code (joansj/hat, ``approaches/hat.py``, ``networks/*_hat.py``):
embeddings initialised N(0, 1) (PyTorch ``nn.Embedding``), the cosh argument of the compensation
clamped at ±50, the gradient's global norm clipped at 10⁴ after conditioning and compensation,
the embeddings clamped to [−6, 6] after each step (σ(400·6) is 1 in float32), a layer's bias
conditioned by 1 − a_out, the first layer's kernel by 1 − a_out (its inputs carry no gate), the
output layer (the task heads) neither gated nor conditioned; they train with plain SGD, lr 0.05
(divided by 3 on validation plateaus). Here the base optimizer is the config's (Adam, lr 10⁻³ in
the Split MNIST protocol).

Design choices (see :func:`hat`):

* **The gates intercept the configured network** (:func:`gated_model`): the base module's calls
  are run under ``flax.linen.intercept_methods`` and the output of each gated unit's last per-unit
  operation is multiplied by the gate of the example's task — for :class:`cljax.nn.MLP` the hidden
  ``Dense`` outputs, for :class:`cljax.nn.AlexNet` the ``BatchStatNorm`` outputs
  (:func:`gate_plan`).
  Nothing of the architecture is copied (widths, heads, dropout, biases all come from the
  configured module) and the base parameters keep their names, so every layer helper of
  :mod:`cljax.layers` still recognises them. Gating the pre-activation is HAT's gate after the
  ReLU: ``relu(a·z) = a·relu(z)`` for ``a ≥ 0``, and dropout and max-pooling commute with a
  non-negative per-unit factor, so the values and gradients are those of HAT's networks.
* **Gate after BatchNorm** (AlexNet): a per-channel factor before a normalisation by batch
  statistics is divided out again (BN(a·z) = BN(z) up to ε), so the gate would do nothing; after
  BN (and its affine scale and shift) a closed unit outputs exactly 0, as in HAT's AlexNet (which
  has no BN). The BN scale and bias are per-unit parameters and are conditioned like a bias.
* **Adam** (the van de Ven protocols): conditioning scales the *gradient*; an adaptive optimizer
  divides a consistently scaled gradient by its own running scale, so a partly protected weight
  moves at full speed, and its momentum keeps moving weights, old heads and old embedding rows
  whose gradient is now zero for tens of steps after a task ends. ``mask_updates=True`` (default)
  therefore also multiplies the base optimizer's *update* by the same conditioning factors, by a
  one-hot of the current task over the embedding rows and, with one head per task, over the
  output layer's columns. Under plain SGD that changes nothing where the factors are 0 or 1 (in
  float32 all but the units with :math:`|e| < 0.05` at s_max = 400); ``mask_updates=False`` is the
  paper's rule exactly.

Hyperparameters (``hparams``): ``c`` (0.75) and ``s_max`` (400), the paper's chosen values.
The gate scale ``s`` reaches the model as the batch entry :data:`SCALE` (absent: binarised
gates), and in training the batch's one task as :data:`TASK` (a scalar: the gates are one row of
each embedding, not a per-example gather whose gradient is a scatter-add of B rows into the
same row); the embeddings are the params entry :data:`EMBEDDINGS`, ``{gate name: [T, units]}``.

Step cost (one compiled task of Adam steps, HAT over ``none``): MLP 784-400-400, batch 128 —
1.12× on a 2-core CPU (fastest of 30 calls; 1.24× median under load; 1.02× with
``clip_norm=None``), 1.44× on an H200 (1.24×); GPM's AlexNet, batch 64, on the H200 — 1.19×
(1.09×). The global-norm clip is most of it: its reduction over every gradient cannot fuse into
the optimizer's elementwise update.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cljax.layers import leaf_paths
from cljax.methods.base import (
    BoundaryContext,
    LossContext,
    Method,
    PredictContext,
    StepInfo,
    StreamSpec,
    cross_entropy,
    get_hparam,
)
from cljax.nn import MLP, AlexNet
from cljax.nn.model import Model
from cljax.transforms.common import stateless_with_extra_args
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_positive, check_positive_int

EMBEDDINGS = "hat_embeddings"
SCALE = "hat_s"
TASK = "hat_task"
GRADIENT_SCALES = "hat_gradient_scales"
UPDATE_SCALES = "hat_update_scales"


class GateSite(NamedTuple):
    """One gated layer: the module ``gate`` (its scope path) whose output is multiplied by the
    gate, ``units`` gates, the Dense / Conv ``layer`` whose kernel makes the units, and
    ``unit_params``, the param leaves holding one value per unit (a bias, BN's scale and bias)."""

    gate: str
    units: int
    layer: str
    unit_params: tuple[str, ...]


class GatePlan(NamedTuple):
    """Where HAT's gates sit in a network: its gated layers in order and its output layer (never
    gated; ``num_heads`` heads of ``num_outputs`` columns each)."""

    sites: tuple[GateSite, ...]
    output_layer: str
    num_heads: int
    num_outputs: int


class HATState(NamedTuple):
    """The cumulative attention of the tasks done, ``a^{≤t} = max_{τ≤t} σ(s_max·e^τ)``
    ({gate name: [units]}, zeros before the first boundary)."""

    cumulative: dict[str, Array]


def gate_plan(module: nn.Module) -> GatePlan:
    """HAT's gates for a supported network: :class:`cljax.nn.MLP` (every hidden ``Dense``) and
    :class:`cljax.nn.AlexNet` (the ``BatchStatNorm`` after each conv and hidden fc)."""
    if type(module) is MLP:
        _no_feature_encoding(module)
        widths = tuple(module.widths)
        if not widths:
            raise ValueError("hat needs an MLP with at least one hidden layer to gate; got "
                             "widths=()")
        sites = tuple(GateSite(f"Dense_{i}", int(w), f"Dense_{i}",
                               (f"Dense_{i}/bias",) if module.use_bias else ())
                      for i, w in enumerate(widths))
        return GatePlan(sites, f"Dense_{len(widths)}", module.num_heads, module.num_outputs)
    if type(module) is AlexNet:
        _no_feature_encoding(module)
        layers = ([(f"Conv_{i}", c) for i, c in enumerate(module.channels)]
                  + [(f"Dense_{i}", h) for i, h in enumerate(module.hidden)])
        sites = tuple(GateSite(f"BatchStatNorm_{k}", int(units), layer,
                               (f"BatchStatNorm_{k}/scale", f"BatchStatNorm_{k}/bias"))
                      for k, (layer, units) in enumerate(layers))
        return GatePlan(sites, f"Dense_{len(module.hidden)}", module.num_heads,
                        module.num_outputs)
    raise TypeError(f"hat gates cljax.nn.MLP and cljax.nn.AlexNet; got a "
                    f"{type(module).__name__} (write its GatePlan: which module's output makes "
                    f"each layer's units, and which params belong to them)")


def _no_feature_encoding(module: nn.Module) -> None:
    if getattr(module, "feature_encoding", 0):
        raise ValueError("hat cannot gate a model with RGO's feature encoding layer "
                         "(feature_encoding > 0): it permutes the units per task, so a unit's "
                         "gate would not follow it")


def check_plan(plan: GatePlan, params: Params) -> None:
    """Every layer, unit parameter and output layer of ``plan`` exists in ``params`` with the
    plan's widths (shapes only: works on abstract params)."""
    leaves = leaf_paths(params)
    for site in plan.sites:
        kernel = leaves.get(f"{site.layer}/kernel")
        if kernel is None or kernel.shape[-1] != site.units:
            raise ValueError(f"hat's gate {site.gate!r} expects the layer {site.layer!r} with "
                             f"{site.units} output units; params have "
                             f"{None if kernel is None else kernel.shape}")
        for name in site.unit_params:
            if name not in leaves or leaves[name].shape != (site.units,):
                raise ValueError(f"hat expects the per-unit parameter {name!r} of shape "
                                 f"({site.units},); params have "
                                 f"{leaves[name].shape if name in leaves else 'none'}")
    if f"{plan.output_layer}/kernel" not in leaves:
        raise ValueError(f"hat expects the output layer {plan.output_layer!r}; params have "
                         f"{sorted(leaves)}")


def init_embeddings(key: PRNGKey, plan: GatePlan, num_tasks: int) -> dict[str, Array]:
    """Task embeddings ``e ~ N(0, 1)``, ``{gate: [num_tasks, units]}`` (the authors' code: a
    PyTorch ``nn.Embedding``'s initialisation)."""
    check_positive_int(num_tasks, name="num_tasks")
    return {site.gate: jax.random.normal(jax.random.fold_in(key, i), (num_tasks, site.units))
            for i, site in enumerate(plan.sites)}


def unit_gates(embeddings: Mapping[str, Array], tasks: Array, s: Array | None
               ) -> dict[str, Array]:
    """Each example's gates ``σ(s·e^{task})`` (``[B, units]`` per gate for ``tasks`` ``[B]``,
    ``[units]`` for one task id; §2 "Architecture"), or with ``s`` None the binarised test-time
    gates ``1[e^{task} > 0]`` (the limit s → ∞)."""
    tasks = jnp.asarray(tasks)
    if tasks.ndim > 1 or not jnp.issubdtype(tasks.dtype, jnp.integer):
        raise ValueError(f"tasks must be an int array [B] (each example's task id) or one task "
                         f"id; got {tasks.dtype}{tasks.shape}")
    if s is None:
        return {name: (e[tasks] > 0).astype(e.dtype) for name, e in embeddings.items()}
    return {name: jax.nn.sigmoid(s * e[tasks]) for name, e in embeddings.items()}


def gated_model(base: Model, num_tasks: int) -> Model:
    """``base`` with HAT's gates (:func:`gate_plan`): its params get :data:`EMBEDDINGS`, and
    every function multiplies each gated unit by its gate for the example's ``batch['task']``
    (or ``batch[TASK]``, one task id for the whole batch), ``σ(s·e)`` with ``s = batch[SCALE]``
    when present, else the binarised ``1[e > 0]``."""
    if not isinstance(base, Model):
        raise TypeError(f"base must be a cljax.nn.Model (as_model(module)); got "
                        f"{type(base).__name__}")
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
    plan = gate_plan(base.module)

    def init(key: PRNGKey, batch: Batch) -> Params:
        k_base, k_emb = jax.random.split(key)
        params = base.init(k_base, batch)
        check_plan(plan, params)
        return {**params, EMBEDDINGS: init_embeddings(k_emb, plan, num_tasks)}

    def gated(fn):
        if fn is None:
            return None

        def run(params, batch, *args, **kwargs):
            if "task" not in batch or batch["task"] is None:
                raise ValueError("hat's gates need batch['task'] (each example's task id)")
            tasks = batch[TASK] if batch.get(TASK) is not None else batch["task"]
            gates = unit_gates(params[EMBEDDINGS], tasks, batch.get(SCALE))
            rest = {k: v for k, v in params.items() if k != EMBEDDINGS}
            seen: list[str] = []
            with nn.intercept_methods(_gate_interceptor(gates, seen)):
                out = fn(rest, batch, *args, **kwargs)
            if sorted(seen) != sorted(gates):
                raise RuntimeError(f"hat gated the calls {seen}; the plan names each of "
                                   f"{sorted(gates)} once")
            return out
        return run

    return Model(base.module, init, gated(base.logits_fn), gated(base.train_logits_fn),
                 gated(base.features_fn), gated(base.all_heads_fn), gated(base.apply_fn))


def _gate_interceptor(gates: Mapping[str, Array], seen: list[str]):
    def interceptor(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        scope = ctx.module.scope
        name = "/".join(scope.path) if scope is not None else None
        if ctx.method_name != "__call__" or name is None or name not in gates:
            return out
        seen.append(name)
        g = gates[name]
        g = g.reshape((g.shape[0] if g.ndim == 2 else 1,) + (1,) * (out.ndim - 2) + g.shape[-1:])
        return out * g.astype(out.dtype)
    return interceptor


def batches_per_epoch(count: Array, batch_size: int, task_steps: Array) -> Array:
    """B = ⌈count / batch_size⌉, the batches of one epoch over a task's ``count`` examples;
    at most the task's steps (a task shorter than an epoch anneals over its steps), at least 1."""
    check_positive_int(batch_size, name="batch_size")
    B = -(-jnp.asarray(count, jnp.int32) // batch_size)
    return jnp.clip(B, 1, jnp.maximum(jnp.asarray(task_steps, jnp.int32), 1))


def annealed_scale(task_step: Array, batches: Array, s_max: Array) -> Array:
    """s = 1/s_max + (s_max − 1/s_max)·(b − 1)/(B − 1) for batch b = 1 + (task_step mod B) of
    an epoch of B batches (§2 "Hard attention training"): 1/s_max at each epoch's first batch,
    s_max at its last (s_max when B = 1)."""
    batches = jnp.asarray(batches, jnp.int32)
    b = jnp.asarray(task_step, jnp.int32) % batches
    frac = b.astype(jnp.float32) / jnp.maximum(batches - 1, 1).astype(jnp.float32)
    s = 1.0 / s_max + (s_max - 1.0 / s_max) * frac
    return jnp.where(batches == 1, s_max, s)


def embedding_compensation(embeddings: Any, s: Array, s_max: Array, *,
                           cosh_bound: float = 50.0) -> Any:
    """The factor of the embeddings' gradient (§2 "Embedding gradient compensation"):
    q' = s_max·[cosh(s·e) + 1] / (s·[cosh(e) + 1])·q, with s·e clamped to ±``cosh_bound`` (the
    authors' overflow guard)."""
    def factor(e):
        num = jnp.cosh(jnp.clip(s * e, -cosh_bound, cosh_bound)) + 1.0
        return s_max * num / (s * (jnp.cosh(e) + 1.0))
    return jax.tree.map(factor, embeddings)


def attention_regulariser(masks: Mapping[str, Array], cumulative: Mapping[str, Array]) -> Array:
    """R = Σ_l Σ_i a_{l,i}^t (1 − a_{l,i}^{<t}) / Σ_l Σ_i (1 − a_{l,i}^{<t}) (§2 "Promoting
    low capacity usage", without its weight c): the share of the still-free units the task takes
    (0 when none is free)."""
    if set(masks) != set(cumulative):
        raise ValueError(f"masks and cumulative must name the same gates; got {sorted(masks)} "
                         f"and {sorted(cumulative)}")
    free = {k: 1.0 - cumulative[k] for k in masks}
    used = sum(jnp.sum(masks[k] * free[k]) for k in masks)
    total = sum(jnp.sum(free[k]) for k in masks)
    return used / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def _inputs_of(kernel_in: int, previous: Array | None, site: GateSite) -> Array | None:
    """The cumulative attention of a kernel's input rows: the previous gated layer's (tiled
    over a channel-last flatten, as AlexNet's conv → fc), or None for the network's inputs."""
    if previous is None:
        return None
    units = previous.shape[-1]
    if kernel_in % units:
        raise ValueError(f"hat: the layer {site.layer!r} takes {kernel_in} inputs, not a "
                         f"multiple of the previous gated layer's {units} units")
    return jnp.tile(previous, kernel_in // units)


def conditioning_scales(params: Params, cumulative: Mapping[str, Array], plan: GatePlan
                        ) -> Params:
    """Every parameter's gradient factor (§2 "Network training"): a kernel's entry between input
    unit i and output unit j gets ``1 − min(a_i^{<t}, a_j^{<t})`` (``1 − a_j`` for the first
    layer, whose inputs are not gated); a unit's own parameters (bias, BN scale and bias)
    ``1 − a_j``; every other leaf (the output layer, the embeddings) 1. The params' tree, scalars
    where 1."""
    missing = [site.gate for site in plan.sites if site.gate not in cumulative]
    if missing:
        raise ValueError(f"cumulative must hold the attention of every gate of the plan; "
                         f"missing {missing}")
    leaves = leaf_paths(params)
    scales = {name: jnp.ones((), leaf.dtype) for name, leaf in leaves.items()}
    previous = None
    for site in plan.sites:
        out = cumulative[site.gate]
        name = f"{site.layer}/kernel"
        a_in = _inputs_of(leaves[name].shape[-2], previous, site)
        pair = out if a_in is None else jnp.minimum(a_in[:, None], out[None, :])
        scales[name] = 1.0 - pair
        for unit_param in site.unit_params:
            scales[unit_param] = 1.0 - out
        previous = out
    return jax.tree.unflatten(jax.tree.structure(params), [scales[n] for n in leaves])


def _current_task_only(params: Params, plan: GatePlan, task: Array) -> Params:
    """1 on the current task's embedding rows and (one head per task) output columns, 0 on the
    other tasks', 1 elsewhere: what a step may change of parameters no other task uses."""
    leaves = leaf_paths(params)
    scales = {name: jnp.ones((), leaf.dtype) for name, leaf in leaves.items()}
    for name, leaf in leaves.items():
        if name.startswith(EMBEDDINGS + "/"):
            scales[name] = (jnp.arange(leaf.shape[0]) == task).astype(leaf.dtype)[:, None]
    if plan.num_heads > 1:
        head = (jnp.arange(plan.num_heads * plan.num_outputs) // plan.num_outputs == task)
        for leaf in ("kernel", "bias"):
            name = f"{plan.output_layer}/{leaf}"
            if name in leaves:
                scales[name] = head.astype(leaves[name].dtype)
    return jax.tree.unflatten(jax.tree.structure(params), [scales[n] for n in leaves])


def scale_by_extra_arg(name: str) -> optax.GradientTransformationExtraArgs:
    """Multiply the updates leaf by leaf by the extra argument ``name`` (a tree of factors with
    the updates' structure, each broadcastable to its leaf)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str; got {name!r}")

    def f(updates, params, **extra):
        del params
        return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, extra[name])
    return stateless_with_extra_args(f, name=f"scale_by_extra_arg({name!r})",
                                     required={name: "a tree of factors like the updates"})


def _gate_scale(batch: Batch, ctx: LossContext) -> Array:
    """s of this step, from the clock and the task's batches per epoch."""
    counts = ctx.spec.train_counts
    count = jnp.asarray(counts, jnp.int32)[ctx.task]
    B = batches_per_epoch(count, int(jnp.shape(batch["x"])[0]), ctx.clock.task_steps)
    return annealed_scale(ctx.clock.task_step, B, get_hparam(ctx.hparams, "s_max", "hat"))


def _check_stream(spec: StreamSpec) -> None:
    """HAT needs each example's task id at prediction (one head per task) and each task's number
    of training examples (s anneals over an epoch)."""
    if spec.num_heads != spec.num_tasks:
        raise ValueError(f"hat gates each example with its task's mask, so it needs the task "
                         f"id at prediction: the 'task' scenario (one head per task); got a "
                         f"model with {spec.num_heads} head(s) for {spec.num_tasks} tasks "
                         f"(a single-head scenario)")
    if len(spec.train_counts) != spec.num_tasks:
        raise ValueError(f"hat anneals s over each epoch of a task, so it needs the stream's "
                         f"train_counts (one per task); got {spec.train_counts!r}")


def hat(*, mask_updates: bool = True, clip_norm: float | None = 10000.0,
        embedding_bound: float = 6.0, cosh_bound: float = 50.0) -> Method:
    """HAT (Serrà et al. 2018) for Task-IL on :class:`cljax.nn.MLP` or :class:`cljax.nn.AlexNet`
    (module docstring). Hyperparameters ``c`` (regulariser weight, 0.75) and ``s_max`` (400).

    Options: ``mask_updates`` multiplies the base optimizer's update by the conditioning factors
    and the current task's one-hot over the embedding rows and heads (for Adam: see the module
    docstring; False: the paper's gradient rule alone); ``clip_norm`` the global gradient norm
    clip after conditioning (None: none); ``embedding_bound`` the clamp of the embeddings after
    each step; ``cosh_bound`` the clamp of s·e inside the compensation's cosh.
    """
    if not isinstance(mask_updates, bool):
        raise TypeError(f"mask_updates must be a bool; got {type(mask_updates).__name__}")
    if clip_norm is not None:
        check_positive(clip_norm, name="clip_norm", scalar=True)
    check_positive(embedding_bound, name="embedding_bound", scalar=True)
    check_positive(cosh_bound, name="cosh_bound", scalar=True)

    def model(base: Model, spec: StreamSpec) -> Model:
        return gated_model(base, spec.num_tasks)

    def init(params: Params, key: PRNGKey, hparams, spec: StreamSpec) -> HATState:
        del key, hparams
        _check_stream(spec)
        return HATState({k: jnp.zeros(e.shape[1:], e.dtype) for k, e in params[EMBEDDINGS].items()})

    def loss(params: Params, batch: Batch, mstate: HATState, ctx: LossContext):
        s = _gate_scale(batch, ctx)
        k_drop, _ = jax.random.split(ctx.key)
        logits = ctx.model.train_logits_fn(params, {**batch, SCALE: s, TASK: ctx.task}, k_drop)
        reg = attention_regulariser(unit_gates(params[EMBEDDINGS], ctx.task, s),
                                    mstate.cumulative)
        value = cross_entropy(logits, batch["y"]) + get_hparam(ctx.hparams, "c", "hat") * reg
        return value, {"regulariser": reg}

    def optimizer_args(params: Params, batch: Batch, mstate: HATState, ctx: LossContext) -> dict:
        plan = gate_plan(ctx.model.module)
        s = _gate_scale(batch, ctx)
        s_max = get_hparam(ctx.hparams, "s_max", "hat")
        condition = conditioning_scales(params, mstate.cumulative, plan)
        compensation = embedding_compensation(params[EMBEDDINGS], s, s_max,
                                              cosh_bound=cosh_bound)
        extra = {GRADIENT_SCALES: {**condition, EMBEDDINGS: compensation}}
        if mask_updates:
            only = _current_task_only(params, plan, ctx.task)
            extra[UPDATE_SCALES] = jax.tree.map(jnp.multiply, condition, only)
        return extra

    def make_optimizer(hparams, base: optax.GradientTransformation):
        del hparams
        parts = [scale_by_extra_arg(GRADIENT_SCALES)]
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(clip_norm))
        parts.append(base)
        if mask_updates:
            parts.append(scale_by_extra_arg(UPDATE_SCALES))
        return optax.chain(*parts)

    def after_step(info: StepInfo):
        params = {**info.params, EMBEDDINGS: jax.tree.map(
            lambda e: jnp.clip(e, -embedding_bound, embedding_bound), info.params[EMBEDDINGS])}
        return params, info.opt_state, info.mstate

    def end_task(ctx: BoundaryContext):
        s_max = get_hparam(ctx.hparams, "s_max", "hat")
        masks = unit_gates(ctx.params[EMBEDDINGS], ctx.task, s_max)
        cumulative = {k: jnp.maximum(v, masks[k]) for k, v in ctx.mstate.cumulative.items()}
        return ctx.params, ctx.opt_state, HATState(cumulative)

    def predict(params: Params, mstate: HATState, batch: Batch, ctx: PredictContext) -> Array:
        del mstate
        return ctx.model.logits_fn(params, {**batch, "task": ctx.tasks})

    return Method("hat", make_optimizer=make_optimizer, init=init, loss=loss,
                  optimizer_args=optimizer_args, after_step=after_step, end_task=end_task,
                  predict=predict, default_hparams={"c": 0.75, "s_max": 400.0},
                  hparam_domains={"s_max": "positive"}, model=model, scenarios=("task",))


__all__ = ["hat", "HATState", "GateSite", "GatePlan", "gate_plan", "check_plan", "gated_model",
           "init_embeddings", "unit_gates", "batches_per_epoch", "annealed_scale",
           "embedding_compensation", "attention_regulariser", "conditioning_scales",
           "scale_by_extra_arg", "EMBEDDINGS", "SCALE", "TASK"]

"""VCL — variational continual learning (Nguyen, Li, Bui & Turner 2018, ICLR, arXiv 1710.10628),
with random and k-center coresets, as a recipe on the method protocol.

Continual learning as recursive Bayesian inference (the survey's eq. 14): the posterior after task
t−1 is the prior of task t, projected onto mean-field Gaussians (:mod:`.mean_field`) by
minimising, per task,

    KL(q_t ‖ q_{t−1}) / N_t − E_{q_t}[log p(y | x, θ)]   (the negative ELBO of eq. 4, over N_t),

with q_0 = N(0, I), the expectation a Monte Carlo mean over ``train_samples`` draws (local
reparameterisation in Dense layers, a weight draw per call in Conv layers: :mod:`.mean_field`),
and N_t the task's training examples outside its coreset.

What the authors' code (nvcuong/variational-continual-learning, ``ddm/``) adds, all here:

* **Initialisation** (``ml_init_steps``): before task 0's VCL training, a deterministic network
  is fitted by maximum likelihood on task 0 (Adam, ``learning_rate``, ``ml_init_batch``), and
  the means start from it, the log-variances at ``init_log_var`` (−6) — the ``begin_task`` hook of
  task 0, so task 0 still gets its full VCL steps. Their means otherwise start from a truncated
  normal of σ = 0.1, biases too (the MLP's ``kernel_stddev=0.1``, ``bias_init``: our biases
  start at a constant).
* **Coresets** (``coreset="random"|"kcenter"``, ``coreset_size`` K per task): chosen when a task
  begins (the ``begin_task`` hook: before its first step), stored as rows (a memory), and *held out*
  of that task's update (the batch hook draws among the other examples). k-center is their
  greedy farthest-point rule from the task's first example, on the model's inputs.
* **Prediction** (the ``predict`` hook): before prediction the posterior is fine-tuned on the coreset
  — a copy of q_t, its prior q_t, trained ``finetune_epochs`` epochs (Adam, ``learning_rate``,
  batches of ``finetune_batch`` drawn with replacement) on the union of the coresets (one head)
  or on each task's own coreset for that task's head (several heads); the fine-tuned posteriors
  are made at each task's end and kept for prediction only, the propagated posterior stays q_t.
  A prediction averages the softmax of ``predict_samples`` draws of the weights (their 100; each
  draw shared by the batch, as theirs: an example's prediction does not depend on the others)
  and returns the log of the mean (the trainer's argmax and cross-entropy read the predictive
  distribution).
* **Heads**: with one head per task the KL runs over the heads seen so far (theirs are created
  task by task); a new head's prior is N(0, 1).

Hyperparameters: ``kl_weight`` (1: the ELBO; 0 switches the prior off — with a vanishing
``init_log_var`` that is maximum likelihood, the test of this module).
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.layers import param_layers
from cljax.methods.base import (
    BatchContext,
    BoundaryContext,
    LossContext,
    Method,
    PredictContext,
    StreamSpec,
    cross_entropy,
    get_hparam,
)
from cljax.methods.mean_field import (
    INIT_LOG_VAR,
    LOG_VAR,
    MEAN,
    gaussian_kl,
    mean_field_model,
    sample_params,
)
from cljax.nn.model import Model
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_choice, check_positive, check_positive_int

CORESETS = ("none", "random", "kcenter")


class VCLState(NamedTuple):
    """VCL's method state: the prior of the current task (the previous posterior), each task's
    coreset (indices into its stored examples and the rows themselves), and the coreset-tuned
    posteriors used for prediction (``[P, ...]``: one per head, or one for a shared head)."""

    prior: dict                 # {"mean", "log_var"}
    coreset_idx: Array          # int32 [T, K], sorted
    coreset_x: Array            # [T, K, *example] in the storage dtype
    coreset_label: Array        # int32 [T, K] (within-task labels)
    tuned: dict                 # {"mean", "log_var"} with a leading [P] axis
    has_tuned: Array            # bool [P]


def random_coreset(key: PRNGKey, count: Array, rows: int, size: int) -> Array:
    """``size`` distinct indices drawn uniformly from ``[0, count)`` (``count`` traced, at most
    ``rows``), sorted."""
    u = jax.random.uniform(key, (rows,))
    u = jnp.where(jnp.arange(rows) < count, u, jnp.inf)
    return jnp.sort(jax.lax.top_k(-u, size)[1]).astype(jnp.int32)


def kcenter_coreset(x: Array, count: Array, size: int) -> Array:
    """Greedy k-center (Gonzalez 1985; Nguyen et al.'s ``coreset.k_center``): start from example
    0, then repeatedly add the example farthest (Euclidean) from the chosen ones; ``x`` is
    ``[N, ...]`` of which the first ``count`` are real. Returns the indices in order of choice."""
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    real = jnp.arange(flat.shape[0]) < count

    def add(carry, _):
        dists, current = carry
        d = jnp.sqrt(jnp.sum(jnp.square(flat - flat[current]), axis=1))
        dists = jnp.where(real, jnp.minimum(dists, d), -jnp.inf)
        nxt = jnp.argmax(dists).astype(jnp.int32)
        return (dists, nxt), current

    init = (jnp.full((flat.shape[0],), jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
    _, chosen = jax.lax.scan(add, init, None, length=size)
    return chosen


def outside(sorted_idx: Array, j: Array) -> Array:
    """The ``j``-th (0-based) index of ``[0, N)`` not in ``sorted_idx`` (strictly increasing):
    ``j + #{i : sorted_idx[i] − i ≤ j}``."""
    shifted = sorted_idx - jnp.arange(sorted_idx.shape[0], dtype=sorted_idx.dtype)
    return j + jnp.searchsorted(shifted, j, side="right").astype(j.dtype)


def head_mask(mean: Params, spec: StreamSpec, task: Array) -> Params | None:
    """1 where a parameter is in the objective at ``task``: everything, except (several heads)
    the output layer's columns of heads after ``task`` — the heads VCL has not created yet."""
    if spec.num_heads <= 1:
        return None
    names = list(param_layers(mean))
    head = names[-1]
    col_head = jnp.arange(spec.num_heads * spec.num_outputs) // spec.num_outputs
    seen = (col_head <= task).astype(jnp.float32)

    def mask(path, leaf):
        keys = tuple(getattr(k, "key", str(k)) for k in path)
        if "/".join(keys[:-1]) == head and leaf.shape[-1] == seen.shape[0]:
            return jnp.broadcast_to(seen, leaf.shape).astype(leaf.dtype)
        return jnp.ones_like(leaf)

    return jax.tree_util.tree_map_with_path(mask, mean)


def negative_elbo(model: Model, params: dict, prior: dict, batch: Batch, key: PRNGKey, *,
                  samples: int, num_examples: Array, kl_weight: Array,
                  mask: Params | None) -> tuple[Array, Array]:
    """``(kl_weight · KL(q ‖ prior) / N + mean NLL over samples, mean NLL)`` of ``batch``, the
    draws from the mean-field ``model``'s ``train_logits_fn`` (local reparameterisation)."""
    draws = jax.vmap(lambda k: model.train_logits_fn(params, batch, k))(
        jax.random.split(key, samples))
    nll = jnp.mean(jax.vmap(lambda lg: cross_entropy(lg, batch["y"]))(draws))
    kl = gaussian_kl(params[MEAN], params[LOG_VAR], prior[MEAN], prior[LOG_VAR], mask)
    return kl_weight * kl / num_examples.astype(kl.dtype) + nll, nll


def _adam_fit(loss, params, key: PRNGKey, num_steps: Array, learning_rate: float):
    """``num_steps`` (traced) Adam steps on ``loss(params, key)``."""
    tx = optax.adam(learning_rate)

    def step(i, carry):
        p, s = carry
        grads = jax.grad(loss)(p, jax.random.fold_in(key, i))
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    return jax.lax.fori_loop(0, num_steps, step, (params, tx.init(params)))[0]


class Options(NamedTuple):
    """VCL's static options (see :func:`vcl`)."""

    coreset: str
    size: int                  # K examples per task (0: no coreset)
    train_samples: int
    predict_samples: int
    init_log_var: float
    ml_init_steps: int
    ml_init_batch: int
    finetune_epochs: int
    finetune_batch: int
    learning_rate: float


def _init(o: Options, params, key, hparams, spec: StreamSpec) -> VCLState:
    del key, hparams
    T = spec.num_tasks
    heads = spec.num_heads if spec.num_heads > 1 else 1
    prior = {MEAN: jax.tree.map(jnp.zeros_like, params[MEAN]),     # q_0 = N(0, I)
             LOG_VAR: jax.tree.map(jnp.zeros_like, params[LOG_VAR])}
    stored = max(o.size, 1)   # no zero-size arrays (checkpoints refuse them); unused for K = 0
    return VCLState(
        prior, jnp.zeros((T, stored), jnp.int32),
        jnp.zeros((T, stored) + tuple(spec.example_shape), spec.storage_dtype),
        jnp.zeros((T, stored), jnp.int32),
        jax.tree.map(lambda p: jnp.broadcast_to(p, (heads,) + p.shape), params),
        jnp.zeros((heads,), bool))


def _batch(o: Options, ctx: BatchContext, s: VCLState):
    """The current task's examples outside its coreset, uniformly with replacement."""
    tasks = jnp.full((ctx.batch_size,), ctx.task, jnp.int32)
    if not o.size:
        return ctx.draw(ctx.data_key, tasks)
    j = jax.random.randint(ctx.data_key, tasks.shape, 0, ctx.count(ctx.task) - o.size)
    assert ctx.gather is not None              # the trainer always gives it
    return ctx.gather(tasks, outside(s.coreset_idx[ctx.task], j))


def _loss(o: Options, params, b: Batch, s: VCLState, ctx: LossContext):
    """The negative ELBO over the task's N_t examples outside its coreset (module docstring)."""
    n = jnp.asarray(ctx.spec.train_counts, jnp.int32)[ctx.task] - o.size
    total, nll = negative_elbo(
        ctx.model, params, s.prior, b, ctx.key, samples=o.train_samples, num_examples=n,
        kl_weight=get_hparam(ctx.hparams, "kl_weight", "vcl"),
        mask=head_mask(params[MEAN], ctx.spec, ctx.task))
    return total, {"nll": nll}


def _ml_init(o: Options, ctx: BoundaryContext) -> dict:
    """Task 0's maximum-likelihood fit of the means (the authors' Vanilla_NN)."""
    log_var = ctx.params[LOG_VAR]

    def nll(mean, key):      # the network at the means: the deterministic network
        b = ctx.sample_batch(ctx.task, key, o.ml_init_batch)
        return cross_entropy(ctx.model.logits_fn({MEAN: mean, LOG_VAR: log_var}, b), b["y"])

    mean = _adam_fit(nll, ctx.params[MEAN], jax.random.fold_in(ctx.key, 1),
                     jnp.int32(o.ml_init_steps), o.learning_rate)
    return {MEAN: mean, LOG_VAR: jax.tree.map(lambda v: jnp.full_like(v, o.init_log_var),
                                                log_var)}


def _begin_task(o: Options, ctx: BoundaryContext):
    """Task 0's ML initialisation; the task's coreset, chosen and stored."""
    params, s = ctx.params, ctx.mstate
    if o.ml_init_steps:
        params = jax.lax.cond(ctx.task == 0, lambda: _ml_init(o, ctx), lambda: ctx.params)
    if o.size:
        rows = ctx.task_rows(ctx.task)
        count = ctx.count(ctx.task)
        if o.coreset == "random":
            idx = random_coreset(jax.random.fold_in(ctx.key, 2), count,
                                 rows["label"].shape[0], o.size)
        else:
            idx = kcenter_coreset(ctx.to_batch(rows)["x"], count, o.size)
        idx = jnp.sort(idx)
        s = s._replace(coreset_idx=s.coreset_idx.at[ctx.task].set(idx),
                       coreset_x=s.coreset_x.at[ctx.task].set(rows["x"][idx]),
                       coreset_label=s.coreset_label.at[ctx.task].set(rows["label"][idx]))
    return params, ctx.opt_state, s


def _finetune(o: Options, ctx: BoundaryContext, rows: dict, valid: Array, head_task: Array):
    """A copy of the posterior, its prior the posterior, trained on the ``valid`` coreset
    ``rows`` (``head_task``: the task whose head the loss uses, for several heads)."""
    n = jnp.sum(valid)
    steps = o.finetune_epochs * -(-n // o.finetune_batch)
    mask = head_mask(ctx.params[MEAN], ctx.spec, head_task)
    weights = valid.astype(jnp.float32)

    def objective(q, key):
        k_idx, k_mc = jax.random.split(key)
        pick = jax.random.categorical(k_idx, jnp.log(weights), shape=(o.finetune_batch,))
        b = ctx.to_batch({k: v[pick] for k, v in rows.items()})
        total, _ = negative_elbo(ctx.model, q, ctx.params, b, k_mc, samples=o.train_samples,
                                 num_examples=n, kl_weight=get_hparam(
                                     ctx.hparams, "kl_weight", "vcl"), mask=mask)
        return total

    return _adam_fit(objective, ctx.params, jax.random.fold_in(ctx.key, 3 + head_task),
                     steps, o.learning_rate)


def _end_task(o: Options, ctx: BoundaryContext):
    """The posterior becomes the next prior; the coreset-tuned posteriors for prediction."""
    s: VCLState = ctx.mstate._replace(prior=ctx.params)
    if o.size:
        T, K = ctx.spec.num_tasks, o.size
        task_of = jnp.repeat(jnp.arange(T, dtype=jnp.int32), K)
        rows = {"x": s.coreset_x.reshape((T * K,) + s.coreset_x.shape[2:]),
                "label": s.coreset_label.reshape(-1), "task": task_of}
        if ctx.spec.num_heads > 1:     # each head on its own task's coreset
            tuned = jax.lax.map(lambda h: jax.lax.cond(
                h <= ctx.task, lambda: _finetune(o, ctx, rows, task_of == h, h),
                lambda: ctx.params), jnp.arange(ctx.spec.num_heads, dtype=jnp.int32))
            has = jnp.arange(ctx.spec.num_heads) <= ctx.task
        else:                          # the shared head on the union of the coresets
            one = _finetune(o, ctx, rows, task_of <= ctx.task, ctx.task)
            tuned = jax.tree.map(lambda v: v[None], one)
            has = jnp.ones((1,), bool)
        s = s._replace(tuned=tuned, has_tuned=has)
    return ctx.params, ctx.opt_state, s


def _mc_logits(o: Options, model: Model, q: dict, b: Batch, key: PRNGKey) -> Array:
    """log of the mean softmax over ``predict_samples`` draws of the weights (each draw shared
    by the batch, as in the authors' prediction: an example's prediction does not depend on the
    others)."""
    def one(k):
        theta = sample_params(q, k)
        return jax.nn.log_softmax(model.logits_fn({MEAN: theta, LOG_VAR: q[LOG_VAR]}, b))

    draws = jax.lax.map(one, jax.random.split(key, o.predict_samples))
    return jax.nn.logsumexp(draws, axis=0) - jnp.log(float(o.predict_samples))


def _predict(o: Options, params, s: VCLState, b: Batch, pctx: PredictContext) -> Array:
    """The predictive distribution of each example's posterior: the coreset-tuned one of its
    task's head (or the shared one) once there is one, else the current posterior."""
    if not o.size:
        return _mc_logits(o, pctx.model, params, b, pctx.key)

    def posterior(p):
        q = jax.tree.map(lambda v: v[p], s.tuned)
        return jax.tree.map(lambda t, c: jnp.where(s.has_tuned[p], t, c), q, params)

    if s.has_tuned.shape[0] == 1:
        return _mc_logits(o, pctx.model, posterior(0), b, pctx.key)
    tasks = pctx.tasks

    def same():             # one task in the batch (an evaluation chunk): one posterior
        return _mc_logits(o, pctx.model, posterior(tasks[0]), b, pctx.key)

    def mixed():            # every head's posterior, each example reading its own
        per_head = jax.lax.map(lambda p: _mc_logits(o, pctx.model, posterior(p), b, pctx.key),
                               jnp.arange(s.has_tuned.shape[0]))
        return jnp.take_along_axis(per_head, tasks[None, :, None], axis=0)[0]

    return jax.lax.cond(jnp.all(tasks == tasks[0]), same, mixed)


def _check_options(o: Options) -> None:
    check_choice(o.coreset, CORESETS, name="coreset")
    if o.coreset == "none" and o.size:
        raise ValueError(f"coreset='none' takes coreset_size=0; got {o.size}")
    if o.coreset != "none":
        check_positive_int(o.size, name="coreset_size")
    for name in ("train_samples", "predict_samples", "ml_init_batch", "finetune_batch",
                 "finetune_epochs"):
        check_positive_int(getattr(o, name), name=name)
    if (not isinstance(o.ml_init_steps, int) or isinstance(o.ml_init_steps, bool)
            or o.ml_init_steps < 0):
        raise ValueError(f"ml_init_steps must be an int >= 0; got {o.ml_init_steps!r}")
    check_positive(o.learning_rate, name="learning_rate")
    if not jnp.isfinite(o.init_log_var):
        raise ValueError(f"init_log_var must be finite; got {o.init_log_var!r}")


def vcl(*, coreset: str = "none", coreset_size: int = 0, train_samples: int = 10,
        predict_samples: int = 100, init_log_var: float = INIT_LOG_VAR, ml_init_steps: int = 0,
        ml_init_batch: int = 256, finetune_epochs: int = 100, finetune_batch: int = 256,
        learning_rate: float = 1e-3) -> Method:
    """VCL (Nguyen et al. 2018): a mean-field Gaussian posterior over the weights, the previous
    task's posterior the prior of the current one, with an optional coreset (module docstring).
    The paper's settings are ``train_samples=10``,
    ``predict_samples=100``, ``init_log_var=-6``, Adam 10⁻³, coresets of 200 (Permuted MNIST) or
    40 (Split MNIST) examples per task, and as many ML and fine-tuning epochs as training epochs."""
    o = Options(coreset, coreset_size, train_samples, predict_samples, init_log_var,
                ml_init_steps, ml_init_batch, finetune_epochs, finetune_batch, learning_rate)
    _check_options(o)
    return Method("vcl", init=partial(_init, o), batch=partial(_batch, o),
                  loss=partial(_loss, o), begin_task=partial(_begin_task, o),
                  end_task=partial(_end_task, o), predict=partial(_predict, o),
                  model=lambda base, spec: mean_field_model(base, init_log_var=init_log_var),
                  default_hparams={"kl_weight": 1.0})


__all__ = ["vcl", "VCLState", "CORESETS", "random_coreset", "kcenter_coreset", "outside",
           "head_mask", "negative_elbo"]

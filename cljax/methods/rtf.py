"""Replay through feedback, RtF (van de Ven & Tolias 2018, "Generative replay with feedback
connections as a general strategy for continual learning", arXiv 1809.10635; code
GMvandeVen/continual-learning at 39301f9, ``--replay=generative --distill --feedback``), as a
recipe on the method protocol.

Generative replay + distillation (DGR + distill) with the generator folded into the classifier:
the network is a VAE whose encoder is the classifier's hidden layers (:mod:`.feedback_vae` built
from the configured MLP: no gates, a standard normal prior, a bias on the log-variance layer as
theirs), trained as one model by the run's optimizer; the copy frozen at the end of each task is
both the generator and the teacher. With D the input's features, a Bernoulli likelihood (the
decoder's sigmoid; their ``BCELoss`` averaged over pixels) and the analytic KL to N(0, I) (Kingma
& Welling 2014, App. B), both divided by D as theirs:

    vae(x)  = [BCE(x, x̂) + KL(q(z|x) ‖ N(0, I))] / D          one z = μ + σ ⊙ ε per example
    current = mean(vae(x)) + CE(logits, y)
    replay  = mean(vae(x̃)) + KD(logits(x̃), teacher(x̃))
    loss    = (1 − r) · current + r · replay,   r = replay_weight · (1 − 1/t)

x̃ (``replay_batch_size``, default the batch size) is decoded by the frozen copy from z ~ N(0, I)
(the sigmoid's means, not sampled pixels) and labelled by its softmax at ``temperature``. The
KD term is :func:`cljax.methods.generative_replay.replay_loss`: in Task-IL the same x̃ are
labelled by each previous head and the loss is the mean over those heads (theirs draws a batch of
⌈B/(t − 1)⌉ per previous task: the same expectation); in Class-IL their code's softmaxes run
over the classes seen (``outputs="seen"``; the teacher's over the previous tasks' classes) and
their distillation is averaged over those classes and × T² (``distill_reduction="mean"``,
``t_squared=True``), the defaults here.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.methods.base import (
    BoundaryContext,
    LossContext,
    Method,
    StreamSpec,
    cross_entropy,
    get_hparam,
)
from cljax.methods.feedback_vae import feedback_network, feedback_pass
from cljax.methods.generative_replay import replay_loss, replay_share
from cljax.methods.rehearsal import (
    check_distill_options,
    is_class_incremental,
    num_seen_classes,
    seen_class_logits,
    softmax_width,
)
from cljax.methods.vae import gaussian_kl_standard, reconstruction_nll
from cljax.nn.model import Model
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_positive_int


class RtFState(NamedTuple):
    """RtF's method state: the network at the end of the last task (generator and teacher), the
    tasks finished, and samples of its generator after each task (``[T, n, *example]``)."""

    previous_params: Params
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose
    samples: Array


class Options(NamedTuple):
    latent: int
    replay_batch_size: int | None
    sample_count: int
    outputs: str
    distill_reduction: str
    t_squared: bool


def _model(o: Options, base: Model, spec: StreamSpec) -> Model:
    return feedback_network("RtF", base, spec, latent=o.latent, conditional=False,
                            log_var_bias=True)


def _init(o: Options, params, key, hparams, spec: StreamSpec) -> RtFState:
    del key, hparams
    samples = jnp.zeros((spec.num_tasks, o.sample_count) + tuple(spec.example_shape),
                        jnp.float32)
    return RtFState(jax.tree.map(jnp.array, params), jnp.zeros((), jnp.int32), samples)


def vae_pass(module: nn.Module, params: Params, x: Array, key: PRNGKey
             ) -> tuple[Array, Array]:
    """Every head's logits ``[B, H, C]`` and each example's negative ELBO / D ``[B]`` (one z;
    Bernoulli reconstruction and analytic KL to N(0, I), van de Ven & Tolias 2018's VAE loss)
    of the feedback network ``module`` on inputs ``x`` in [0, 1]."""
    p = feedback_pass(module, params, x, key)
    nll = (reconstruction_nll(p.decoded, p.inputs, "bernoulli")
           + gaussian_kl_standard(p.mean, p.log_var))
    return p.heads, nll / module.data_dim


def generated_inputs(module: nn.Module, params: Params, key: PRNGKey, n: int,
                     spec: StreamSpec) -> Array:
    """``n`` inputs ``[n, *example]`` decoded by the feedback network ``module`` with ``params``
    from z ~ N(0, I): the decoder's Bernoulli means (RtF's replayed inputs, van de Ven & Tolias
    2018)."""
    check_positive_int(n, name="n")
    z = jax.random.normal(key, (n, module.latent), jnp.float32)
    out = cast(Array, module.apply({"params": params}, z, None, method="decode"))
    return jax.nn.sigmoid(out).reshape((n,) + tuple(spec.example_shape))


def _loss(o: Options, params, b: Batch, s: RtFState, ctx: LossContext):
    spec, module = ctx.spec, ctx.model.module
    if spec.task_masked:
        raise ValueError("RtF trains a head per task or one shared head; Task-IL by a masked "
                         "single head is not supported (set task_heads='separate')")
    k_cur, k_gen, k_rep = jax.random.split(ctx.key, 3)
    heads, nll = vae_pass(module, params, b["x"], k_cur)
    head = b["task"] if spec.num_heads > 1 else jnp.zeros_like(b["y"])
    logits = jnp.take_along_axis(heads, head[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    n = o.replay_batch_size or b["y"].shape[0]
    x_replay = jax.lax.stop_gradient(generated_inputs(module, s.previous_params, k_gen, n, spec))
    new, nll_replay = vae_pass(module, params, x_replay, k_rep)
    teacher = module.apply({"params": s.previous_params}, x_replay.reshape(n, -1),
                           method="encode")[0]
    old = jax.lax.stop_gradient(teacher.reshape(new.shape))
    width = softmax_width(spec, new)
    if o.outputs == "seen" and is_class_incremental(spec, new):
        logits = seen_class_logits(logits, spec, s.count)
        new = seen_class_logits(new, spec, s.count)
        old = seen_class_logits(old, spec, s.count, previous=True)
        width = num_seen_classes(spec, s.count)
    current = jnp.mean(nll) + cross_entropy(logits, b["y"])
    kd = replay_loss(new, old, s.count, targets="soft",
                     temperature=get_hparam(ctx.hparams, "temperature", "rtf"),
                     classes=width if o.distill_reduction == "mean" else None,
                     t_squared=o.t_squared)
    replay = jnp.mean(nll_replay) + kd
    r = replay_share(ctx.hparams, s.count, "rtf")
    return (1.0 - r) * current + r * replay, {"current_loss": current, "replay_loss": replay}


def _end_task(o: Options, ctx: BoundaryContext):
    """Freeze a copy of the network; keep its generator's samples after this task."""
    s: RtFState = ctx.mstate
    drawn = generated_inputs(ctx.model.module, ctx.params, jax.random.key(0), o.sample_count,
                             ctx.spec)
    return ctx.keep_params(RtFState(ctx.params, s.count + 1, s.samples.at[ctx.task].set(drawn)))


def _samples(s: RtFState) -> Array:
    return s.samples


def rtf(*, latent: int = 100, replay_batch_size: int | None = None, sample_count: int = 8,
        outputs: str = "seen", distill_reduction: str = "mean",
        t_squared: bool = True) -> Method:
    """Replay through feedback (van de Ven & Tolias 2018; module docstring): the classifier is
    the encoder of a VAE of ``latent`` units that replays its own samples, labelled by its frozen
    copy's soft targets. ``replay_batch_size``: generated inputs per step (None: the batch
    size). ``outputs``, ``distill_reduction``, ``t_squared`` as :func:`cljax.methods.dgr`'s,
    their code's by default. Hyperparameters ``replay_weight`` (1) and ``temperature`` (2)."""
    check_positive_int(latent, name="latent")
    check_positive_int(sample_count, name="sample_count")
    if replay_batch_size is not None:
        check_positive_int(replay_batch_size, name="replay_batch_size")
    check_distill_options(outputs, distill_reduction)
    if not isinstance(t_squared, bool):
        raise TypeError(f"t_squared must be a bool; got {t_squared!r}")
    o = Options(latent, replay_batch_size, sample_count, outputs, distill_reduction, t_squared)
    return Method("rtf", init=partial(_init, o), loss=partial(_loss, o),
                  end_task=partial(_end_task, o), model=partial(_model, o), samples=_samples,
                  default_hparams={"replay_weight": 1.0, "temperature": 2.0},
                  hparam_domains={"replay_weight": "closed_unit_interval",
                                  "temperature": "positive"})


__all__ = ["rtf", "RtFState", "vae_pass", "generated_inputs"]

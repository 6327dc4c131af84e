"""Brain-inspired replay, BI-R (van de Ven, Siegelmann & Tolias 2020, Nature Communications), in
the form of van de Ven, Tuytelaars & Tolias 2022's code (GMvandeVen/continual-learning,
``--brain-inspired``: ``models/cond_vae.py``, ``train/train_task_based.py``), as a recipe on the
method protocol.

Its five components, all here:

* **replay through feedback** — the classifier is the encoder of a VAE
  (:mod:`.feedback_vae`, built by ``Method.model`` from the configured MLP): one network, one
  optimizer; the frozen copy made at the end of each task is both the generator and the teacher;
* **conditional replay** — the prior is a Gaussian mode per class (learned means and
  log-variances); replayed inputs are decoded from z drawn at a mode of a previous class;
* **gating based on internal context** — the decoder's hidden layers are gated by fixed random
  masks of the class (Task- and Class-IL) or of the task (Domain-IL), ``gate_prop`` of each
  mask's units off (their CIFAR-100 values: Task-IL 0 — no gates —, Domain-IL 0.5, Class-IL 0.7);
* **internal replay** — on Split CIFAR-100 the network reads the frozen pre-trained conv
  features (``config["features"]``), so replay is of those features, not of images;
* **distillation** — replayed inputs are labelled by the previous model's softmax at
  ``temperature`` (their cross-entropy to soft targets, no T² factor).

Per step, with t the tasks seen, r = ``replay_weight`` · (1 − 1/t) and D the input's features:

    current = ½‖x − x̂‖²/D + [log q(z|x) − log N(z; μ_y, σ²_y)]/D + CE(logits, y)
    replay  = ½‖x̃ − x̂‖²/D + [log q(z|x̃) − log Σ_c p_c N(z; μ_c, σ²_c)]/D + KD(logits, teacher)
    loss    = (1 − r) · mean(current) + r · mean(replay)

with one z = μ + σ ⊙ ε per example (their single-sample KL estimate), the decoder gated by the
one-hot class (or task) on current data and by the teacher's softened distribution p (or the
task the input was generated for) on replayed data. Replayed inputs (``replay_batch_size``, default
the batch size) are drawn as theirs: Class-IL a mode uniform over the previous classes, gated by
it; Domain-IL a mode uniform over the shared labels and a previous task for the gate; Task-IL the
items spread evenly over the previous tasks, a mode uniform over the task's classes, and the replay
loss the mean over those tasks of each task's mean (their average over heads), the mixture prior
over that task's modes.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cljax.methods.base import BoundaryContext, LossContext, Method, StreamSpec, get_hparam
from cljax.methods.feedback_vae import feedback_network, feedback_pass
from cljax.methods.generative_replay import replay_share
from cljax.methods.rehearsal import soft_cross_entropy
from cljax.methods.vae import log_normal_diag, reconstruction_nll
from cljax.nn.model import Model
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_positive_int

GATE_PROP_CIFAR100 = {"task": 0.0, "domain": 0.5, "class": 0.7}
"""van de Ven et al.'s gated share of the decoder's units on CIFAR-100 (``dg_prop``); on Split
MNIST theirs are 0 / 0.1 / 0.1."""


class BIRState(NamedTuple):
    """BI-R's method state: the network at the end of the last task (generator and teacher),
    the tasks finished, and samples of its generator after each task (``[T, n, *example]``)."""

    previous_params: Params
    count: Array  # type: ignore[assignment]  # a NamedTuple field shadowing tuple.count, on purpose
    samples: Array


class Options(NamedTuple):
    latent: int
    gate_prop: Mapping[str, float]
    gate_seed: int
    replay_batch_size: int | None
    sample_count: int


def scenario_of(spec: StreamSpec) -> str:
    """The spec's scenario, a one-task stream counting as Class-IL."""
    return spec.scenario or "class"


def gate_kind(spec: StreamSpec) -> str:
    """What the decoder's gates read: the task ("context", Domain-IL) or the class."""
    return "context" if scenario_of(spec) == "domain" else "class"


def _gates(o: Options, spec: StreamSpec) -> tuple[int, float]:
    """(rows, prop) of the decoder's gates in ``spec``'s scenario; rows 0 when off."""
    prop = float(o.gate_prop[scenario_of(spec)])
    rows = 0 if prop == 0 else (spec.num_tasks if gate_kind(spec) == "context"
                                else spec.num_heads * spec.num_outputs)
    return rows, prop


def _model(o: Options, base: Model, spec: StreamSpec) -> Model:
    rows, prop = _gates(o, spec)
    return feedback_network("BI-R", base, spec, latent=o.latent, gate_rows=rows,
                            gate_prop=prop, gate_seed=o.gate_seed)


def _init(o: Options, params, key, hparams, spec: StreamSpec) -> BIRState:
    del key, hparams
    samples = jnp.zeros((spec.num_tasks, o.sample_count) + tuple(spec.example_shape),
                        jnp.float32)
    return BIRState(jax.tree.map(jnp.array, params), jnp.zeros((), jnp.int32), samples)


def _one_hot_gate(index: Array, rows: int) -> Array | None:
    return jax.nn.one_hot(index, rows) if rows else None


def _pass(module, params, x, key, gate):
    """Encoder, one z, decoder: (logits [B, H, C], ½‖x − x̂‖² [B], z, μ, log σ²)."""
    p = feedback_pass(module, params, x, key, gate)
    return (p.heads, reconstruction_nll(p.decoded, p.inputs, "gaussian"), p.z, p.mean,
            p.log_var)


def generated_inputs(module: nn.Module, params: Params, key: PRNGKey, n: int, count: Array, spec: StreamSpec
                     ) -> tuple[Array, Array, Array]:
    """``n`` inputs decoded by the :class:`FeedbackVAE` ``module`` with ``params`` for the
    ``count`` tasks it has learned (module docstring): ``(x [n, *example], mode [n], task [n])``
    — the task each input was generated for (Task-IL: its head; Domain-IL: its gate;
    Class-IL: 0)."""
    kind, rows = gate_kind(spec), module.gate_rows
    k_mode, k_task, k_z = jax.random.split(key, 3)
    seen = jnp.maximum(count, 1)
    C = spec.num_outputs
    if spec.num_heads > 1:
        task = jnp.arange(n, dtype=jnp.int32) % seen
        mode = task * C + jax.random.randint(k_mode, (n,), 0, C)
    elif kind == "context":
        mode = jax.random.randint(k_mode, (n,), 0, C)
        task = jax.random.randint(k_task, (n,), 0, seen)
    else:
        mode = jax.random.randint(k_mode, (n,), 0, spec.classes_per_task * seen)
        task = jnp.zeros((n,), jnp.int32)
    means, log_vars = cast(tuple[Array, Array], module.apply({"params": params}, method="modes"))
    z = means[mode] + jnp.exp(0.5 * log_vars[mode]) * jax.random.normal(
        k_z, (n, module.latent), jnp.float32)
    gate = _one_hot_gate(task if kind == "context" else mode, rows)
    x = cast(Array, module.apply({"params": params}, z, gate, method="decode"))
    return x.reshape((n,) + tuple(spec.example_shape)), mode, task


def _current_loss(module, params, b: Batch, key, spec: StreamSpec) -> Array:
    kind, rows = gate_kind(spec), module.gate_rows
    C = spec.num_outputs
    mode = (b["task"] * C + b["y"]) if spec.num_heads > 1 else b["y"]
    gate = _one_hot_gate(b["task"] if kind == "context" else mode, rows)
    heads, recon, z, mean, log_var = _pass(module, params, b["x"], key, gate)
    means, log_vars = module.apply({"params": params}, method="modes")
    kl = log_normal_diag(z, mean, log_var) - log_normal_diag(z, means[mode], log_vars[mode])
    head = b["task"] if spec.num_heads > 1 else jnp.zeros_like(b["y"])
    logits = jnp.take_along_axis(heads, head[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"])
    return jnp.mean((recon + kl) / module.data_dim + ce)


def _replay_loss(module, params, s: BIRState, key, n: int, spec: StreamSpec,
                 temperature: Array) -> Array:
    kind, rows = gate_kind(spec), module.gate_rows
    k_gen, k_pass = jax.random.split(key)
    x, _, task = generated_inputs(module, s.previous_params, k_gen, n, s.count, spec)
    x = jax.lax.stop_gradient(x)
    H, C = spec.num_heads, spec.num_outputs
    head = task if H > 1 else jnp.zeros((n,), jnp.int32)
    teacher_all = jax.lax.stop_gradient(module.apply({"params": s.previous_params},
                                                     x.reshape(n, -1), method="encode")[0])
    teacher = jnp.take_along_axis(teacher_all.reshape(n, H, C), head[:, None, None], axis=1)[:, 0]
    soft = jax.nn.softmax(teacher / temperature, axis=-1)                         # [n, C]
    weights = (jax.nn.one_hot(head, H)[:, :, None] * soft[:, None, :]).reshape(n, H * C)
    gate = weights if kind == "class" and rows else _one_hot_gate(task, rows)
    heads, recon, z, mean, log_var = _pass(module, params, x, k_pass, gate)
    means, log_vars = module.apply({"params": params}, method="modes")
    log_modes = log_normal_diag(z[:, None, :], means[None], log_vars[None])      # [n, M]
    log_prior = jax.nn.logsumexp(log_modes, b=weights, axis=-1)
    kl = log_normal_diag(z, mean, log_var) - log_prior
    logits = jnp.take_along_axis(heads, head[:, None, None], axis=1)[:, 0]
    per_item = (recon + kl) / module.data_dim + soft_cross_entropy(logits, teacher, temperature)
    if H == 1:
        return jnp.mean(per_item)
    member = jax.nn.one_hot(head, H)                                              # [n, H]
    sizes = jnp.sum(member, axis=0)
    per_task = jnp.sum(member * per_item[:, None], axis=0) / jnp.maximum(sizes, 1.0)
    used = (sizes > 0).astype(per_task.dtype)
    return jnp.sum(per_task * used) / jnp.maximum(jnp.sum(used), 1.0)


def _loss(o: Options, params, b: Batch, s: BIRState, ctx: LossContext):
    module = ctx.model.module
    k_cur, k_rep = jax.random.split(ctx.key)
    current = _current_loss(module, params, b, k_cur, ctx.spec)
    replay = _replay_loss(module, params, s, k_rep, o.replay_batch_size or b["y"].shape[0],
                          ctx.spec, get_hparam(ctx.hparams, "temperature", "bir"))
    r = replay_share(ctx.hparams, s.count, "bir")
    return (1.0 - r) * current + r * replay, {"current_loss": current, "replay_loss": replay}


def _end_task(o: Options, ctx: BoundaryContext):
    """Freeze a copy of the network; keep its generator's samples of the tasks seen."""
    s: BIRState = ctx.mstate
    count = s.count + 1
    drawn, _, _ = generated_inputs(ctx.model.module, ctx.params, jax.random.key(0),
                                   o.sample_count, count, ctx.spec)
    return ctx.keep_params(BIRState(ctx.params, count, s.samples.at[ctx.task].set(drawn)))


def _samples(s: BIRState) -> Array:
    return s.samples


def _gate_props(gate_prop: Any) -> dict[str, float]:
    if gate_prop is None:
        return dict(GATE_PROP_CIFAR100)
    if isinstance(gate_prop, (int, float)) and not isinstance(gate_prop, bool):
        props = {k: float(gate_prop) for k in GATE_PROP_CIFAR100}
    elif isinstance(gate_prop, Mapping) and set(gate_prop) == set(GATE_PROP_CIFAR100):
        props = {k: float(v) for k, v in gate_prop.items()}
    else:
        raise ValueError("gate_prop must be None (van de Ven et al.'s CIFAR-100 values), a float, "
                         "or a dict of it for each of 'task', 'domain', 'class'; got "
                         f"{gate_prop!r}")
    for k, v in props.items():
        if not 0 <= v < 1:
            raise ValueError(f"gate_prop[{k!r}] must lie in [0, 1); got {v!r}")
    return props


def bir(*, latent: int = 100, gate_prop: Any = None, gate_seed: int = 0,
        replay_batch_size: int | None = None, sample_count: int = 8) -> Method:
    """Brain-inspired replay (van de Ven, Siegelmann & Tolias 2020): the classifier is the encoder
    of a conditional VAE whose gated decoder replays internal features, with distillation (module
    docstring). On the configured MLP's widths: ``latent`` units, the decoder's
    gates (``gate_prop``: a share of units off per scenario, None for van de Ven et al.'s
    CIFAR-100 values :data:`GATE_PROP_CIFAR100`; masks from ``gate_seed``),
    ``replay_batch_size`` generated inputs per step (None: the batch size). Hyperparameters
    ``replay_weight`` (1) and ``temperature`` (2). The inputs are modelled as Gaussian (their
    normalised features; a linear decoder output)."""
    check_positive_int(latent, name="latent")
    check_positive_int(sample_count, name="sample_count")
    if replay_batch_size is not None:
        check_positive_int(replay_batch_size, name="replay_batch_size")
    if not isinstance(gate_seed, int) or isinstance(gate_seed, bool):
        raise ValueError(f"gate_seed must be an int; got {gate_seed!r}")
    o = Options(latent, _gate_props(gate_prop), gate_seed, replay_batch_size, sample_count)
    return Method("bir", init=partial(_init, o), loss=partial(_loss, o),
                  end_task=partial(_end_task, o), model=partial(_model, o), samples=_samples,
                  default_hparams={"replay_weight": 1.0, "temperature": 2.0},
                  hparam_domains={"replay_weight": "closed_unit_interval",
                                  "temperature": "positive"})


__all__ = ["bir", "BIRState", "GATE_PROP_CIFAR100", "generated_inputs", "scenario_of",
           "gate_kind"]

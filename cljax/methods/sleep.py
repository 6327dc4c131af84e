"""Sleep Replay Consolidation (SRC; Tadros, Krishnan, Ramyaa & Bazhenov 2022, Nature
Communications 13:7742, "Sleep-like unsupervised replay reduces catastrophic forgetting in
artificial neural networks"; code ``tmtadros/SleepReplayConsolidation``) as a recipe on the
method protocol.

Each task trains normally (fine-tuning); at its end (``end_task``) the ReLU MLP *sleeps*: it runs
as a spiking network of integrate-and-fire units for ``T_s`` time steps, driven by Bernoulli spike
trains whose rates come from the mean input of the training data, and a local STDP rule edits
its weights. What one sleep does, as the authors' ``sleep/sleepnn_old.m`` and
``utils/normalize_nn_data.m`` (the MNIST script ``MNIST/run_class_task_summary.m``) do it:

1. **Scale factors** (data-based normalisation, Diehl et al. 2015, in the authors' variant;
   :func:`scale_factors`): per layer l, ``s_l = max(max(0, W_l), max(0, a_l))`` over the data's
   activations ``a_l`` (output layer included); ``λ_1 = s_1``, ``λ_l = s_l / λ_{l-1}`` and the
   layer's factor ``α_l = alpha_scale / λ_l`` (the recursion divides by the previous *applied*
   factor, not by ``s_{l-1}``: the authors' code, kept as it is).
2. **Input** (:func:`input_spike_rates`): the mean input image of the data; at each step a random
   ``patch × patch`` window of it is kept (the rest zero) and each pixel spikes with probability
   ``min(1, 2·dt·input_rate·x)``, dt = :data:`DT`.
3. **Spiking pass** (:func:`sleep_step`), layer by layer within a step: the membrane potential
   ``v_l ← decay·v_l + α_l · s_{l-1} W_l`` (the layer below's spikes of this step, no bias);
   units with ``v_l ≥ β_l`` spike and reset to 0.
4. **STDP** (same step, after the impulse): for every unit that spiked, its weights from inputs
   that spiked this step grow by ``inc·g(W)``, those from inputs that did not shrink by
   ``dec·g(W)``; ``g(W) = 2σ(−W / 0.001)`` (:func:`stdp_gain`, the authors' "sigmoid": ≈2 for
   negative weights, 1 at 0, ≈0 above a few thousandths), or 1 with ``weight_dependent=False``.
5. **Back to the ANN**: the factors scale only the impulses and the rule edits the weights
   themselves, so the edited kernels are the ANN's; nothing is to be undone.

Choices, and where they come from:

* **Which data** (``statistics``): ``"seen"`` (default) takes the mean input and the activation
  maxima over the training data of every task so far, re-read at the boundary with the current
  weights, as the authors' MNIST script does (``ismember(tasks, task_order(1:ii))``); it needs the
  stream on the device (``placement="device"``). ``"current"``: the ending task's data only (the
  host pipeline can feed it).
* **Biases**: the authors' network has none. Here the spiking pass ignores them (impulses are
  ``α·sW``) and leaves them unchanged; the activations behind the scale factors are the ANN's own
  (biases included, dropout off).
* **Sleep length**: task t (0-based) sleeps ``round(sleep_steps · (1 + steps_growth · t))`` steps
  (the authors: ``15000 + (ii−1)·15000/3``), a loop whose trip count is read from a static table
  at the task index, so one compilation serves the stream; each step's randomness is
  ``fold_in(key, step)`` of the boundary key.
* **Defaults**: the MNIST values of the authors' genetic search (``x`` in
  ``run_class_task_summary.m``): input_rate 239.515363, inc 0.032064, dec 0.003344, β = (14.548273,
  44.560317, 38.046326) for the three layers of their 784-1200-1200-10 network, alpha_scale
  55.882454, decay 0.999, 11×11 input patches, dt 0.001, ``T_s`` 15000 (+5000 per task).
* **Models**: :class:`cljax.nn.MLP` without RGO's feature encoding, one threshold per layer; the
  ``model`` hook refuses any other network before anything is traced. With several heads every
  output unit sleeps.

State (:class:`SleepState`): the last sleep's factors, spike counts and length (diagnostics: a
sleep in which nothing spikes changes nothing).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import BoundaryContext, Method, StreamSpec, get_hparam
from cljax.methods.packnet import any_run
from cljax.nn.mlp import MLP
from cljax.nn.model import Model
from cljax.types import Array, Params, PRNGKey
from cljax.validation import check_choice

DT = 0.001
"""The simulation's time step (s): an input pixel of value x spikes with probability
``min(1, 2·DT·input_rate·x)`` per step (the authors' ``t_opts.dt``)."""

GAIN_WIDTH = 0.001
"""The weight scale of the STDP gain ``g(W) = 2σ(−W / GAIN_WIDTH)`` (:func:`stdp_gain`)."""

MNIST_THRESHOLDS = (14.548273, 44.560317, 38.046326)
"""β of the three layers of the authors' MNIST network (784-1200-1200-10), from their search."""

STATISTICS = ("seen", "current")


class SleepState(NamedTuple):
    """What the last sleep did: ``scales`` (float32 ``[L]``, α_l with ``alpha_scale``),
    ``spikes`` (int32 ``[L]``, the spikes each layer fired) and ``steps`` (int32, its length)."""

    scales: Array
    spikes: Array
    steps: Array


# --------------------------------------------------------------------------------------------
# The spiking network (pure functions of arrays)
# --------------------------------------------------------------------------------------------

def _check_kernels(kernels: Any) -> tuple[Array, ...]:
    if not isinstance(kernels, (list, tuple)) or not kernels:
        raise TypeError(f"kernels must be a non-empty sequence of [in, out] weight matrices; got "
                        f"{type(kernels).__name__}")
    for i, k in enumerate(kernels):
        if jnp.ndim(k) != 2:
            raise ValueError(f"kernels[{i}] must be a matrix [in, out]; got shape {jnp.shape(k)}")
        if i and jnp.shape(kernels[i - 1])[1] != jnp.shape(k)[0]:
            raise ValueError(f"kernels[{i}] has {jnp.shape(k)[0]} inputs but kernels[{i - 1}] "
                             f"has {jnp.shape(kernels[i - 1])[1]} outputs")
    return tuple(kernels)


def _per_layer(value: Any, name: str, n: int) -> Array:
    arr = jnp.asarray(value, jnp.float32)
    if arr.shape != (n,):
        raise ValueError(f"{name} must hold one value per layer, shape ({n},); got {arr.shape}")
    return arr


def stdp_gain(w: Array) -> Array:
    """The authors' weight dependence of the STDP step (``sigmoid`` in ``sleepnn_old.m``):
    ``g(w) = 2σ(−w / GAIN_WIDTH) = 2(1 − 1/(1 + exp(−w / 0.001)))``."""
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"w must be a float array; got {w.dtype}")
    return 2.0 * jax.nn.sigmoid(-w / GAIN_WIDTH)


def scale_factors(weight_max: Array, activation_max: Array) -> Array:
    """Per-layer factors of the authors' data-based normalisation (``normalize_nn_data.m``):
    ``s_l = max(weight_max_l, activation_max_l)`` (a layer with ``s_l = 0`` counts as 1),
    ``λ_1 = s_1``, ``λ_l = s_l / λ_{l-1}``; returns ``1 / λ_l`` (float32 ``[L]``).

    ``weight_max_l`` is ``max(0, max W_l)`` and ``activation_max_l`` the largest ReLU activation
    of layer l over the data (method docstring, step 1)."""
    w, a = jnp.asarray(weight_max, jnp.float32), jnp.asarray(activation_max, jnp.float32)
    if w.ndim != 1 or w.shape != a.shape or w.shape[0] < 1:
        raise ValueError(f"weight_max and activation_max must be vectors of one value per layer "
                         f"of the same length; got shapes {w.shape} and {a.shape}")
    s = jnp.maximum(jnp.maximum(w, a), 0.0)
    s = jnp.where(s > 0, s, 1.0)

    def one(previous, s_l):
        applied = s_l / previous
        return applied, 1.0 / applied

    return jax.lax.scan(one, jnp.ones((), jnp.float32), s)[1]


def sleep_step(kernels: Sequence[Array], potentials: Sequence[Array], input_spikes: Array, *,
               scales: Array, thresholds: Array, decay: Array, inc: Array, dec: Array,
               weight_dependent: bool = True
               ) -> tuple[tuple[Array, ...], tuple[Array, ...], tuple[Array, ...]]:
    """One time step of the sleep (method docstring, steps 3-4), layer by layer: impulse
    ``α_l · s_{l-1} W_l`` (with the weights before this step's update), ``v ← decay·v +
    impulse``, spikes ``v ≥ β_l``, STDP on ``W_l`` for the units that spiked (``+inc·g`` from
    inputs that spiked, ``−dec·g`` from those that did not), reset of the spiking units to 0.

    ``kernels[l]``: ``[in, out]``; ``potentials[l]``: ``[out]``; ``input_spikes``: bool ``[in]``
    of the first layer. Returns ``(kernels, potentials, spikes)``, spikes bool per layer."""
    kernels = _check_kernels(kernels)
    n = len(kernels)
    if len(potentials) != n:
        raise ValueError(f"potentials must hold one vector per layer ({n}); got {len(potentials)}")
    scales = _per_layer(scales, "scales", n)
    thresholds = _per_layer(thresholds, "thresholds", n)
    pre = jnp.asarray(input_spikes)
    if pre.shape != (jnp.shape(kernels[0])[0],):
        raise ValueError(f"input_spikes must be [{jnp.shape(kernels[0])[0]}] (the first layer's "
                         f"inputs); got {pre.shape}")
    pre = pre.astype(bool)
    new_k, new_v, spikes = [], [], []
    for l, (w, v) in enumerate(zip(kernels, potentials)):
        v = decay * v + scales[l] * (pre.astype(w.dtype) @ w)
        post = v >= thresholds[l]

        def plastic(w, pre=pre, post=post):
            step = jnp.where(pre[:, None], jnp.asarray(inc, w.dtype), -jnp.asarray(dec, w.dtype))
            gain = stdp_gain(w) if weight_dependent else 1.0
            return jnp.where(post[None, :], w + step * gain, w)

        # a layer in which no unit spiked keeps its weights (skipped: most steps, most layers)
        w = jax.lax.cond(any_run(jnp.any(post)), plastic, lambda w: w, w)
        new_k.append(w)
        new_v.append(jnp.where(post, jnp.zeros((), v.dtype), v))
        spikes.append(post)
        pre = post
    return tuple(new_k), tuple(new_v), tuple(spikes)


def spiking_sleep(kernels: Sequence[Array], input_spikes: Callable[[Array], Array],
                  num_steps: Any, *, scales: Array, thresholds: Array, decay: Any, inc: Any,
                  dec: Any, weight_dependent: bool = True) -> tuple[tuple[Array, ...], Array]:
    """The sleep phase of SRC (Tadros et al. 2022, Methods; ``sleepnn_old.m``): ``num_steps``
    steps of :func:`sleep_step` from membrane potentials 0, ``input_spikes(t)`` (bool ``[in]``)
    driving the first layer at step t. ``num_steps`` may be traced (a loop of that many trips);
    0 returns ``kernels`` unchanged. Returns ``(kernels, spike counts per layer (int32 [L]))``."""
    kernels = _check_kernels(kernels)
    n = len(kernels)
    scales = _per_layer(scales, "scales", n)
    thresholds = _per_layer(thresholds, "thresholds", n)
    if not callable(input_spikes):
        raise TypeError(f"input_spikes must be a function of the step t -> bool [in]; got "
                        f"{type(input_spikes).__name__}")
    if isinstance(num_steps, (bool, float)) or (
            isinstance(num_steps, (int, np.integer)) and num_steps < 0):
        raise ValueError(f"num_steps must be an int >= 0 (or an int array); got {num_steps!r}")
    potentials = tuple(jnp.zeros((jnp.shape(k)[1],), jnp.result_type(k)) for k in kernels)
    counts = jnp.zeros((n,), jnp.int32)

    def body(t, carry):
        ks, vs, c = carry
        ks, vs, spikes = sleep_step(ks, vs, input_spikes(t), scales=scales,
                                    thresholds=thresholds, decay=decay, inc=inc, dec=dec,
                                    weight_dependent=weight_dependent)
        return ks, vs, c + jnp.stack([jnp.sum(s, dtype=jnp.int32) for s in spikes])

    ks, _, counts = jax.lax.fori_loop(0, num_steps, body, (kernels, potentials, counts))
    return ks, counts


def input_spike_rates(mean_x: Array, key: PRNGKey, *, input_rate: Any,
                      patch: int | None) -> Array:
    """The spike probability of every input at one step (method docstring, step 2;
    ``create_masked_input.m``): the mean input ``mean_x`` (an example's shape) with all but a
    random ``patch × patch`` window of its first two axes zeroed (the window's corner uniform over
    the positions where it fits; ``patch`` None: the whole input), times ``2·DT·input_rate``,
    clipped to [0, 1], flattened."""
    mean_x = jnp.asarray(mean_x)
    if patch is not None:
        if mean_x.ndim < 2:
            raise ValueError(f"patch needs inputs with two spatial axes; mean_x has shape "
                             f"{mean_x.shape} (use patch=None for flat inputs)")
        h, w = mean_x.shape[:2]
        if patch > h or patch > w:
            raise ValueError(f"patch {patch} does not fit the inputs' {h}×{w} spatial axes")
        corner = jax.random.randint(key, (2,), 0, jnp.asarray([h - patch + 1, w - patch + 1]))
        rows = (jnp.arange(h) >= corner[0]) & (jnp.arange(h) < corner[0] + patch)
        cols = (jnp.arange(w) >= corner[1]) & (jnp.arange(w) < corner[1] + patch)
        window = (rows[:, None] & cols[None, :]).reshape((h, w) + (1,) * (mean_x.ndim - 2))
        mean_x = jnp.where(window, mean_x, 0.0)
    return jnp.clip(2.0 * DT * input_rate * mean_x, 0.0, 1.0).reshape(-1)


# --------------------------------------------------------------------------------------------
# The network's layers and the data's statistics
# --------------------------------------------------------------------------------------------

def mlp_layers(params: Params) -> tuple[str, ...]:
    """The layers of a :class:`cljax.nn.MLP`'s params in order: ``Dense_0 … Dense_{L-1}`` (each a
    ``kernel`` ``[in, out]``, optionally a ``bias``), nothing else."""
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be an MLP's parameter dict {{'Dense_0': ...}}; got "
                        f"{type(params).__name__}")
    names = tuple(f"Dense_{i}" for i in range(len(params)))
    if set(params) != set(names) or not all(
            isinstance(params[n], dict) and "kernel" in params[n]
            and jnp.ndim(params[n]["kernel"]) == 2 for n in names):
        raise ValueError(f"src sleeps a plain cljax.nn.MLP whose params are Dense_0 … Dense_"
                         f"{len(params) - 1} with [in, out] kernels; got {sorted(params)}")
    return names


def layer_activations(params: Params, x: Array) -> list[Array]:
    """Every layer's ReLU activation ``[B, out]`` of an MLP (biases included; the output layer's
    logits through a ReLU too, as the authors' ReLU output units), from inputs ``x`` ``[B, ...]``
    (flattened as :class:`cljax.nn.MLP` does; evaluation mode)."""
    h = jnp.asarray(x).reshape(jnp.shape(x)[0], -1)
    out = []
    for name in mlp_layers(params):
        layer = params[name]
        z = h @ layer["kernel"]
        if "bias" in layer:
            z = z + layer["bias"]
        h = jax.nn.relu(z)
        out.append(h)
    return out


def task_statistics(params: Params, rows: Any, count: Array, to_batch: Callable[[Any], Any],
                    *, chunk_size: int) -> tuple[Array, Array, Array]:
    """Over the first ``count`` of ``rows`` (a task's stored rows, ``[N, ...]``), in chunks of
    ``chunk_size`` (a ``lax.scan``): ``(sum of the normalised inputs (an example's shape), number
    of examples, largest activation of each layer (float32 [L]))``."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    layers = mlp_layers(params)
    n = int(jnp.shape(rows["x"])[0])
    c = min(chunk_size, n)
    chunks = -(-n // c)
    pad = chunks * c - n
    padded = {k: jnp.pad(v, [(0, pad)] + [(0, 0)] * (jnp.ndim(v) - 1)).reshape(
        (chunks, c) + jnp.shape(v)[1:]) for k, v in rows.items()}
    index = jnp.arange(chunks * c).reshape(chunks, c)
    example = to_batch({k: v[0] for k, v in padded.items()})["x"]

    def one(carry, chunk):
        total, maxima = carry
        part, idx = chunk
        x = to_batch(part)["x"]
        valid = idx < count
        total = total + jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0),
                                axis=0)
        acts = layer_activations(params, x)
        top = jnp.stack([jnp.max(jnp.where(valid[:, None], a, 0.0)) for a in acts])
        return (total, jnp.maximum(maxima, top)), None

    init = (jnp.zeros(example.shape[1:], jnp.float32), jnp.zeros((len(layers),), jnp.float32))
    (total, maxima), _ = jax.lax.scan(one, init, (padded, index))
    return total, jnp.minimum(count, n).astype(jnp.float32), maxima


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

def sleep_lengths(sleep_steps: int, steps_growth: float, num_tasks: int) -> np.ndarray:
    """Steps of each task's sleep: ``round(sleep_steps · (1 + steps_growth · t))`` for task t
    (half up), int32 ``[num_tasks]``."""
    if isinstance(sleep_steps, bool) or not isinstance(sleep_steps, (int, np.integer)) \
            or sleep_steps < 0:
        raise ValueError(f"sleep_steps must be an int >= 0; got {sleep_steps!r}")
    if isinstance(steps_growth, bool) or not isinstance(steps_growth, (int, float)) \
            or not math.isfinite(steps_growth) or steps_growth < 0:
        raise ValueError(f"steps_growth must be a finite float >= 0; got {steps_growth!r}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) \
            or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
    lengths = [math.floor(sleep_steps * (1 + steps_growth * t) + 0.5) for t in range(num_tasks)]
    if max(lengths) > np.iinfo(np.int32).max:
        raise ValueError(f"sleep lengths {lengths} overflow int32")
    return np.asarray(lengths, np.int32)


def check_sleep_model(model: Model, spec: StreamSpec, *, num_layers: int,
                      patch: int | None) -> None:
    """``model`` is a network SRC can sleep (a :class:`cljax.nn.MLP` without feature encoding, of
    ``num_layers`` Dense layers counting the output layer) and ``patch`` fits ``spec``'s
    examples; else a ``ValueError`` saying what to change."""
    module = getattr(model, "module", None)
    if type(module) is not MLP:
        raise ValueError(f"src sleeps a cljax.nn.MLP (model kind 'mlp': the spiking network is "
                         f"its Dense layers); got a {type(module).__name__}")
    if module.feature_encoding:
        raise ValueError("src cannot sleep an MLP with RGO's feature encoding layer "
                         "(feature_encoding > 0): the spiking pass has no per-task permutation")
    layers = len(tuple(module.widths)) + 1
    if layers != num_layers:
        raise ValueError(f"src has {num_layers} layer threshold(s) (method option 'thresholds', "
                         f"hyperparameters beta_0 … beta_{num_layers - 1}) but the MLP has "
                         f"{layers} layers (widths {list(module.widths)} and the output layer): "
                         f"give one threshold per layer")
    if patch is not None:
        shape = tuple(spec.example_shape)
        if len(shape) < 2 or patch > shape[0] or patch > shape[1]:
            raise ValueError(f"src's input patch of {patch}×{patch} needs examples with two "
                             f"spatial axes at least that large; the examples have shape {shape} "
                             f"(method option patch=None uses the whole mean input)")


def _check_options(sleep_steps: Any, steps_growth: Any, thresholds: Any, patch: Any,
                   statistics: Any, chunk_size: Any, weight_dependent: Any) -> tuple[float, ...]:
    sleep_lengths(sleep_steps, steps_growth, 1)
    if not isinstance(thresholds, (list, tuple)) or not thresholds or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
            for b in thresholds):
        raise ValueError(f"thresholds must be a non-empty sequence of finite floats > 0 (β of "
                         f"each layer, the output layer last); got {thresholds!r}")
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 1):
        raise ValueError(f"patch must be None or a positive int (the side of the input window); "
                         f"got {patch!r}")
    check_choice(statistics, STATISTICS, name="statistics")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if not isinstance(weight_dependent, bool):
        raise TypeError(f"weight_dependent must be a bool; got {weight_dependent!r}")
    return tuple(float(b) for b in thresholds)


def _statistics(ctx: BoundaryContext, statistics: str, chunk_size: int
                ) -> tuple[Array, Array]:
    """The mean input and each layer's largest activation over the data ``statistics`` names."""
    params = ctx.params

    def of(t: Array) -> tuple[Array, Array, Array]:
        return task_statistics(params, ctx.task_rows(t), ctx.count(t), ctx.to_batch,
                               chunk_size=chunk_size)

    if statistics == "current":
        total, count, maxima = of(ctx.task)
    else:
        def add(t, carry):
            total, count, maxima = carry
            t_total, t_count, t_max = of(t)
            return total + t_total, count + t_count, jnp.maximum(maxima, t_max)

        last = jnp.minimum(ctx.task, ctx.spec.num_tasks - 1)
        total, count, maxima = jax.lax.fori_loop(1, last + 1, add, of(jnp.zeros((), jnp.int32)))
    return total / jnp.maximum(count, 1.0), maxima


def src(*, sleep_steps: int = 15000, steps_growth: float = 1 / 3,
        thresholds: Sequence[float] = MNIST_THRESHOLDS, patch: int | None = 11,
        statistics: str = "seen", weight_dependent: bool = True,
        chunk_size: int = 1000) -> Method:
    """Sleep Replay Consolidation (Tadros et al. 2022): after each task the MLP sleeps as a
    spiking network with local STDP (module docstring).

    Args:
      sleep_steps: ``T_s`` of the first task's sleep (the authors' MNIST: 15000); 0 switches the
        sleep off (fine-tuning).
      steps_growth: task t sleeps ``round(sleep_steps · (1 + steps_growth · t))`` steps (the
        authors: 1/3, i.e. 5000 more per task).
      thresholds: the default β of each layer, output layer last (one hyperparameter
        ``beta_l`` each); their number must be the MLP's number of layers. Default: the authors'
        MNIST values for two hidden layers.
      patch: side of the random window of the mean input shown at each step (11 on MNIST's
        28×28); None: the whole mean input (flat inputs).
      statistics: ``"seen"`` (the authors: every task so far, re-read with the current weights;
        device placement) or ``"current"`` (the ending task only).
      weight_dependent: scale the STDP steps by ``g(W) = 2σ(−W/0.001)`` as the authors' code
        (False: constant steps ``inc`` / ``dec``).
      chunk_size: examples per chunk of the statistics pass.

    Hyperparameters (``hparams``): ``inc`` and ``dec`` (STDP steps), ``decay`` (membrane decay
    per step), ``input_rate`` (Hz; spike probability ``2·dt·rate·x``), ``alpha_scale`` (multiplies
    every layer's factor), ``beta_l`` (layer l's firing threshold).
    """
    betas = _check_options(sleep_steps, steps_growth, thresholds, patch, statistics, chunk_size,
                           weight_dependent)
    num_layers = len(betas)
    beta_names = tuple(f"beta_{i}" for i in range(num_layers))
    defaults = {"inc": 0.032064, "dec": 0.003344, "decay": 0.999, "input_rate": 239.515363,
                "alpha_scale": 55.882454, **dict(zip(beta_names, betas))}
    domains = {"decay": "closed_unit_interval", "alpha_scale": "positive",
               **{b: "positive" for b in beta_names}}

    def model(base: Model, spec: StreamSpec) -> Model:
        check_sleep_model(base, spec, num_layers=num_layers, patch=patch)
        return base

    def init(params, key, hparams, spec):
        del key, hparams, spec
        n = len(mlp_layers(params))
        if n != num_layers:
            raise ValueError(f"src has {num_layers} thresholds but params have {n} layers")
        return SleepState(jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32),
                          jnp.zeros((), jnp.int32))

    def end_task(ctx: BoundaryContext):
        hp = {k: jnp.asarray(get_hparam(ctx.hparams, k, "src"), jnp.float32) for k in defaults}
        layers = mlp_layers(ctx.params)
        kernels = tuple(ctx.params[n]["kernel"] for n in layers)
        mean_x, act_max = _statistics(ctx, statistics, chunk_size)
        weight_max = jnp.stack([jnp.maximum(jnp.max(k), 0.0) for k in kernels])
        scales = hp["alpha_scale"] * scale_factors(weight_max, act_max)
        lengths = jnp.asarray(sleep_lengths(sleep_steps, steps_growth, ctx.spec.num_tasks))
        steps = lengths[jnp.clip(ctx.task, 0, ctx.spec.num_tasks - 1)]

        def input_spikes(t):
            k_patch, k_spike = jax.random.split(jax.random.fold_in(ctx.key, t))
            rates = input_spike_rates(mean_x, k_patch, input_rate=hp["input_rate"], patch=patch)
            return jax.random.uniform(k_spike, rates.shape) < rates

        new, counts = spiking_sleep(kernels, input_spikes, steps, scales=scales,
                                    thresholds=jnp.stack([hp[b] for b in beta_names]),
                                    decay=hp["decay"], inc=hp["inc"], dec=hp["dec"],
                                    weight_dependent=weight_dependent)
        params = {**ctx.params, **{n: {**ctx.params[n], "kernel": k} for n, k in zip(layers, new)}}
        return params, ctx.opt_state, SleepState(scales, counts, steps)

    return Method("src", init=init, end_task=end_task, default_hparams=defaults,
                  hparam_domains=domains, model=model)


__all__ = ["src", "SleepState", "DT", "GAIN_WIDTH", "MNIST_THRESHOLDS", "STATISTICS",
           "stdp_gain", "scale_factors", "sleep_step", "spiking_sleep", "input_spike_rates",
           "mlp_layers", "layer_activations", "task_statistics", "sleep_lengths",
           "check_sleep_model"]

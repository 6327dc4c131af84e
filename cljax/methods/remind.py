"""REMIND (Hayes, Kafle, Shrestha, Acharya & Kanan 2020, ECCV, arXiv 1910.02509, "REMIND Your
Neural Network to Prevent Catastrophic Forgetting"; code ``tyler-hayes/REMIND``) as a recipe on
the method protocol.

The network is split into a lower part G, frozen after a base initialisation, and a plastic upper
part F. The lower part's output z = G(x) is product-quantised (:mod:`cljax.quantization`) with
codebooks fitted on the base data, a memory holds the codes of the examples seen, and every step
trains F on the current examples together with reconstructed ẑ = decode(codes) drawn from the
memory, with latent augmentation. In cljax terms:

* **Split** (static ``split``): ``"first_layer"`` — G is the first hidden layer of a
  :class:`cljax.nn.MLP` (z its ReLU output), F the rest; F reads ẑ in place of that layer's
  output (the layer's call intercepted, :func:`cljax.layers.is_candidate`), so the network keeps
  its parameters and wrappers (masked Task-IL). ``"input"`` — G is the identity: the stream's
  examples are z, e.g. the cached features of the frozen pre-trained encoder of van de Ven et
  al. 2022's Split CIFAR-100 (``features`` in the config, :mod:`cljax.pretrain`), the model F.
* **Base initialisation**: task 0 trains the whole network as fine-tuning (the paper trains G
  and F offline on the base classes). At its end (``end_task`` of task 0) the codebooks are
  fitted by k-means (``kmeans_iters`` Lloyd iterations from k-means++, on the device) on z of the
  task's training examples; from then on G's updates are zeroed (last in the optimizer chain,
  as PackNet freezes weights: −0.0, so G stays bitwise the same under any base optimizer).
* **Codes**: z (``[D]``) is read as ``locations`` vectors of ``D / locations`` channels (the
  paper: the 7×7 locations of a 512-channel map), each split into ``num_subvectors`` sub-vectors
  quantised with ``num_codes`` centroids; codebooks are shared by the locations (the paper: 32
  codebooks of 256 codes). A stored example is ``uint8 [locations, num_subvectors]`` and its
  label (:func:`bytes_per_example`).
* **Memory**: ``capacity`` examples. The paper stores each example's codes as it arrives and,
  when the memory is full, removes a random example of the class holding the most (the new one
  included: :func:`balanced_insert`). Here a task's examples (each once, in a random order) are
  offered at the task's end — cljax's protocols revisit a task's examples over many steps, so
  storing per step would store duplicates; replay during task t draws from tasks < t (as
  cljax's ER). The base task's examples are stored at its end, as the paper stores the base data.
* **Steps** (tasks ≥ 1): each current example comes with ``replay_samples`` replayed ones (the
  paper: 50 per new example), drawn uniformly with replacement from the memory (the paper: 50
  distinct ones per example, out of ~10⁶). With ``mixup`` (the paper's manifold mixup of the
  reconstructions), 2 × that many are drawn and mixed in pairs, ``λ·ẑ_a + (1 − λ)·ẑ_b`` with one
  λ ~ Beta(α, α) per step (hyperparameter ``mixup_alpha``, α = 0.1 in the paper's ImageNet run;
  α = 0: λ = 1) and loss ``λ·CE(y_a) + (1 − λ)·CE(y_b)`` (each term under its own example's
  task: its head in Task-IL); the current examples are not mixed. The loss is the mean over the
  current and the valid replayed examples (the paper's mean over 1 + 50). With ``grid = (H, W)``
  (z a spatial map of ``H·W = locations`` locations) every tensor F trains on, current and
  replayed, first gets a random resized crop (:func:`random_resized_crop`: the paper's area
  scale (2/7, 1) and aspect (3/4, 4/3), bilinear back to H×W); a vector z gets none.
* **Quantised inputs** (``quantize_inputs``, on as in the paper's code): from task 1 on F also
  trains on decode(encode(z)) of the current examples, and prediction (once the codebooks are
  fitted) reads decode(encode(G(x))), so F always sees the space it replays.

Switched off — ``replay_samples=0``, ``quantize_inputs=False`` and no crops — REMIND is
fine-tuning of F after a base task (exactly fine-tuning with ``split="input"``).

Cost of a step: F's forward and backward over ``B·(1 + 2·replay_samples)`` rows with mixup
(each mixed example is evaluated under both its tasks, which makes the mixup correct under
multi-head and masked Task-IL; ``B·(1 + replay_samples)`` without), and the decode of the drawn
codes. The paper's 50 replays per example make a step ≈ 100× fine-tuning's; ``replay_samples=1``
matches ER's compute (one memory example per current one).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import memory as mem
from cljax.layers import is_candidate, path_name
from cljax.memory import ReplayMemory
from cljax.methods.base import (
    BatchContext,
    BoundaryContext,
    LossContext,
    Method,
    PredictContext,
    StreamSpec,
    cross_entropy,
    current_task_batch,
    get_hparam,
)
from cljax.methods.rehearsal import with_memory_rows
from cljax.nn import MLP, Model
from cljax.quantization import INITS, MAX_CODES, fit_codebooks, pq_decode, pq_encode
from cljax.transforms.common import stateless_with_extra_args
from cljax.types import Array, Batch, Params, PRNGKey
from cljax.validation import check_choice, check_positive_int

SPLITS = ("first_layer", "input")
"""Where REMIND splits the network: after the MLP's first hidden layer, or before the model."""
LOWER = "Dense_0"
"""The parameters of G with ``split="first_layer"``: the MLP's first layer."""
CROP_SCALE = (2 / 7, 1.0)
"""The paper's random resized crop of a 7×7 map: area fraction in [2/7, 1]."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratios of the crops (torchvision's defaults, which the paper's code keeps)."""
CROP_ATTEMPTS = 10
"""Crop draws tried before the whole map is taken (torchvision's rule)."""


class RemindState(NamedTuple):
    """REMIND's method state.

    Attributes:
      codebooks: float32 ``[m, K, C/m]``, the PQ codebooks (zeros until fitted).
      fitted: bool scalar, whether they are fitted (the base task has ended).
      memory: the stored examples, ``x`` their codes ``uint8 [M, locations, m]``.
    """

    codebooks: Array
    fitted: Array
    memory: ReplayMemory


# --------------------------------------------------------------------------------------------
# Memory sizes
# --------------------------------------------------------------------------------------------

def code_shape(feature_width: int, *, locations: int = 1, num_subvectors: int) -> tuple[int, int]:
    """The shape of one stored example's codes, ``(locations, num_subvectors)``, after checking
    that a width-``feature_width`` z splits into ``locations`` vectors whose channels split into
    ``num_subvectors`` sub-vectors."""
    check_positive_int(feature_width, name="feature_width")
    check_positive_int(locations, name="locations")
    check_positive_int(num_subvectors, name="num_subvectors")
    if feature_width % locations:
        raise ValueError(f"locations ({locations}) must divide the width of z "
                         f"({feature_width}): z is read as locations × channels")
    channels = feature_width // locations
    if channels % num_subvectors:
        raise ValueError(f"num_subvectors ({num_subvectors}) must divide the channels per "
                         f"location ({channels} = {feature_width} / {locations} locations)")
    return locations, num_subvectors


def bytes_per_example(example_shape: Sequence[int], dtype: Any, *, label_bytes: int = 1) -> int:
    """Bytes one stored example takes: its array (``prod(example_shape)`` × the dtype's size)
    plus ``label_bytes`` for its label (1: a class id below 256).

    ER stores the stream's example (``(28, 28, 1)`` uint8 pixels: 785 bytes; the 1024 float32
    features of the frozen CIFAR encoder: 4097); REMIND stores its codes,
    ``code_shape(...)`` in uint8 (4 locations × 32 codebooks: 129 bytes).
    """
    try:
        shape = tuple(int(d) for d in example_shape)
    except (TypeError, ValueError):
        raise TypeError(f"example_shape must be a sequence of ints; got {example_shape!r}") \
            from None
    if any(d < 0 for d in shape):
        raise ValueError(f"example_shape must hold sizes >= 0; got {example_shape!r}")
    if not isinstance(label_bytes, (int, np.integer)) or isinstance(label_bytes, bool) \
            or label_bytes < 0:
        raise ValueError(f"label_bytes must be an int >= 0; got {label_bytes!r}")
    return math.prod(shape) * np.dtype(dtype).itemsize + int(label_bytes)


def codebook_bytes(channels: int, num_codes: int = MAX_CODES, dtype: Any = np.float32) -> int:
    """Bytes of the codebooks (stored once, beside the memory): ``num_codes`` centroids of the
    ``channels`` of a location, in all (m codebooks of K × C/m)."""
    check_positive_int(channels, name="channels")
    check_positive_int(num_codes, name="num_codes")
    return channels * num_codes * np.dtype(dtype).itemsize


# --------------------------------------------------------------------------------------------
# The memory's class-balanced replacement
# --------------------------------------------------------------------------------------------

def class_counts(memory: ReplayMemory, *, classes_per_task: int, num_classes: int) -> Array:
    """Stored examples of each class c = task · classes_per_task + label, ``int32 [C]``."""
    check_positive_int(classes_per_task, name="classes_per_task")
    check_positive_int(num_classes, name="num_classes")
    cls = jnp.clip(memory.task * classes_per_task + memory.label, 0, num_classes - 1)
    return jax.ops.segment_sum(memory.valid.astype(jnp.int32), cls, num_segments=num_classes)


def balanced_insert(memory: ReplayMemory, rows: dict[str, Array], ok: Array, key: PRNGKey, *,
                    classes_per_task: int, num_classes: int) -> ReplayMemory:
    """Offer ``rows`` (``x``, ``label``, ``task``; ``[N]``, in order; those where ``ok``) to the
    memory with REMIND's rule (Hayes et al. 2020; their ``REMINDModel.fit_incremental_batch``):
    an example goes to the next free slot while there is one; once the memory is full it is added
    and then one example of the class holding the most (the lowest class id on ties) is removed,
    uniformly at random among that class's examples — the new one included.

    A ``lax.scan`` over the rows, ``O(capacity)`` each. Class c = task · classes_per_task +
    label; ``seen`` counts the offered rows.
    """
    check_positive_int(classes_per_task, name="classes_per_task")
    check_positive_int(num_classes, name="num_classes")
    if not isinstance(memory, ReplayMemory):
        raise TypeError(f"memory must be a ReplayMemory; got {type(memory).__name__}")
    for field in ("x", "label", "task"):
        if field not in rows:
            raise KeyError(f"rows must hold 'x', 'label' and 'task'; got {sorted(rows)}")
    n = jnp.shape(rows["x"])[0] if jnp.ndim(rows["x"]) else -1
    if jnp.shape(rows["x"])[1:] != memory.x.shape[1:] or n < 0:
        raise ValueError(f"rows['x'] must have shape [N, {', '.join(map(str, memory.x.shape[1:]))}]"
                         f" (the memory's examples); got {jnp.shape(rows['x'])}")
    for field, v in (("label", rows["label"]), ("task", rows["task"]), ("ok", ok)):
        if jnp.shape(v) != (n,):
            raise ValueError(f"{field} must have shape ({n},), one per row; got {jnp.shape(v)}")
    if jnp.asarray(ok).dtype != jnp.bool_:
        raise ValueError(f"ok must be bool; got {jnp.asarray(ok).dtype}")
    m = memory.capacity
    if m == 0 or n == 0:
        return memory._replace(seen=memory.seen + jnp.sum(jnp.asarray(ok, jnp.int32)))
    k = classes_per_task
    slot_class = jnp.where(memory.valid, memory.task * k + memory.label, -1)
    counts = class_counts(memory, classes_per_task=k, num_classes=num_classes)
    stored = mem.num_stored(memory)

    def offer(carry, inp):
        x, label, task, valid, sc, counts, stored = carry
        xi, li, ti, oki, ki = inp
        c = jnp.clip(ti * k + li, 0, num_classes - 1)
        full = stored >= m
        with_new = counts.at[c].add(1)
        top = jnp.argmax(with_new)
        held = with_new[top]
        r = jax.random.randint(ki, (), 0, held)
        drop_new = full & (c == top) & (r == held - 1)
        member = sc == top
        evict = jnp.argmax(jnp.cumsum(member.astype(jnp.int32)) > r)
        slot = jnp.where(full, evict, jnp.minimum(stored, m - 1))
        write = oki & ~drop_new
        target = jnp.where(write, slot, m)                       # m: dropped by the scatter
        gone = jnp.where(full, sc[slot], -1)
        counts = counts + write * (jax.nn.one_hot(c, num_classes, dtype=jnp.int32)
                                   - jax.nn.one_hot(gone, num_classes, dtype=jnp.int32))
        put = lambda a, v: a.at[target].set(v.astype(a.dtype), mode="drop")
        return (put(x, xi), put(label, li), put(task, ti), put(valid, jnp.asarray(True)),
                put(sc, c), counts, stored + (write & ~full)), None

    keys = jax.random.split(key, n)
    init = (memory.x, memory.label, memory.task, memory.valid, slot_class, counts, stored)
    (x, label, task, valid, _, _, _), _ = jax.lax.scan(
        offer, init, (rows["x"], rows["label"], rows["task"], ok, keys))
    return ReplayMemory(x, label, task, valid, memory.logits,
                        memory.seen + jnp.sum(ok.astype(jnp.int32)))


# --------------------------------------------------------------------------------------------
# Latent augmentation: random resized crops of spatial maps
# --------------------------------------------------------------------------------------------

def resize_crop(maps: Array, top: Array, left: Array, height: Array, width: Array) -> Array:
    """Each map ``[B, H, W, C]`` cropped to rows ``top … top + height`` and columns
    ``left … left + width`` (``int [B]`` each) and resized back to H×W bilinearly, as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)``: output pixel y reads source row
    ``max(0, (y + ½)·height/H − ½)`` of the crop, between its two nearest rows."""
    if jnp.ndim(maps) != 4:
        raise ValueError(f"maps must be [B, H, W, C]; got shape {jnp.shape(maps)}")
    b = maps.shape[0]
    for name, v in (("top", top), ("left", left), ("height", height), ("width", width)):
        if jnp.shape(v) != (b,):
            raise ValueError(f"{name} must have shape ({b},), one per map; got {jnp.shape(v)}")

    def axis(start, size, out):
        src = (jnp.arange(out, dtype=maps.dtype) + 0.5) * (size.astype(maps.dtype) / out) - 0.5
        src = jnp.maximum(src, 0.0)
        i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), size - 1)
        i1 = jnp.minimum(i0 + 1, size - 1)
        return start + i0, start + i1, src - i0.astype(maps.dtype)

    def one(m, t, lft, h, w):
        H, W = m.shape[:2]
        r0, r1, wy = axis(t, h, H)
        c0, c1, wx = axis(lft, w, W)
        rows = (m[r0] * (1 - wy)[:, None, None] + m[r1] * wy[:, None, None])
        return rows[:, c0] * (1 - wx)[None, :, None] + rows[:, c1] * wx[None, :, None]

    return jax.vmap(one)(maps, top, left, height, width)


def random_resized_crop(maps: Array, key: PRNGKey, *, scale: tuple[float, float] = CROP_SCALE,
                        ratio: tuple[float, float] = CROP_RATIO,
                        attempts: int = CROP_ATTEMPTS) -> Array:
    """A random resized crop of each map ``[B, H, W, C]`` (torchvision's ``RandomResizedCrop``
    rule, which REMIND's ``utils.RandomResizeCrop`` applies to reconstructed feature maps):
    up to ``attempts`` draws of an area fraction ~ U(``scale``) and a log-uniform aspect ratio in
    ``ratio``, side lengths rounded; the first that fits gives the crop, at a uniform position;
    none fits: the whole map. Then :func:`resize_crop` back to H×W."""
    if jnp.ndim(maps) != 4:
        raise ValueError(f"maps must be [B, H, W, C]; got shape {jnp.shape(maps)}")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1; got {scale!r}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi; got {ratio!r}")
    check_positive_int(attempts, name="attempts")
    b, H, W, _ = maps.shape
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (b, attempts), minval=lo, maxval=hi) * (H * W)
    aspect = jnp.exp(jax.random.uniform(k_ratio, (b, attempts), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = jnp.argmax(fits, axis=1)
    any_fit = jnp.any(fits, axis=1)
    pick = lambda a, whole: jnp.where(any_fit, a[jnp.arange(b), first], whole)
    h, w = pick(h, H), pick(w, W)
    top = jnp.floor(jax.random.uniform(k_top, (b,)) * (H - h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, (b,)) * (W - w + 1)).astype(jnp.int32)
    return resize_crop(maps, jnp.minimum(top, H - h), jnp.minimum(left, W - w), h, w)


def mixup_lambda(key: PRNGKey, alpha: Array) -> Array:
    """Mixup's λ ~ Beta(α, α) (Zhang et al. 2018), and 1 when α = 0 (REMIND's ``mixup_data``)."""
    a = jnp.asarray(alpha, jnp.float32)
    lam = jax.random.beta(key, jnp.maximum(a, 1e-6), jnp.maximum(a, 1e-6))
    return jnp.where(a > 0, lam, 1.0)


# --------------------------------------------------------------------------------------------
# The split network
# --------------------------------------------------------------------------------------------

class Split(NamedTuple):
    """G and F of a split (see the module docstring).

    ``lower(model, params, batch) -> z [B, D]``; ``upper(model, params, z, task, key, spec) ->
    logits`` (train mode when ``key`` is given); ``width(params, spec)`` is D; ``frozen(path)``
    whether a parameter (its "/"-joined path) belongs to G.
    """

    lower: Callable[[Model, Params, Batch], Array]
    upper: Callable[..., Array]
    width: Callable[[Params, StreamSpec], int]
    frozen: Callable[[str], bool]


def input_split() -> Split:
    """G the identity: the examples are z (``split="input"``)."""
    def lower(model, params, batch):
        del model, params
        return jnp.reshape(batch["x"], (batch["x"].shape[0], -1))

    def upper(model, params, z, task, key, spec):
        b = {"x": jnp.reshape(z, (z.shape[0],) + tuple(spec.example_shape)), "task": task}
        return model.logits_fn(params, b) if key is None else model.train_logits_fn(params, b, key)

    return Split(lower, upper, lambda params, spec: math.prod(spec.example_shape),
                 lambda path: False)


def first_layer_split() -> Split:
    """G the first hidden layer of a :class:`cljax.nn.MLP`, z its ReLU output
    (``split="first_layer"``)."""
    def lower(model, params, batch):
        seen: list[Array] = []

        def capture(next_fun, args, kwargs, ctx):
            out = next_fun(*args, **kwargs)
            if not seen and is_candidate(ctx):
                seen.append(out)
            return out

        with nn.intercept_methods(capture):
            model.logits_fn(params, batch)        # the layers above are dead code under jit
        return nn.relu(seen[0])

    def upper(model, params, z, task, key, spec):
        del spec
        done: list[bool] = []

        def replace(next_fun, args, kwargs, ctx):
            if not done and is_candidate(ctx):
                done.append(True)
                return z                           # ReLU(z) = z: z ≥ 0 (a ReLU output, means,
            return next_fun(*args, **kwargs)       # mixes and crops of them)

        b = {"x": jnp.zeros((z.shape[0], 1), z.dtype), "task": task}
        with nn.intercept_methods(replace):
            return (model.logits_fn(params, b) if key is None
                    else model.train_logits_fn(params, b, key))

    def width(params, spec):
        del spec
        return int(params[LOWER]["kernel"].shape[-1])

    return Split(lower, upper, width, lambda path: path.split("/")[0] == LOWER)


def frozen_lower(split: Split) -> optax.GradientTransformationExtraArgs:
    """Zero G's updates from task 1 on (extra argument ``task``, which the trainer hands every
    update): −0.0, the exact identity of IEEE addition, so G stays bitwise what the base task
    left. Put it last in the chain."""
    def freeze(updates, params, *, task):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda p, u: (jnp.where(task > 0, jnp.asarray(-0.0, u.dtype), u)
                          if split.frozen(path_name(p)) else u), updates)

    return stateless_with_extra_args(freeze, name="remind_frozen_lower",
                                     required={"task": "the task being trained"})


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

def _check_options(split: str, capacity: Any, num_subvectors: Any, num_codes: Any,
                   locations: Any, grid: Any, kmeans_iters: Any, kmeans_init: str,
                   replay_samples: Any, flags: dict[str, Any]) -> None:
    check_choice(split, SPLITS, name="split")
    check_positive_int(capacity, name="capacity")
    check_positive_int(num_subvectors, name="num_subvectors")
    check_positive_int(num_codes, name="num_codes")
    if num_codes > MAX_CODES:
        raise ValueError(f"num_codes must be <= {MAX_CODES} (codes are stored as uint8); got "
                         f"{num_codes}")
    check_positive_int(locations, name="locations")
    if grid is not None:
        if (not isinstance(grid, (tuple, list)) or len(grid) != 2
                or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1
                           for g in grid)):
            raise ValueError(f"grid must be None or (H, W), two positive ints; got {grid!r}")
        if grid[0] * grid[1] != locations:
            raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} locations; "
                             f"locations is {locations}")
    if not isinstance(kmeans_iters, int) or isinstance(kmeans_iters, bool) or kmeans_iters < 0:
        raise ValueError(f"kmeans_iters must be an int >= 0; got {kmeans_iters!r}")
    check_choice(kmeans_init, INITS, name="kmeans_init")
    if (not isinstance(replay_samples, int) or isinstance(replay_samples, bool)
            or replay_samples < 0):
        raise ValueError(f"replay_samples must be an int >= 0 (replayed examples per current "
                         f"example); got {replay_samples!r}")
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool; got {v!r}")


def quantise_latents(z: Array, codebooks: Array, locations: int) -> Array:
    """decode(encode(z)) of latents ``z [B, D]`` read as ``locations`` vectors of ``D /
    locations`` channels, the codebooks shared by the locations (REMIND's reconstruction)."""
    if jnp.ndim(z) != 2 or jnp.shape(z)[1] % locations:
        raise ValueError(f"z must be [B, D] with D a multiple of locations={locations}; got "
                         f"shape {jnp.shape(z)}")
    zl = jnp.reshape(z, (z.shape[0], locations, -1))
    return jnp.reshape(pq_decode(pq_encode(zl, codebooks), codebooks), z.shape)


def crop_latents(z: Array, key: PRNGKey, grid: tuple[int, int]) -> Array:
    """Latents ``z [B, H·W·C]`` (location-major) as ``grid = (H, W)`` maps, each randomly
    resized-cropped back to H × W (:func:`random_resized_crop`, REMIND's latent augmentation)."""
    if jnp.ndim(z) != 2 or jnp.shape(z)[1] % (grid[0] * grid[1]):
        raise ValueError(f"z must be [B, D] with D a multiple of the grid's {grid[0]}·{grid[1]} "
                         f"locations; got shape {jnp.shape(z)}")
    maps = jnp.reshape(z, (z.shape[0], grid[0], grid[1], -1))
    return jnp.reshape(random_resized_crop(maps, key), z.shape)


def _check_split_model(base: Model, split: str) -> Model:
    """``base`` itself; with ``split="first_layer"`` it must be a plain :class:`cljax.nn.MLP`."""
    if split == "first_layer":
        module = base.module
        if type(module) is not MLP or module.feature_encoding:
            raise ValueError(
                "remind with split='first_layer' freezes the first hidden layer of a plain "
                f"cljax.nn.MLP (no feature encoding); the model is "
                f"{type(module).__name__}: use split='input' (G = identity, the examples "
                "are z), e.g. on the frozen encoder's features")
    return base


def lower_latents(parts: Split, model: Model, params: Params, batch: Batch, *,
                  frozen: Array) -> Array:
    """z = G(x) of ``batch``; where ``frozen`` (G frozen: task ≥ 1, as :func:`frozen_lower`) with
    no path for the gradient into G, in a conditional, so that the backward pass runs G's weight
    gradient only while G trains (the base task) — its update is zeroed afterwards anyway."""
    def fixed(p: Params) -> Array:
        return jax.lax.stop_gradient(parts.lower(model, p, batch))

    def trained(p: Params) -> Array:
        return parts.lower(model, p, batch)

    return jax.lax.cond(frozen, fixed, trained, params)


def replay_terms(zr: Array, rows: Any, ok: Array, label_table: Any, lam: Array | None, *,
                 num_outputs: int, shared_head: bool = False
                 ) -> tuple[list, list, list, list, Array]:
    """REMIND's replayed rows for the loss: the decoded latents ``zr`` of the drawn memory
    ``rows`` (``ok``: which are stored) as lists of latents, tasks, target distributions over
    the ``num_outputs`` logits and weights, and the number of replayed examples they count for.
    With ``lam`` (manifold mixup, Verma et al. 2019 as REMIND uses it) the draws are mixed in
    pairs ``λ·ẑ_a + (1 − λ)·ẑ_b`` and scored λ·CE(y_a) + (1 − λ)·CE(y_b): once, against the
    target λ·e_{y_a} + (1 − λ)·e_{y_b}, when every task shares one unmasked head
    (``shared_head``, Domain- and Class-IL: the logits do not depend on the task), else under
    each example's own task (its head or mask) with weights λ and 1 − λ; without ``lam``, each
    row as it is."""
    if jnp.ndim(zr) != 2 or jnp.shape(ok) != jnp.shape(zr)[:1]:
        raise ValueError(f"zr must be [M, D] latents with ok [M]; got shapes {jnp.shape(zr)} and "
                         f"{jnp.shape(ok)}")
    if lam is not None and jnp.shape(zr)[0] % 2:
        raise ValueError(f"mixup pairs the draws: zr must hold an even number of rows; got "
                         f"{jnp.shape(zr)[0]}")
    yr = jax.nn.one_hot(jnp.asarray(label_table)[rows["task"], rows["label"]], num_outputs,
                        dtype=zr.dtype)
    okf = ok.astype(zr.dtype)
    if lam is None:
        return [zr], [rows["task"]], [yr], [okf], jnp.sum(okf)
    n = zr.shape[0] // 2
    mixed = lam * zr[:n] + (1 - lam) * zr[n:]
    both = okf[:n] * okf[n:]
    if shared_head:
        return ([mixed], [rows["task"][:n]], [lam * yr[:n] + (1 - lam) * yr[n:]], [both],
                jnp.sum(both))
    return ([mixed, mixed], [rows["task"][:n], rows["task"][n:]], [yr[:n], yr[n:]],
            [lam * both, (1 - lam) * both], jnp.sum(both))


def remind_loss(params: Params, batch: Batch, s: RemindState, ctx: LossContext, *,
                parts: Split, locations: int, grid: tuple[int, int] | None,
                quantize_inputs: bool, crops: bool, replay_samples: int, mixup: bool) -> Array:
    """REMIND's loss (Hayes et al. 2020, Sec. 3): the mean cross-entropy of F over the current
    examples (their latents quantised once the codebooks exist, cropped on a grid) and the
    replayed memory examples (:func:`replay_terms`); fine-tuning's loss when nothing is replayed,
    quantised or cropped. The options are :func:`remind`'s."""
    crop_grid = grid if crops else None
    cropping = crop_grid is not None
    plain = replay_samples == 0 and not quantize_inputs and not cropping
    draws = replay_samples * (2 if mixup else 1)
    k_cur, k_rest = jax.random.split(ctx.key)
    if plain:      # fine-tuning's loss, the same numbers (task_loss)
        return cross_entropy(ctx.model.train_logits_fn(params, batch, k_cur), batch["y"])
    k_crop, k_crop_mem, k_mix, k_mem = jax.random.split(k_rest, 4)
    y_cur = batch["y"]
    b = y_cur.shape[0]
    C = ctx.spec.num_outputs
    zs, tasks, ys, weights, ce_parts = [], [], [], [], []
    if quantize_inputs or cropping:
        z = lower_latents(parts, ctx.model, params, batch, frozen=ctx.task > 0)
        if quantize_inputs:
            z = jnp.where(s.fitted, quantise_latents(z, s.codebooks, locations), z)
        if crop_grid is not None:
            z = jnp.where(s.fitted, crop_latents(z, k_crop, crop_grid), z)
        zs, tasks, ys = [z], [batch["task"]], [jax.nn.one_hot(y_cur, C, dtype=z.dtype)]
        weights = [jnp.ones((b,), z.dtype)]
    else:
        logits = ctx.model.train_logits_fn(params, batch, k_cur)
        ce_parts.append(jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                                y_cur)))
    count = jnp.asarray(b, jnp.float32)
    if draws:
        rows = batch["memory"]
        zr = jnp.reshape(pq_decode(rows["x"], s.codebooks), (rows["x"].shape[0], -1))
        if crop_grid is not None:
            zr = crop_latents(zr, k_crop_mem, crop_grid)
        lam = mixup_lambda(k_mix, get_hparam(ctx.hparams, "mixup_alpha", "remind")) \
            if mixup else None
        replayed = replay_terms(zr, rows, batch["memory_ok"], ctx.spec.label_table, lam,
                                num_outputs=C,
                                shared_head=not ctx.spec.task_dependent_logits)
        for acc, part in zip((zs, tasks, ys, weights), replayed[:4]):
            acc.extend(part)
        count = count + replayed[4]
    key = k_cur if (quantize_inputs or cropping) else k_mem
    logits = parts.upper(ctx.model, params, jnp.concatenate(zs), jnp.concatenate(tasks),
                         key, ctx.spec)
    ce = optax.softmax_cross_entropy(logits, jnp.concatenate(ys))
    ce_parts.append(jnp.sum(ce * jnp.concatenate(weights)))
    return sum(ce_parts) / count


def store_task_codes(ctx: BoundaryContext, z: Array, *, locations: int, num_subvectors: int,
                     num_codes: int, kmeans_iters: int, kmeans_init: str) -> RemindState:
    """REMIND at the end of a task: the codebooks fitted by k-means on the task's latents ``z``
    (``[N, D]``, the task's stored rows, padding weighted 0) unless fitted already (the base
    task's), then every real example's codes offered to the class-balanced memory
    (:func:`balanced_insert`) in a random order."""
    s: RemindState = ctx.mstate
    k_fit, k_order, k_insert = jax.random.split(ctx.key, 3)
    rows = ctx.task_rows(ctx.task)
    n = rows["label"].shape[0]
    if jnp.shape(z)[0] != n:
        raise ValueError(f"z must hold the task's {n} stored rows; got shape {jnp.shape(z)}")
    real = jnp.arange(n) < ctx.count(ctx.task)
    zl = jnp.reshape(z, (n * locations, -1)).astype(jnp.float32)

    def fit(_):
        return fit_codebooks(zl, k_fit, num_subvectors, num_codes, kmeans_iters,
                             weights=jnp.repeat(real.astype(jnp.float32), locations),
                             init=kmeans_init)

    codebooks = jax.lax.cond(s.fitted, lambda _: s.codebooks, fit, None)
    codes = pq_encode(jnp.reshape(zl, (n, locations, -1)), codebooks)
    order = jax.random.permutation(k_order, n)
    memory = balanced_insert(
        s.memory, {"x": codes[order], "label": rows["label"][order],
                   "task": rows["task"][order]},
        real[order], k_insert, classes_per_task=ctx.spec.classes_per_task,
        num_classes=ctx.spec.num_classes)
    return RemindState(codebooks, jnp.ones((), bool), memory)


def remind(*, split: str = "first_layer", capacity: int = 10_000, num_subvectors: int = 32,
           num_codes: int = 256, locations: int = 1, grid: tuple[int, int] | None = None,
           kmeans_iters: int = 20, kmeans_init: str = "kmeans++", replay_samples: int = 50,
           mixup: bool = True, crops: bool = True, quantize_inputs: bool = True) -> Method:
    """REMIND (Hayes et al. 2020): a frozen lower network G after the base task, product-quantised
    codes of z = G(x) in a class-balanced memory, and F trained on each batch with
    ``replay_samples`` reconstructed, mixed (and, for spatial maps, cropped) memory examples per
    current example (module docstring).

    Options: ``split`` ("first_layer": G the MLP's first hidden layer; "input": G the identity,
    the stream's examples are z), ``capacity`` (examples; at most the stream's), the PQ's
    ``num_subvectors`` per location, ``num_codes`` (≤ 256) and ``locations`` (z read as
    ``locations`` × channels), ``grid`` ((H, W) of the locations: crops apply), ``kmeans_iters``
    / ``kmeans_init``, ``mixup``, ``crops``, ``quantize_inputs``. Hyperparameter ``mixup_alpha``
    (0.1, the paper's ImageNet run). ``replay_samples=0, quantize_inputs=False, crops=False`` is
    fine-tuning of F after the base task.
    """
    _check_options(split, capacity, num_subvectors, num_codes, locations, grid, kmeans_iters,
                   kmeans_init, replay_samples, {"mixup": mixup, "crops": crops,
                                                 "quantize_inputs": quantize_inputs})
    parts = input_split() if split == "input" else first_layer_split()
    draws = replay_samples * (2 if mixup else 1)

    def channels(params, spec) -> int:
        width = parts.width(params, spec)
        code_shape(width, locations=locations, num_subvectors=num_subvectors)
        return width // locations

    def check_model(base: Model, spec: StreamSpec) -> Model:
        del spec
        return _check_split_model(base, split)

    def init(params, key, hparams, spec: StreamSpec) -> RemindState:
        del key, hparams
        c = channels(params, spec)
        total = sum(spec.train_counts) if spec.train_counts else capacity
        memory = mem.init_memory(min(capacity, total), (locations, num_subvectors), jnp.uint8)
        return RemindState(jnp.zeros((num_subvectors, num_codes, c // num_subvectors),
                                     jnp.float32), jnp.zeros((), bool), memory)

    def batch(ctx: BatchContext, s: RemindState):
        if draws == 0:
            return current_task_batch(ctx, s)
        return with_memory_rows(ctx, s.memory, draws * ctx.batch_size)

    def loss(params, batch: Batch, s: RemindState, ctx: LossContext):
        return remind_loss(params, batch, s, ctx, parts=parts, locations=locations, grid=grid,
                           quantize_inputs=quantize_inputs, crops=crops,
                           replay_samples=replay_samples, mixup=mixup), {}

    def make_optimizer(hparams, base):
        del hparams
        if split == "input":
            return base
        return optax.chain(optax.with_extra_args_support(base), frozen_lower(parts))

    def end_task(ctx: BoundaryContext):
        z = parts.lower(ctx.model, ctx.params, ctx.to_batch(ctx.task_rows(ctx.task)))
        return ctx.keep_params(store_task_codes(
            ctx, z, locations=locations, num_subvectors=num_subvectors, num_codes=num_codes,
            kmeans_iters=kmeans_iters, kmeans_init=kmeans_init))

    def predict(params, s: RemindState, batch: Batch, ctx: PredictContext):
        z = parts.lower(ctx.model, params, batch)
        z = jnp.where(s.fitted, quantise_latents(z, s.codebooks, locations), z)
        return parts.upper(ctx.model, params, z, batch["task"], None, ctx.spec)

    return Method("remind", make_optimizer=make_optimizer, init=init, batch=batch, loss=loss,
                  end_task=end_task, predict=predict if quantize_inputs else None,
                  default_hparams={"mixup_alpha": 0.1}, model=check_model)


__all__ = ["SPLITS", "LOWER", "CROP_SCALE", "CROP_RATIO", "CROP_ATTEMPTS", "RemindState",
           "code_shape", "bytes_per_example", "codebook_bytes", "class_counts",
           "balanced_insert", "resize_crop", "random_resized_crop", "mixup_lambda", "Split",
           "frozen_lower", "lower_latents", "quantise_latents", "crop_latents", "store_task_codes",
           "replay_terms", "remind_loss", "remind", "input_split", "first_layer_split"]

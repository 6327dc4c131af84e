"""Task streams: split, permuted and rotated versions of an image-classification dataset.

A stream is stored as arrays with a leading task axis, padded to the largest task, so every task
has the same shapes and nothing recompiles when training moves from one task to the next:

* ``x``: ``uint8 [T, N, *input_shape]`` (raw pixels; normalised when a batch is drawn),
* ``y``: ``int32 [T, N]``, the label *within* the task (0..k-1),
* ``n``: ``int32 [T]``, how many of the ``N`` rows of each task are real examples.

``classes[t]`` names the class identities of task t (the original labels for a split stream,
``10·t + digit`` for permuted/rotated streams, whose tasks hold new classes in class-IL).
Scenarios (:mod:`cljax.data.scenarios`) decide what label the model sees.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from cljax.data.sources import ArrayDataset, load_split
from cljax.types import Array
from cljax.validation import check_choice, check_positive_int

# Per-channel (mean, std) applied after scaling pixels to [0, 1].
Normalisation = tuple[tuple[float, ...], tuple[float, ...]]
NORMALISATION: dict[str, Normalisation] = {
    # van de Ven & Tolias 2019 feed MNIST pixels in [0, 1] without standardisation.
    "mnist": ((0.0,), (1.0,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def check_normalisation(normalisation: Any, channels: int) -> Normalisation:
    """``normalisation`` as ``((mean…), (std…))`` tuples of floats, one value per channel or one
    for all (a stream's inputs are ``(pixels / 255 − mean) / std``); a ValueError names what is
    wrong (not a pair, lengths that differ or match neither 1 nor ``channels``, a value that is
    not finite, a std ≤ 0)."""
    try:
        mean, std = normalisation
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(f"normalisation must be a pair ((mean, ...), (std, ...)) of numbers; "
                         f"got {normalisation!r}") from None
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(f"normalisation needs one mean and one std for all channels or one "
                         f"per channel ({channels}); got {len(mean)} means and {len(std)} stds")
    if not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise ValueError(f"normalisation's means must be finite and its stds finite and > 0; "
                         f"got mean {mean}, std {std}")
    return mean, std


class TaskArrays(NamedTuple):
    """Stacked per-task examples of one split (a pytree: pass it into jitted functions; host
    numpy arrays as built, device arrays once placed)."""

    x: np.ndarray | Array
    y: np.ndarray | Array
    n: np.ndarray | Array


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """A sequence of tasks: train and test arrays plus what each task's classes are."""

    name: str
    train: TaskArrays
    test: TaskArrays
    classes: tuple[tuple[int, ...], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[2:])

    def __post_init__(self):
        mean, std = check_normalisation((self.mean, self.std), self.train.x.shape[-1])
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        for split in ("train", "test"):
            arr = getattr(self, split)
            if arr.x.shape[:2] != arr.y.shape or arr.n.shape != (len(self.classes),):
                raise ValueError(f"{split} arrays disagree: x {arr.x.shape}, y {arr.y.shape}, "
                                 f"n {arr.n.shape} for {len(self.classes)} tasks")


def _stack_tasks(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> TaskArrays:
    n = np.array([len(y) for _, y in parts], dtype=np.int32)
    if n.min() == 0:
        raise ValueError(f"every task needs at least one example; counts are {n.tolist()}")
    width = int(n.max())
    x = np.zeros((len(parts), width) + parts[0][0].shape[1:], dtype=parts[0][0].dtype)
    y = np.zeros((len(parts), width), dtype=np.int32)
    for t, (xt, yt) in enumerate(parts):
        x[t, :len(yt)] = xt
        y[t, :len(yt)] = yt
    return TaskArrays(x, y, n)


def _limit(x: np.ndarray, y: np.ndarray, limit: int | None):
    return (x, y) if limit is None else (x[:limit], y[:limit])


def split_tasks(train: ArrayDataset, test: ArrayDataset, *,
                tasks: Sequence[Sequence[int]] | None = None, name: str = "split",
                normalisation: Normalisation = ((0.0,), (1.0,)), max_train_per_task: int | None = None,
                max_test_per_task: int | None = None,
                class_order: int | None = None, pad_to: int | None = None) -> TaskStream:
    """Split a dataset by class (Zenke et al. 2017; van de Ven & Tolias 2019).

    ``tasks`` partitions (a subset of) the classes, e.g. ``[[0, 1], [2, 3], ...]``; the default
    is consecutive pairs (5×2 for MNIST). Task t's within-task label is the class's position in
    ``tasks[t]``. ``class_order``: None keeps ``tasks`` as given; an int permutes the classes
    they name (``np.random.default_rng(class_order).permutation``) and deals them back into
    tasks of the same sizes — van de Ven's code draws a class order per seed this way.
    ``pad_to``: zero-pad the images to ``pad_to``×``pad_to`` before any normalisation (Hsu et
    al. 2018's code pads MNIST to 32×32 and then standardises it); None keeps their size.
    """
    if class_order is not None:
        if not isinstance(class_order, int) or isinstance(class_order, bool):
            raise ValueError(f"class_order must be None or an int (the seed of the class "
                             f"order); got {class_order!r}")
        given = tasks if tasks is not None else [[c, c + 1]
                                                 for c in range(0, train.num_classes, 2)]
        flat_given = [int(c) for t in given for c in t]
        order = iter(np.random.default_rng(class_order).permutation(flat_given).tolist())
        tasks = [[next(order) for _ in t] for t in given]
    if tasks is None:
        if train.num_classes % 2:
            raise ValueError(f"default split is into pairs; {train.num_classes} classes is odd: "
                             "pass tasks=")
        tasks = [[c, c + 1] for c in range(0, train.num_classes, 2)]
    tasks = [tuple(int(c) for c in t) for t in tasks]
    flat = [c for t in tasks for c in t]
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of non-empty class lists; got {tasks}")
    if len(set(flat)) != len(flat):
        raise ValueError(f"tasks must not share classes; got {tasks}")
    if min(flat) < 0 or max(flat) >= train.num_classes:
        raise ValueError(f"tasks name classes outside [0, {train.num_classes}): {tasks}")

    def build(data: ArrayDataset, limit):
        parts = []
        for t in tasks:
            lookup = np.full(data.num_classes, -1, dtype=np.int32)
            lookup[list(t)] = np.arange(len(t))
            keep = lookup[data.labels] >= 0
            parts.append(_limit(_pad_images(data.images[keep], pad_to),
                                lookup[data.labels[keep]], limit))
        return _stack_tasks(parts)

    return TaskStream(name, build(train, max_train_per_task), build(test, max_test_per_task),
                      tuple(tuple(t) for t in tasks), *normalisation)


def _pad_images(images: np.ndarray, pad_to: int | None) -> np.ndarray:
    if pad_to is None:
        return images
    check_positive_int(pad_to, name="pad_to")
    h, w = images.shape[1:3]
    if pad_to < max(h, w):
        raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}×{w})")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return np.pad(images, ((0, 0), (top, pad_to - h - top), (left, pad_to - w - left), (0, 0)))


def permutations(num_tasks: int, dim: int, *, seed: int, permute_first: bool = True) -> np.ndarray:
    """One fixed pixel permutation per task, ``int [num_tasks, dim]``, reproducible from ``seed``.

    With ``permute_first=False`` task 0 keeps the identity (the original images), as in Zenke et
    al. 2017; van de Ven & Tolias 2019 permute every task, the first included.
    """
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(dim) for _ in range(num_tasks)])
    if not permute_first:
        perms[0] = np.arange(dim)
    return perms


def permuted_tasks(train: ArrayDataset, test: ArrayDataset, *, num_tasks: int = 10,
                   seed: int = 0, pad_to: int | None = 32, permute_first: bool = True,
                   name: str = "permuted", normalisation: Normalisation = ((0.0,), (1.0,)),
                   max_train_per_task: int | None = None,
                   max_test_per_task: int | None = None) -> TaskStream:
    """Permuted tasks (Goodfellow et al. 2013; protocol of van de Ven & Tolias 2019).

    Images are zero-padded to ``pad_to``×``pad_to`` (32 in van de Ven's protocol; None keeps the
    size), flattened, and task t applies permutation t to the pixels. ``x`` is stored flat
    ``[T, N, pad_to²·C]``. Every task has all classes; class identities are ``t·C + label``.
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1; got {num_tasks}")
    flat_train = _pad_images(train.images, pad_to).reshape(len(train.labels), -1)
    flat_test = _pad_images(test.images, pad_to).reshape(len(test.labels), -1)
    perms = permutations(num_tasks, flat_train.shape[1], seed=seed, permute_first=permute_first)
    tr = _stack_tasks([_limit(flat_train[:, p], train.labels, max_train_per_task) for p in perms])
    te = _stack_tasks([_limit(flat_test[:, p], test.labels, max_test_per_task) for p in perms])
    k = train.num_classes
    classes = tuple(tuple(range(t * k, (t + 1) * k)) for t in range(num_tasks))
    return TaskStream(name, tr, te, classes, *normalisation)


def rotate_images(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotate ``uint8 [N, H, W, C]`` images by ``angle`` degrees (counter-clockwise) about their
    centre, bilinear, zero outside, same size."""
    from scipy import ndimage

    out = ndimage.rotate(images.astype(np.float32), angle, axes=(2, 1), reshape=False, order=1,
                         mode="constant", cval=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mirzadeh_rotation_angles(num_tasks: int, *, seed: int = 0) -> np.ndarray:
    """Angles of Mirzadeh et al. 2020's rotated MNIST: task t (1-based) is rotated by
    (t−1)·10° − U(0, 10)°, one draw per task."""
    rng = np.random.default_rng(seed)
    return np.array([(t * 10.0) - rng.uniform(0.0, 10.0) for t in range(num_tasks)])


def rotated_tasks(train: ArrayDataset, test: ArrayDataset, *, angles: Sequence[float],
                  name: str = "rotated", normalisation: Normalisation = ((0.0,), (1.0,)),
                  max_train_per_task: int | None = None,
                  max_test_per_task: int | None = None) -> TaskStream:
    """One task per angle: all images rotated by ``angles[t]`` degrees. Class identities are
    ``t·C + label``, as for permuted tasks."""
    angles = [float(a) for a in angles]
    if not angles or not all(np.isfinite(angles)):
        raise ValueError(f"angles must be a non-empty list of finite degrees; got {angles}")
    tr = _stack_tasks([_limit(rotate_images(train.images[:max_train_per_task], a),
                              train.labels[:max_train_per_task], None) for a in angles])
    te = _stack_tasks([_limit(rotate_images(test.images[:max_test_per_task], a),
                              test.labels[:max_test_per_task], None) for a in angles])
    k = train.num_classes
    classes = tuple(tuple(range(t * k, (t + 1) * k)) for t in range(len(angles)))
    return TaskStream(name, tr, te, classes, *normalisation)


STREAM_KINDS = ("split", "permuted", "rotated")
EVALUATION_SPLITS = ("test", "validation")


def carve_validation(train: ArrayDataset, fraction: float) -> tuple[ArrayDataset, ArrayDataset]:
    """(training, validation) carved from a training split: of every class, the last
    ``ceil(fraction · n_c)`` examples in the split's order are the validation examples (a
    stratified, deterministic hold-out), the others stay for training, in their order."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) \
            or not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be a number in (0, 1); got {fraction!r}")
    labels = np.asarray(train.labels)
    held = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = int(np.ceil(fraction * rows.size))
        if k >= rows.size:
            raise ValueError(f"validation_fraction {fraction} leaves class {int(c)} (of "
                             f"{rows.size} examples) nothing to train on")
        held[rows[rows.size - k:]] = True
    keep = ~held
    return (ArrayDataset(train.images[keep], labels[keep], train.num_classes),
            ArrayDataset(train.images[held], labels[held], train.num_classes))


def load_stream(dataset: str, kind: str, *, data_dir: str | os.PathLike | None = None,
                evaluate_on: str = "test", validation_fraction: float = 0.1,
                **options: Any) -> TaskStream:
    """Load ``dataset`` from tfds and build a ``kind`` stream ('split', 'permuted', 'rotated');
    ``options`` go to :func:`split_tasks`, :func:`permuted_tasks` or :func:`rotated_tasks`.

    ``evaluate_on="validation"``: the stream's evaluation examples are a validation split carved
    from the training split (:func:`carve_validation`, ``validation_fraction`` of every class),
    trained on no more; the test split is never read — how hyperparameters are chosen without
    looking at the test set."""
    builders: dict[str, Callable[..., TaskStream]] = {
        "split": split_tasks, "permuted": permuted_tasks, "rotated": rotated_tasks}
    if kind not in builders:
        raise ValueError(f"stream kind must be one of {STREAM_KINDS}; got {kind!r}")
    check_choice(evaluate_on, EVALUATION_SPLITS, name="evaluate_on")
    train = load_split(dataset, "train", data_dir=data_dir)
    if evaluate_on == "validation":
        train, test = carve_validation(train, validation_fraction)
    else:
        test = load_split(dataset, "test", data_dir=data_dir)
    options.setdefault("normalisation", NORMALISATION.get(dataset, ((0.0,), (1.0,))))
    return builders[kind](train, test, name=f"{kind}_{dataset}", **options)


__all__ = ["TaskArrays", "TaskStream", "NORMALISATION", "STREAM_KINDS", "check_normalisation",
           "split_tasks",
           "permuted_tasks", "rotated_tasks", "permutations", "rotate_images",
           "mirzadeh_rotation_angles", "EVALUATION_SPLITS", "carve_validation", "load_stream"]

"""Run a configured CL experiment end to end: build → run → summarise.

A config is a plain dict (see ``cljax/configs/*.py``, each with ``get_config()``). The keys:

``dataset`` (tfds name), ``stream`` ('split' | 'permuted' | 'rotated'), ``stream_options`` (kwargs
of the stream builder), ``features`` (None, or ``{"pretrain": {...}, "cache_dir": ...}``: replace
every image by the features of a frozen encoder pre-trained once and cached,
:mod:`cljax.pretrain`), ``scenarios`` (subset of 'task', 'domain', 'class'), ``model``
(``{'kind': <a name of MODELS>, ...its keyword arguments}``), ``optimizer`` (``{'name': <any
optax optimizer, e.g. 'adam', 'sgd', 'adamw'>, 'learning_rate': ..., ...its keyword arguments}``,
plus ``task_decay`` / ``min_learning_rate``), ``steps`` (per task), ``batch_size``, ``method``,
``method_options`` (the method's static settings, e.g. ``{"fisher": "true"}``,
``{"per_class": 100}``), ``hparams`` (the method's hyperparameters, scalars), ``sweep``
(``{name: [values]}``: every combination × every seed runs as one vmapped program), ``seeds``,
``seed``, ``eval_chunk``, ``reset_optimizer``, ``data_dir``, ``epochs`` (if set, replaces
``steps``: epochs over the largest task's training set; with ``epochs_over="each_task"`` each
task trains ``epochs`` passes over its own examples and its steps past them change nothing,
:meth:`cljax.training.Trainer.own_steps`), ``sampling`` (``"iid"``, the
default; ``"shuffled"``: an epoch is one shuffled pass over the task's own examples;
``"shuffled_drop_last"``, :mod:`cljax.training.sampling`), ``augment`` (``"none"``, the
default, or ``"crop_flip"``: each training batch's normalised images randomly cropped from a
4-pixel zero padding and flipped, :mod:`cljax.data.augment`), ``task_heads`` (``"separate"``: a
head per task in Task-IL, the default; ``"masked"``: one head over every class with the other
tasks' classes masked, :func:`cljax.data.make_scenario`), ``metric_from_task`` (k, default 0:
the metrics (ACC, BWT, forgetting, FWT, …) count tasks k… only, over the accuracy matrix's
block ``R[k:, k:]`` — A-GEM's protocol trains its first tasks for cross-validation and reports
the others; the whole matrix is kept in the results), ``evaluate_on`` (``"test"``, or
``"validation"``: evaluate on ``validation_fraction`` (default 0.1) of every class carved from
the training split and never read the test split — how a sweep chooses hyperparameters,
:func:`cljax.data.carve_validation`), ``analysis`` (None or ``"flatness"``:
keep θ*_t and report λ_max per task and the forgetting bound, see :mod:`cljax.analysis`),
``analysis_options``, ``regime`` (the record of the named training regime the config was put
under, ``{"name": "stable_sgd", **options}``, :mod:`cljax.regimes`; absent: none) and
``regimes`` (``{name: {dotted.key: value}}`` or ``{name: "stable_sgd"}``, a named regime: run
the experiment once per regime, e.g. Mirzadeh et al.'s "naive" and "stable" training regimes,
and report them side by side).

Scale-out keys, optional (absent: the defaults, and the config is unchanged): ``data_placement``
(``"auto"`` | ``"device"`` | ``"host"``: the whole stream on the device, or kept on the host and
fed in chunks, :mod:`cljax.data.pipeline`; ``"auto"`` chooses by size), ``device_memory_cap``
(bytes; the cap ``"auto"`` compares the stream with, default half the device's memory) and
``batch_devices`` (devices per run along the mesh's batch axis, default 1). The devices
themselves are not part of the config: :func:`run_experiment`'s ``devices`` (``cljax run
--devices N``; default all of them) shards the runs over a :func:`cljax.sharding.make_mesh`
mesh when there are several.

The three stages are public: :func:`build_scenario` (stream, scenario, model, method, trainer
and device data), :func:`run_scenario` (the vmapped runs) and :func:`summarise_scenario` (the
results entry); :func:`run_experiment` chains them over the config's scenarios.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import itertools
import json
import math
import pathlib
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from cljax import events, metrics
from cljax.checkpoint import Checkpointer, CheckpointMismatchError
from cljax.config import OPTIONAL_KEYS, apply_override
from cljax.data import (
    EVALUATION_SPLITS,
    SCENARIOS,
    STREAM_KINDS,
    TASK_HEADS,
    TaskArrays,
    TaskStream,
    load_stream,
    make_scenario,
    permuted_tasks,
    rotated_tasks,
    split_tasks,
)
from cljax.data.augment import AUGMENTATIONS
from cljax.methods import Method, get_method
from cljax.methods.base import ConfigPlan, check_hparam, check_scenario
from cljax.nn import CNN, MLP, AlexNet, ResNet18, as_model
from cljax.nn.model import Model
from cljax.regimes import check_regime_record, regime_overrides
from cljax.training import (
    SAMPLINGS,
    StreamData,
    StreamResult,
    Trainer,
    make_batch,
    make_trainer,
    prepare_data,
    run_stream,
)
from cljax.training.loop import call_length
from cljax.transforms import scale_by_task_decay
from cljax.types import Params
from cljax.validation import check_choice, check_positive_int
from cljax.workdir import (
    IGNORED_ON_RESUME,
    RESULT_FILE,
    STATE_DIR,
    describe_mismatch,
    to_strict_json,
    write_text_atomic,
)

REQUIRED_KEYS = ("dataset", "stream", "scenarios", "model", "optimizer", "steps", "batch_size",
                 "method", "seeds")

MODELS: dict[str, Callable[..., Any]] = {"mlp": MLP, "cnn": CNN, "alexnet": AlexNet,
                                          "resnet18": ResNet18}
"""Model kinds of the config's ``model`` entry: flax modules built as
``MODELS[kind](num_outputs=..., num_heads=..., **rest)`` (lists become tuples)."""


# --------------------------------------------------------------------------------------------
# Config validation (overrides: cljax.config.apply_override)
# --------------------------------------------------------------------------------------------

def _positive_number(value: Any, what: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{what} must be a positive finite number; got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_regimes(cfg: dict) -> None:
    """The config's ``regime`` record (if any) is a known regime's, and its ``regimes`` a dict
    whose named regimes become their dotted keys (:mod:`cljax.regimes`), in place."""
    if cfg.get("regime") is not None:
        check_regime_record(cfg["regime"])
    if not isinstance(cfg["regimes"], dict):
        raise ValueError(f"config['regimes'] must be a dict {{name: regime}}; got "
                         f"{cfg['regimes']!r}")
    cfg["regimes"] = {name: regime_overrides(value) for name, value in cfg["regimes"].items()}


EPOCHS_OVER = ("largest_task", "each_task")
"""What ``config["epochs"]`` counts passes over (``config["epochs_over"]``): the largest task's
examples, or each task's own (:meth:`cljax.training.Trainer.own_steps`)."""


def _check_protocol_knobs(cfg: dict) -> None:
    """The optional protocol keys: ``sampling``, ``task_heads``, ``metric_from_task``,
    ``epochs_over``, ``augment``."""
    check_choice(cfg.get("augment", "none"), AUGMENTATIONS, name="config['augment']")
    check_choice(cfg.get("sampling", "iid"), SAMPLINGS, name="config['sampling']")
    check_choice(cfg.get("task_heads", "separate"), TASK_HEADS, name="config['task_heads']")
    _check_metric_from_task(cfg)
    over = cfg.get("epochs_over", "largest_task")
    check_choice(over, EPOCHS_OVER, name="config['epochs_over']")
    if over == "each_task" and cfg.get("epochs") is None:
        raise ValueError("config['epochs_over']='each_task' counts config['epochs'] over each "
                         "task's own examples: set epochs")


def _check_metric_from_task(cfg: dict) -> None:
    """``config['metric_from_task']``: an int k >= 0, below the stream's number of tasks when the
    config fixes it (else checked once the stream is loaded, :func:`metric_block`)."""
    k = cfg.get("metric_from_task", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"config['metric_from_task'] must be an int >= 0 (the first task the "
                         f"metrics count); got {k!r}")
    num_tasks = stream_outline(cfg).num_tasks if k else None
    if num_tasks is not None and k >= num_tasks:
        raise ValueError(f"config['metric_from_task'] is {k}, but the stream has {num_tasks} "
                         f"tasks: it must be below {num_tasks}")


def metric_block(cfg: dict, R: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of the accuracy (or loss) matrices ``R [..., T, T]`` and baselines ``b [..., T]``
    the metrics count: tasks ``config['metric_from_task']`` (k) onwards, ``R[..., k:, k:]``."""
    k = cfg.get("metric_from_task", 0)
    T = R.shape[-1]
    if k >= T:
        raise ValueError(f"config['metric_from_task'] is {k}, but the stream has {T} tasks: it "
                         f"must be below {T}")
    return R[..., k:, k:], b[..., k:]


def validate_config(config: dict) -> dict:
    """Check a config's keys and values; return a normalised deep copy.

    Everything is checked before any data is loaded: the keys and their types, the method and
    its static options, every hyperparameter and every swept value against the method's
    domains (``Method.hparam_domains``), the stream's kind and options, the model and the
    optimizer, and — for every scenario of the config — that the method supports it
    (``Method.scenarios``) and accepts the run (``Method.check`` of :func:`config_plan`, which
    reads the dataset's metadata, not its images)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise KeyError(f"config is missing {missing}")
    cfg = copy.deepcopy(config)
    for key in ("hparams", "method_options", "sweep", "stream_options", "model", "optimizer"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise ValueError(f"config[{key!r}] must be a dict; got {cfg[key]!r}")
    for key, default in OPTIONAL_KEYS.items():
        if key not in UNFILLED_KEYS:
            cfg.setdefault(key, copy.deepcopy(default))
    _check_protocol_knobs(cfg)
    _check_regimes(cfg)
    if cfg["analysis"] not in (None, "flatness"):
        raise ValueError(f"config['analysis'] must be None or 'flatness'; got {cfg['analysis']!r}")
    if isinstance(cfg["scenarios"], str):
        cfg["scenarios"] = [s.strip() for s in cfg["scenarios"].split(",")]
    cfg["scenarios"] = list(cfg["scenarios"])
    bad = [s for s in cfg["scenarios"] if s not in SCENARIOS]
    if bad or not cfg["scenarios"]:
        raise ValueError(f"scenarios must be a non-empty subset of {SCENARIOS}; got {cfg['scenarios']}")
    for key in ("steps", "batch_size", "seeds", "eval_chunk"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be a positive int; got {cfg[key]!r}")
    if cfg["epochs"] is not None:
        _positive_number(cfg["epochs"], "config['epochs']")
    check_choice(cfg["evaluate_on"], EVALUATION_SPLITS, name="config['evaluate_on']")
    f = cfg["validation_fraction"]
    if not _number(f) or not 0.0 < f < 1.0:
        raise ValueError(f"config['validation_fraction'] must be a number in (0, 1); got {f!r}")
    limit = cfg["max_state_bytes"]
    if limit is not None and (not _number(limit) or limit < 1):
        raise ValueError(f"config['max_state_bytes'] must be None or a positive number of bytes; "
                         f"got {limit!r}")
    method = get_method(cfg["method"], **cfg["method_options"])  # raises on unknown names
    known = set(method.default_hparams)
    for source in ("hparams", "sweep"):
        unknown = set(cfg[source]) - known
        if unknown:
            raise ValueError(f"config[{source!r}] names {sorted(unknown)}, which method "
                             f"{cfg['method']!r} does not take; its hyperparameters are "
                             f"{sorted(known) or 'none'}")
    for name, values in cfg["sweep"].items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"config['sweep'][{name!r}] must be a non-empty list; got {values!r}")
        for v in values:
            if not _number(v):
                raise ValueError(f"config['sweep'][{name!r}] values must be finite numbers; got "
                                 f"{v!r}")
            check_hparam(method, name, v, label=f"config['sweep'][{name!r}] value")
    for name, v in cfg["hparams"].items():
        if not _number(v):
            raise ValueError(f"config['hparams'][{name!r}] must be a finite number; got {v!r}")
        check_hparam(method, name, v, label=f"config['hparams'][{name!r}]")
    _check_stream(cfg)
    scale_options(cfg)                                        # raises on bad scale-out keys
    make_model(cfg["model"], num_outputs=2, num_heads=1)      # raises on bad models
    make_optimizer(cfg["optimizer"])
    if cfg["features"] is not None:
        _features_config(cfg["features"])
    for scenario in cfg["scenarios"]:
        check_scenario(method, scenario)
        method.check(config_plan(cfg, scenario))
    return cfg


_STREAM_BUILDERS: dict[str, Callable[..., TaskStream]] = {
    "split": split_tasks, "permuted": permuted_tasks, "rotated": rotated_tasks}


def _check_stream(cfg: dict) -> None:
    """The stream's kind and the names of its options (their values are the builder's)."""
    check_choice(cfg["stream"], STREAM_KINDS, name="config['stream']")
    builder = _STREAM_BUILDERS[cfg["stream"]]
    accepted = [n for n, p in inspect.signature(builder).parameters.items()
                if p.kind == p.KEYWORD_ONLY and n != "name"]
    unknown = sorted(set(cfg["stream_options"]) - set(accepted))
    if unknown:
        raise ValueError(f"config['stream_options'] names {unknown}, which a {cfg['stream']!r} "
                         f"stream does not take; its options are {accepted}")
    if cfg["stream"] == "rotated" and "angles" not in cfg["stream_options"]:
        raise ValueError("a 'rotated' stream needs config['stream_options']['angles'] (one angle "
                         "in degrees per task)")


_METADATA: dict[tuple[str, str | None], tuple[int, int]] = {}


def dataset_metadata(name: str, data_dir: str | None = None) -> tuple[int | None, int | None]:
    """``(classes, training examples)`` of tfds dataset ``name`` from its metadata (the
    builder's info; no example is read), each None when unknown (e.g. not prepared). Complete
    answers are cached per dataset and data dir (``data_dir``, else ``$TFDS_DATA_DIR``)."""
    from cljax.data import resolve_data_dir

    where = resolve_data_dir(data_dir)
    if (name, where) in _METADATA:
        return _METADATA[(name, where)]
    try:
        import tensorflow_datasets as tfds

        info = tfds.builder(name, data_dir=where).info
    except Exception:
        return None, None
    out = []
    for read in (lambda: info.features["label"].num_classes,
                 lambda: info.splits["train"].num_examples):
        try:
            value = int(read())
        except Exception:
            value = 0
        out.append(value if value > 0 else None)
    num_classes, train_examples = out
    if num_classes is not None and train_examples is not None:
        _METADATA[(name, where)] = (num_classes, train_examples)
    return num_classes, train_examples


class StreamOutline(NamedTuple):
    """What a config's stream will be, known before it is loaded (None: not known)."""

    num_tasks: int | None
    classes_per_task: int | None
    train_examples: int | None


def stream_outline(cfg: dict) -> StreamOutline:
    """The tasks, classes per task and training examples of a (validated) config's stream, from
    its options and the dataset's metadata (:func:`dataset_metadata`); the examples only when
    they are known exactly (a split stream of a subset of the classes, or with
    ``max_train_per_task``, counts its classes' examples: None)."""
    options = cfg["stream_options"]
    classes, examples = dataset_metadata(cfg["dataset"], cfg["data_dir"])
    limit = options.get("max_train_per_task")
    if cfg["stream"] == "split":
        tasks = options.get("tasks")
        if tasks is None:
            if classes is None or classes % 2:
                return StreamOutline(None, None, None)   # odd: the stream builder refuses it
            tasks = [[c, c + 1] for c in range(0, classes, 2)]
        try:
            flat = sorted(int(c) for t in tasks for c in t)
            sizes = [len(t) for t in tasks]
        except (TypeError, ValueError):
            return StreamOutline(None, None, None)   # the stream builder names the error
        whole = classes is not None and flat == list(range(classes)) and limit is None
        return StreamOutline(len(sizes), max(sizes, default=0) or None,
                             examples if whole else None)
    if cfg["stream"] == "permuted":
        num_tasks = options.get("num_tasks", inspect.signature(permuted_tasks).parameters[
            "num_tasks"].default)
    else:
        num_tasks = len(options.get("angles") or []) or None
    per_task = None if examples is None else (examples if limit is None else
                                              min(examples, int(limit)))
    return StreamOutline(num_tasks, classes,
                         None if per_task is None or num_tasks is None else num_tasks * per_task)


def config_plan(cfg: dict, scenario: str) -> ConfigPlan:
    """The :class:`~cljax.methods.base.ConfigPlan` of ``scenario`` of a (validated) config —
    what ``Method.check`` sees before any data is loaded."""
    outline = stream_outline(cfg)
    return ConfigPlan(scenario, outline.num_tasks, outline.classes_per_task,
                      outline.train_examples, dict(cfg["optimizer"]), cfg["steps"],
                      cfg["batch_size"])


SCALE_KEYS = ("data_placement", "device_memory_cap", "batch_devices")
"""The optional scale-out keys: absent, the defaults apply and the config is unchanged."""

UNFILLED_KEYS = (*SCALE_KEYS, "task_heads", "sampling", "regime", "metric_from_task",
                 "epochs_over", "augment")
"""Optional keys :func:`validate_config` does not fill in: absent, their default applies and the
config is unchanged — so its run identity (:func:`run_identity`) is that of runs made before
the key existed, and they stay resumable."""


def scale_options(cfg: dict) -> dict:
    """The config's optional scale-out keys with their defaults (``data_placement``,
    ``device_memory_cap``, ``batch_devices``), validated; the config itself is not changed."""
    from cljax.data.pipeline import PLACEMENTS

    out = {key: cfg.get(key, OPTIONAL_KEYS[key]) for key in SCALE_KEYS}
    check_choice(out["data_placement"], PLACEMENTS, name="config['data_placement']")
    cap = out["device_memory_cap"]
    if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool)
                            or not np.isfinite(cap) or cap < 1):
        raise ValueError(f"config['device_memory_cap'] must be None or a positive number of "
                         f"bytes; got {cap!r}")
    out["device_memory_cap"] = None if cap is None else int(cap)
    b = out["batch_devices"]
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
        raise ValueError(f"config['batch_devices'] must be a positive int; got {b!r}")
    return out


def experiment_mesh(cfg: dict, devices: int | None = None) -> Mesh | None:
    """The :func:`cljax.sharding.make_mesh` mesh of ``devices`` (None: all of
    ``jax.devices()``) with the config's ``batch_devices``, or None for one device (the
    one-device path, unchanged)."""
    from cljax import sharding

    batch = scale_options(cfg)["batch_devices"]
    count = len(sharding.resolve_devices(devices))
    if count == 1 and batch == 1:
        return None
    if count % batch:
        raise ValueError(f"config['batch_devices']={batch} must divide the number of devices "
                         f"({count}; --devices)")
    return sharding.make_mesh(count, batch=batch)


# --------------------------------------------------------------------------------------------
# Registries: models and optimizers by name
# --------------------------------------------------------------------------------------------

def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def make_model(spec: dict, *, num_outputs: int, num_heads: int) -> Model:
    """The :class:`cljax.nn.Model` of ``{'kind': <MODELS name>, ...keyword arguments}``."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"config['model'] must be a dict with 'kind' (one of {sorted(MODELS)}); "
                         f"got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind")
    check_choice(kind, sorted(MODELS), name="config['model']['kind']")
    kwargs = {k: _hashable(v) for k, v in spec.items()}
    try:
        module = MODELS[kind](num_outputs=num_outputs, num_heads=num_heads, **kwargs)
    except TypeError as e:
        raise ValueError(f"config['model'] {spec}: bad arguments for {kind!r}: {e}") from e
    return as_model(module)


def make_optimizer(spec: dict) -> optax.GradientTransformation:
    """An optax optimizer from ``{'name': <optax alias>, 'learning_rate': lr, ...kwargs}``.

    ``name`` is any optax optimizer alias (``adam``, ``sgd``, ``adamw``, ``rmsprop``, …).
    ``task_decay: γ`` (with optional ``min_learning_rate``) decays the learning rate per task,
    lr·γ^t for task t (0-based) floored at the minimum (Mirzadeh et al. 2020): the base
    optimizer chained with :func:`cljax.transforms.scale_by_task_decay`, which reads the task
    the trainer hands every update, so nothing recompiles between tasks and a
    ``reset_optimizer`` keeps the decay. Other keys go to the optax constructor.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"config['optimizer'] must be a dict; got {spec!r}")
    spec_in, spec = spec, dict(spec)
    name = spec.pop("name", None)
    factory = getattr(optax, name, None) if isinstance(name, str) else None
    if not callable(factory) or name.startswith("_") or isinstance(factory, type):
        raise ValueError(f"optimizer name must be an optax optimizer (e.g. 'adam', 'sgd', "
                         f"'adamw'); got {name!r}")
    lr = spec.pop("learning_rate", None)
    _positive_number(lr, "optimizer learning_rate")
    decay = spec.pop("task_decay", None)
    floor = spec.pop("min_learning_rate", 0.0)
    if decay is not None:
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 < decay <= 1:
            raise ValueError(f"optimizer task_decay must be in (0, 1]; got {decay!r}")
        if not isinstance(floor, (int, float)) or isinstance(floor, bool) or floor < 0:
            raise ValueError(f"optimizer min_learning_rate must be a number >= 0; got {floor!r}")
    elif "min_learning_rate" in dict(spec_in):
        raise ValueError("optimizer min_learning_rate is the floor of task_decay; set "
                         "task_decay too, or drop it")
    try:
        tx = factory(lr, **spec)
    except TypeError as e:
        raise ValueError(f"config['optimizer']: bad arguments for optax.{name}: {e}") from e
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"optax.{name} is not an optimizer (it returned {type(tx).__name__})")
    if decay is not None:
        tx = optax.chain(tx, scale_by_task_decay(decay, min_scale=floor / lr))
    return tx


def versions() -> dict:
    """Versions of Python, the platform and the numerical stack, and the devices used."""
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            **{name: version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy",
                                                 "tensorflow-datasets")},
            "devices": [str(d) for d in jax.devices()]}


def sweep_grid(hparams: dict, sweep: dict) -> list[dict]:
    """Every combination of the swept values, each merged over the fixed ``hparams``."""
    names = sorted(sweep)
    return [{**hparams, **dict(zip(names, combo))}
            for combo in itertools.product(*(sweep[n] for n in names))]


def summarise(R: np.ndarray, b: np.ndarray, *, kind: str | None = None) -> dict:
    """Every metric of :mod:`cljax.metrics` as ``{'mean', 'sem', 'per_run'}`` over runs."""
    out = {}
    for name, per_run in metrics.all_metrics(R, b, kind=kind).items():
        mean, sem = metrics.mean_and_sem(per_run)
        out[name] = {"mean": mean, "sem": sem, "per_run": np.asarray(per_run).tolist()}
    return out


def summarise_finite(R: np.ndarray, b: np.ndarray, *, kind: str | None = None) -> dict:
    """:func:`summarise` over the runs given (the finite ones); NaN metrics if there are none."""
    if R.shape[0] == 0:
        names = metrics.all_metrics(np.zeros((1,) + R.shape[1:]), np.zeros((1,) + b.shape[1:]))
        return {n: {"mean": float("nan"), "sem": float("nan"), "per_run": []} for n in names}
    return summarise(R, b, kind=kind)


def task_eval_data(data: StreamData) -> dict:
    """Every task's whole test set as model-ready stacked arrays ``x [T, N, ...]``, ``y``, ``task``
    (rows past ``data.test.n[t]`` are padding)."""
    T, N = data.test.y.shape
    tasks = jax.numpy.repeat(jax.numpy.arange(T, dtype=jax.numpy.int32), N)
    idx = jax.numpy.tile(jax.numpy.arange(N, dtype=jax.numpy.int32), T)
    flat = make_batch(data, data.test, tasks, idx)
    return {k: v.reshape((T, N) + v.shape[1:]) for k, v in flat.items()}


def multitask_solutions(trainer: Trainer, data: StreamData, params_per_task: Params, *,
                        steps: int, key: Any) -> Params:
    """The multitask solutions of MC-SGD's connectivity analysis (Mirzadeh et al. 2021, Sec.
    3): for t = 1 … T − 1, ŵ_{t+1} trained from the continual θ*_t on the data of tasks ≤ t + 1
    (each step's examples drawn uniformly from those tasks: :data:`cljax.methods.joint`) for
    ``steps`` steps with the run's optimizer and batch size. ``params_per_task`` stacks θ*_1 …
    θ*_T (one run's); returns ŵ_2 … ŵ_T stacked the same way (leading axis T − 1). The network
    is the one the run's method trains (``Trainer.model``), trained by plain joint steps."""
    from cljax.methods import joint

    check_positive_int(steps, name="steps")
    num_tasks = jax.tree.leaves(params_per_task)[0].shape[0]
    if num_tasks < 2:
        raise ValueError("multitask_solutions needs at least two tasks' parameters")
    # the network the run's method trains (RGO's encoding layer, HAT's gates…), trained by
    # plain steps on the data of tasks ≤ t + 1
    multitask = trainer._replace(base_model=trainer.model(data), method=joint,
                                 reset_optimizer=False)
    like = multitask.init(key, {}, data).params
    theta = jax.tree.map(lambda p: p[0], params_per_task)
    if jax.tree.structure(like) != jax.tree.structure(theta) or any(  # type: ignore[operator]  # PyTreeDef: no jaxlib stubs
            a.shape != b.shape for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(theta))):
        raise ValueError(f"params_per_task must hold one run's θ*_1 … θ*_T of the network "
                         f"method {trainer.method.name!r} trains; got {jax.tree.structure(theta)}")

    @jax.jit
    def train(params, task, k):
        state = multitask.init(k, {}, data)._replace(params=params)
        return multitask.fit(state, data, task, steps)[0].params

    out = [train(jax.tree.map(lambda p, t=t: p[t], params_per_task), jax.numpy.asarray(t + 1),
                 jax.random.fold_in(key, t)) for t in range(num_tasks - 1)]
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *out)


def flatness_analysis(model: Model, data: StreamData, task_params: Params, *,
                      runs: Iterable[int], seed: int, log: Callable[[str], None] = print,
                      max_seeds: int = 1, num_iters: int = 50, tol: float = 1e-3,
                      chunk_size: int = 1000, curvature: Literal["hessian", "ggn"] = "hessian",
                      multitask: bool = False, trainer: Trainer | None = None,
                      steps: int | None = None, path_sharpness: int = 0) -> dict:
    """λ_max per task, the forgetting bound (seed 000 eq. 19–20) and each task's loss along the
    linear path from θ*_t to the final parameters (:func:`cljax.analysis.forgetting_paths`) for
    the first ``max_seeds`` of ``runs``, on each task's test set (the data of the accuracy
    matrix). With ``multitask`` (``analysis_options``), also MC-SGD's continual vs multitask
    paths (:func:`cljax.analysis.multitask_paths`), the multitask solutions trained by
    :func:`multitask_solutions` with ``trainer`` for ``steps`` steps each. With
    ``path_sharpness`` = P ≥ 2, also λ_max at P points of each task's path to θ*_T and the bound
    along it (:func:`cljax.analysis.sharpness_paths`, P − 1 more Lanczos runs per task: t = 0
    takes the flatness analysis' λ_max)."""
    from cljax import analysis

    if multitask and (trainer is None or steps is None):
        raise ValueError("multitask paths need the run's trainer and its steps per task")
    if (not isinstance(path_sharpness, int) or isinstance(path_sharpness, bool)
            or path_sharpness < 0 or path_sharpness == 1):
        raise ValueError(f"analysis_options['path_sharpness'] must be 0 (off) or an int >= 2 "
                         f"(points per path); got {path_sharpness!r}")

    task_data = task_eval_data(data)
    counts = [int(c) for c in np.asarray(data.test.n)]
    out = []
    for r in list(runs)[:max_seeds]:
        params_r = jax.tree.map(lambda p, r=r: p[r], task_params)
        key = jax.random.fold_in(jax.random.key(seed), r)
        t0 = time.perf_counter()
        flat = analysis.flatness(model.logits_fn, params_r, task_data, key, num_iters=num_iters,
                                 tol=tol, chunk_size=chunk_size, counts=counts,
                                 curvature=curvature)
        bound = analysis.forgetting_bound(model.logits_fn, params_r, task_data,
                                          lambda_max=flat.lambda_max, chunk_size=chunk_size,
                                          counts=counts, curvature=curvature)
        paths = analysis.forgetting_paths(model.logits_fn, params_r, task_data, counts=counts,
                                          chunk_size=chunk_size) if len(counts) > 1 else None
        sharp = analysis.sharpness_paths(
            model.logits_fn, params_r, task_data, jax.random.fold_in(key, 11), counts=counts,
            num_points=path_sharpness, num_iters=num_iters, tol=tol, curvature=curvature,
            chunk_size=chunk_size, start_lambda_max=flat.lambda_max,
        ) if path_sharpness and len(counts) > 1 else None
        versus = None
        if multitask and len(counts) > 1:
            assert trainer is not None and steps is not None
            solutions = multitask_solutions(trainer, data, params_r, steps=steps,
                                            key=jax.random.fold_in(key, 7))
            versus = analysis.multitask_paths(model.logits_fn, params_r, solutions, task_data,
                                              counts=counts, chunk_size=chunk_size)
        seconds = time.perf_counter() - t0
        log(f"  run {r}: λ_max per task {np.round(flat.lambda_max, 3).tolist()}; bound holds for "
            f"{bound.summary['frac_measured_le_bound']:.2f} of pairs"
            + ("" if paths is None else
               f"; loss barriers θ*_t → θ*_T {np.round(paths['barrier'], 4).tolist()}")
            + ("" if versus is None else
               f"; seen tasks' loss rise θ*_t → θ*_t+1 "
               f"{np.round(versus['rise_continual'], 4).tolist()} vs θ*_t → multitask "
               f"{np.round(versus['rise_multitask'], 4).tolist()}")
            + f" ({seconds:.1f} s)")
        out.append({"run": r, "flatness": analysis.to_json(flat),
                    "bound": analysis.to_json(bound), "seconds": seconds,
                    "connectivity": None if paths is None else analysis.to_json(paths),
                    **({} if sharp is None else {"path_sharpness": analysis.to_json(sharp)}),
                    **({} if versus is None else
                       {"multitask_connectivity": analysis.to_json(versus)})})
    return {"curvature": curvature, "data": "test set of each task", "runs": out}


def _to_builtin(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _features_config(spec: Any):
    """Validate ``config['features']``: ``{"pretrain": {PretrainConfig fields}, "cache_dir"}``."""
    from cljax.pretrain import PretrainConfig

    if not isinstance(spec, dict) or set(spec) - {"pretrain", "cache_dir"}:
        raise ValueError("config['features'] must be None or a dict with 'pretrain' (the "
                         "pre-training settings) and 'cache_dir'; got " + repr(spec))
    try:
        return PretrainConfig(**{k: _hashable(v) for k, v in spec.get("pretrain", {}).items()})
    except TypeError as e:
        raise ValueError(f"config['features']['pretrain']: {e}") from e


def load_experiment_stream(cfg: dict, *, log: Callable[[str], None] = print
                           ) -> tuple[TaskStream, dict]:
    """The config's task stream (encoded by the cached pre-trained encoder when
    ``cfg['features']`` is set) and a dict of what loading it took."""
    t0 = time.perf_counter()
    stream = load_stream(cfg["dataset"], cfg["stream"], data_dir=cfg["data_dir"],
                         evaluate_on=cfg["evaluate_on"],
                         validation_fraction=cfg["validation_fraction"], **cfg["stream_options"])
    info: dict[str, Any] = {"load_seconds": time.perf_counter() - t0}
    log(f"loaded {stream.name}: {stream.num_tasks} tasks, train sizes {stream.train.n.tolist()} "
        f"({info['load_seconds']:.1f} s)")
    if cfg["features"] is not None:
        from cljax.pretrain import encode_stream, pretrained_encoder

        pre = _features_config(cfg["features"])
        t1 = time.perf_counter()
        variables, report = pretrained_encoder(pre, cache_dir=cfg["features"].get(
            "cache_dir", "runs/cache"), data_dir=cfg["data_dir"], log=log)
        stream = encode_stream(stream, variables, dataset=cfg["dataset"], channels=pre.channels,
                               depth=pre.depth)
        info.update(pretrain=report, encode_seconds=time.perf_counter() - t1)
        shown = [f"{what} accuracy {100 * report[key]:.2f} %" for what, key in
                 (("test", "test_accuracy"), ("held-out", "holdout_accuracy"))
                 if report.get(key) is not None]       # an encoder cached before: held-out only
        log(f"encoded with the frozen encoder (pre-training {', '.join(shown)}): features "
            f"{stream.input_shape}")
    return stream, info


class ScenarioSetup(NamedTuple):
    """What :func:`build_scenario` builds for one scenario (``model``: the network the method
    trains, built by ``Method.model`` from the configured one)."""

    name: str
    scenario: Any
    model: Model
    method: Method
    trainer: Trainer
    data: StreamData


class SweepPlan(NamedTuple):
    """The vmapped runs of a config: run g·S + s = grid point g with seed s."""

    grid: list[dict]
    seeds: int
    keys: Any
    hparams: dict


def plan_runs(cfg: dict, method: Method) -> SweepPlan:
    """Every sweep point × every seed as one batch of runs (every point sees the same seeds)."""
    grid = sweep_grid({**method.default_hparams, **cfg["hparams"]}, cfg["sweep"])
    S, G = cfg["seeds"], len(grid)
    keys = jax.random.split(jax.random.key(cfg["seed"]), S)
    keys = jax.numpy.concatenate([keys] * G)
    hparams = {name: np.repeat([point[name] for point in grid], S) for name in grid[0]}
    return SweepPlan(grid, S, keys, hparams)


def _scenario_trainer(cfg: dict, stream: TaskStream, name: str
                      ) -> tuple[Any, Method, Trainer]:
    """Scenario ``name`` of ``stream``, the config's method and its trainer."""
    scenario = make_scenario(stream, name, task_heads=cfg.get("task_heads", "separate"))
    method = get_method(cfg["method"], **cfg["method_options"])
    model = make_model(cfg["model"], num_outputs=scenario.num_outputs,
                       num_heads=scenario.num_heads)
    trainer = make_trainer(model, method, optimizer=make_optimizer(
        cfg["optimizer"]), batch_size=cfg["batch_size"],
        eval_chunk=cfg["eval_chunk"], reset_optimizer=cfg["reset_optimizer"],
        sampling=cfg.get("sampling", "iid"),
        task_epochs=cfg["epochs"] if cfg.get("epochs_over") == "each_task" else None,
        augment=cfg.get("augment", "none"))
    return scenario, method, trainer


def build_scenario(cfg: dict, stream: TaskStream, name: str, *, mesh: Any = None
                   ) -> ScenarioSetup:
    """Stage 1 (build): scenario, model, method, trainer and device data of scenario ``name``
    (replicated on ``mesh``'s devices when given; kept on the host when the config's
    ``data_placement`` says so or the stream is larger than ``device_memory_cap``)."""
    scenario, method, trainer = _scenario_trainer(cfg, stream, name)
    scale = scale_options(cfg)
    data = prepare_data(stream, scenario, eval_chunk=cfg["eval_chunk"],
                        placement=scale["data_placement"], memory_cap=scale["device_memory_cap"],
                        mesh=mesh)
    if data.host is not None and cfg["analysis"] == "flatness":
        raise ValueError("the flatness analysis needs every task's test set on the device, and "
                         "this stream is kept on the host (config['data_placement'] / "
                         "device_memory_cap): set data_placement='device' or drop the analysis")
    return ScenarioSetup(name, scenario, trainer.model(data), method, trainer, data)


def run_scenario(cfg: dict, setup: ScenarioSetup, plan: SweepPlan, *,
                 progress_factory: Callable | None = None, checkpoint: Any = None,
                 checkpoint_every: int | None = None, resume: bool = False,
                 mesh: Any = None, keep_params: bool = False) -> StreamResult:
    """Stage 2 (run): every run of ``plan`` over the stream, as one vmapped program
    (checkpointed by ``checkpoint``, a :class:`cljax.checkpoint.Checkpointer`, if given; the
    runs sharded over ``mesh``, :func:`experiment_mesh`, if given). θ*_t after every task is
    kept in the result's ``task_params`` when ``keep_params`` or the config's flatness
    analysis needs it."""
    if not isinstance(keep_params, bool):
        raise TypeError(f"keep_params must be a bool; got {type(keep_params).__name__}")
    T = setup.data.train.n.shape[0]
    bar = progress_factory(setup.name, T * cfg["steps"]) if progress_factory else None
    callback = None
    if bar is not None:
        last = {"t": -1, "done": 0}

        def callback(task, done, total):
            delta = done - (last["done"] if last["t"] == task else 0)
            last.update(t=task, done=done)
            bar.set_description(f"{setup.name}-IL task {task + 1}/{T}")
            bar.update(delta)
    try:
        return run_stream(setup.trainer, setup.data, num_steps=cfg["steps"], keys=plan.keys,
                          hparams=plan.hparams, steps_per_call=250 if bar is not None else None,
                          progress=callback,
                          keep_params=keep_params or cfg["analysis"] == "flatness",
                          on_nonfinite="mark", checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every, resume=resume, mesh=mesh)
    finally:
        if bar is not None:
            bar.close()


def summarise_scenario(cfg: dict, setup: ScenarioSetup, plan: SweepPlan, res: StreamResult, *,
                       log: Callable[[str], None] = print) -> dict:
    """Stage 3 (summarise): the results entry of one scenario — per sweep point the matrices
    and metrics (mean ± SEM over the seeds that did not diverge), the best point, the analysis."""
    S, G = plan.seeds, len(plan.grid)
    assert res.diverged is not None                # run_scenario's record always has it
    points = []
    for g, point in enumerate(plan.grid):
        runs = slice(g * S, (g + 1) * S)
        gone = [{"seed": s, "task": int(res.diverged[g * S + s, 0]),
                 "step": int(res.diverged[g * S + s, 1])}
                for s in range(S) if res.diverged[g * S + s, 0] >= 0]
        ok = np.flatnonzero(res.diverged[runs, 0] < 0)
        summary = summarise_finite(*metric_block(cfg, res.accuracy[runs][ok],
                                                 res.init_accuracy[runs][ok]), kind="accuracy")
        log(f"{setup.name}-IL {point}: ACC {100 * summary['acc']['mean']:.2f} ± "
            f"{100 * summary['acc']['sem']:.2f} over {len(ok)} seed(s)"
            + (f"; DIVERGED (non-finite loss): {gone}" if gone else ""))
        points.append({
            "hparams": point,
            "accuracy": res.accuracy[runs].tolist(), "loss": res.loss[runs].tolist(),
            "init_accuracy": res.init_accuracy[runs].tolist(),
            "init_loss": res.init_loss[runs].tolist(),
            "final_train_loss": res.train_loss[runs, :, -50:].mean(-1).tolist(),
            "metrics": summary,
            "loss_metrics": summarise_finite(*metric_block(cfg, res.loss[runs][ok],
                                                           res.init_loss[runs][ok]), kind="loss"),
            "diverged": gone})
    log(f"{setup.name}-IL: {G * S} vmapped run(s); compile "
        f"{res.timings['compile_seconds']:.1f} s, train+eval {res.timings['run_seconds']:.1f} s")
    # Best: fewest diverged runs first (an unstable point is never preferred), then ACC.
    best = max(range(G), key=lambda g: (-len(points[g]["diverged"]),
                                        np.nan_to_num(points[g]["metrics"]["acc"]["mean"],
                                                      nan=-np.inf)))
    entry = {"num_heads": setup.scenario.num_heads, "num_outputs": setup.scenario.num_outputs,
             **points[best], "timings": res.timings}
    if cfg["sweep"]:
        entry["best_hparams"] = points[best]["hparams"]
        entry["sweep"] = points
    if setup.method.samples is not None:     # the reported point's first finite run
        finite = [r for r in range(best * S, best * S + S) if res.diverged[r, 0] < 0]
        run = finite[0] if finite else best * S
        shown = generated_samples(setup, res.final_state, run)
        if shown is not None:
            entry["samples"] = {"run": run, "pixels": shown}
    if cfg["analysis"] == "flatness":
        entry["analysis"] = flatness_analysis(setup.model, setup.data, res.task_params,
                                              runs=range(best * S, best * S + S),
                                              seed=cfg["seed"], log=log,
                                              trainer=setup.trainer, steps=cfg["steps"],
                                              **cfg["analysis_options"])
    return entry


def generated_samples(setup: ScenarioSetup, state: Any, run: int) -> np.ndarray | None:
    """Run ``run``'s samples of ``Method.samples`` as display pixels (``uint8 [T, n, H, W(, C)]``:
    the model's input space mapped back through the stream's normalisation, ×255, rounded and
    clipped to [0, 255] for display), or None when the stream's examples are not images
    (features) or the method generates none."""
    if setup.method.samples is None:
        return None
    x = np.asarray(jax.device_get(setup.method.samples(
        jax.tree.map(lambda a: a[run], state.mstate))), np.float32)
    if setup.data.train.x.dtype != np.uint8 or x.ndim - 2 not in (2, 3):
        return None
    mean = np.asarray(setup.data.mean, np.float32)
    std = np.asarray(setup.data.std, np.float32)
    pixels = 255.0 * (x * std + mean) if x.ndim == 5 else 255.0 * (x * std[0] + mean[0])
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Run identity, state sizes, interrupts
# --------------------------------------------------------------------------------------------

def run_identity(cfg: dict, scenario: str | None = None) -> dict:
    """What a run is, as a small JSON dict: a hash of the (validated) config as strict JSON
    without :data:`cljax.workdir.IGNORED_ON_RESUME`, the method, the seeds, the steps per task,
    the grid of hyperparameters, the scenario (when given) and the cljax version. Checkpoints,
    finished scenarios' ``result.json`` and the work directory's marker carry it; resuming
    refuses one that differs (:func:`cljax.workdir.describe_mismatch` names how)."""
    from cljax import __version__

    kept = to_strict_json({k: v for k, v in cfg.items() if k not in IGNORED_ON_RESUME})
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False)
    identity = {"method": cfg["method"], "seeds": cfg["seeds"], "steps": cfg["steps"]}
    if cfg.get("epochs") is not None:
        identity["epochs"] = cfg["epochs"]
    identity["sweep"] = sweep_grid(cfg.get("hparams") or {}, cfg.get("sweep") or {})
    if scenario is not None:
        identity["scenario"] = scenario
    identity.update(version=__version__, config=hashlib.sha256(text.encode()).hexdigest()[:16])
    return to_strict_json(identity)


class StateSizeError(ValueError):
    """A run whose state would not fit: the device's memory or ``max_state_bytes``."""


STATE_MEMORY_FRACTION = 0.9
"""The share of a device's memory the runs' states (twice: a compiled call holds the state it is
given and the one it returns) and the stream's arrays may take; the rest is XLA's headroom."""


def _tree_bytes(tree: Any) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        if jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            itemsize = jax.random.key_data(jax.random.key(0)).nbytes   # the key's raw data
        else:
            itemsize = np.dtype(leaf.dtype).itemsize
        total += math.prod(leaf.shape) * itemsize
    return int(total)


def estimate_state_bytes(cfg: dict, stream: TaskStream, name: str) -> int:
    """Bytes of one run's :class:`~cljax.training.TrainState` in scenario ``name`` (parameters,
    optimizer and method state: memories, OGD's store, GPM's bases, K-FAC factors, masks,
    columns), from ``jax.eval_shape`` of the trainer's ``init`` on the stream's shapes: nothing
    is compiled or allocated."""
    scenario, method, trainer = _scenario_trainer(cfg, stream, name)

    def spec(shape: tuple[int, ...], dtype: Any) -> Any:   # an array's stand-in for eval_shape
        return jax.ShapeDtypeStruct(shape, dtype)

    def shaped(arrays: TaskArrays) -> TaskArrays:
        return TaskArrays(*(spec(np.shape(a), np.asarray(a).dtype) for a in arrays))

    data = StreamData(shaped(stream.train), shaped(stream.test),
                      spec(scenario.label_table.shape, np.int32),
                      spec((len(stream.mean),), np.float32),
                      spec((len(stream.std),), np.float32),
                      tuple(int(n) for n in stream.train.n))
    point = plan_runs(cfg, method).grid[0]
    return _tree_bytes(jax.eval_shape(trainer.init, jax.random.key(0),
                                      {k: float(v) for k, v in point.items()}, data))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def check_state_sizes(cfg: dict, stream: TaskStream, names: list[str], runs: int, *,
                      mesh: Any = None, log: Callable[[str], None] = print) -> dict:
    """Estimate (:func:`estimate_state_bytes`), log and check the state of ``runs`` runs in each
    scenario of ``names`` before anything is compiled: more than ``config['max_state_bytes']``
    (``--max-state-bytes``), or than a device's memory allows
    (:data:`STATE_MEMORY_FRACTION`), is a :class:`StateSizeError`. Returns
    ``{scenario: bytes per run}``."""
    from cljax.data.pipeline import choose_placement, device_memory_bytes, stream_bytes

    devices = None if mesh is None else list(mesh.devices.flat)
    per_device = runs if mesh is None else -(-runs // mesh.shape["runs"])
    memory = device_memory_bytes(devices)
    scale = scale_options(cfg)
    on_device = choose_placement(stream, placement=scale["data_placement"],
                                 memory_cap=scale["device_memory_cap"], devices=devices)
    data = stream_bytes(stream) if on_device == "device" else 0
    limit = cfg.get("max_state_bytes")
    out = {}
    for name in names:
        one = estimate_state_bytes(cfg, stream, name)
        total = one * per_device
        out[name] = one
        log(f"{name}-IL state: {_size(one)} per run x {per_device} run(s)"
            f"{' per device' if mesh is not None else ''} = {_size(total)}"
            + (f"; device memory {_size(memory)}" if memory else ""))
        what = (f"the {name}-IL state needs {_size(total)} ({_size(one)} per run x "
                f"{per_device} run(s){' per device' if mesh is not None else ''}: the model, "
                f"optimizer and method state, e.g. a replay memory or OGD's store)")
        fix = ("lower the method's sizes (memory, per_task, ...), the model or the runs "
               "(seeds x sweep points)")
        if limit is not None and total > limit:
            raise StateSizeError(f"{what}, more than config['max_state_bytes'] "
                                 f"(--max-state-bytes) = {_size(limit)}: {fix}")
        if memory is not None and 2 * total + data > STATE_MEMORY_FRACTION * memory:
            raise StateSizeError(
                f"{what}: a compiled call holds 2 copies (the state it is given and the one it "
                f"returns), {_size(2 * total)}, plus {_size(data)} of data, more than "
                f"{STATE_MEMORY_FRACTION:.0%} of the device's memory ({_size(memory)}): {fix}")
    return out


class RunInterrupted(KeyboardInterrupt):
    """:func:`run_experiment` interrupted (SIGINT, or SIGTERM turned into one): ``finished``
    names the scenarios whose results were handed to ``on_scenario`` (or reused), and
    ``checkpoints`` the ``(scenario, checkpoint directory, latest step index)`` of the
    unfinished scenario when something of it is checkpointed (else empty)."""

    def __init__(self, finished: list[str], checkpoints: list[tuple[str, str, int]]):
        super().__init__("interrupted")
        self.finished, self.checkpoints = list(finished), list(checkpoints)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM received inside the block are held until it ends, then honoured (the
    handler in force before the block runs: SIGINT's raises KeyboardInterrupt), so the few lines
    that finish a scenario are never cut in half. Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                                for s in watched}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in pending[:1]:
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


def _checkpointed(name: str, ckpt: Checkpointer | None) -> list[tuple[str, str, int]]:
    if ckpt is None:
        return []
    steps = ckpt.steps()
    return [(name, str(ckpt.directory), steps[-1])] if steps else []


def _reuse(path: pathlib.Path, identity: dict, name: str,
           log: Callable[[str], None]) -> dict | None:
    """The results of finished scenario ``name`` saved in ``path`` by an earlier run of this
    identity; None (moved aside, so the scenario runs again) when the file is unreadable; a run
    of another identity: :class:`CheckpointMismatchError`."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        aside = path.with_name(f"{path.name}.corrupt-"
                               f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        path.rename(aside)
        log(f"{name}-IL: {path} cannot be read ({e}); moved aside to {aside}: the scenario "
            "resumes from its checkpoint")
        return None
    found = saved.get("identity") if isinstance(saved, dict) and "result" in saved else None
    differs = describe_mismatch(found, identity)
    if differs:
        raise CheckpointMismatchError(
            f"the finished {name}-IL results in {path} are {differs} (resume needs the same "
            "config, options and cljax version: rerun the command that wrote them, or start "
            "afresh elsewhere)")
    return saved["result"]


def run_experiment(config: dict, *, progress_factory: Callable | None = None,
                   log: Callable[[str], None] = print,
                   on_scenario: Callable[[dict], None] | None = None,
                   checkpoint_dir: str | None = None, resume: bool = False,
                   checkpoint_every: int | None = None, devices: int | None = None,
                   events_dir: str | None = None) -> dict:
    """Run every scenario of ``config`` (and every regime); return the results dict written to
    ``results.json``. ``on_scenario(results)`` is called after each finished scenario with the
    results so far (the CLI writes them out). ``checkpoint_dir`` / ``resume`` /
    ``checkpoint_every`` (steps): checkpoints of the whole training state (see
    :mod:`cljax.checkpoint`; they resume on any device count; each carries the
    :func:`run_identity`, and a checkpoint or finished scenario of another run is refused).
    ``devices``: how many of ``jax.devices()`` the runs are sharded over (None: all; one device:
    the one-device path). ``events_dir``: where each finished scenario's training curves go as
    TensorBoard event files (:mod:`cljax.events`; needs tensorboardX; None: none).

    After the data is loaded and before anything is compiled, every scenario's state is sized
    (:func:`check_state_sizes`); a run that would not fit is refused. A finished scenario's
    files are written with SIGINT / SIGTERM deferred (:func:`deferred_interrupts`), and an
    interrupt raises :class:`RunInterrupted` saying what is finished and what checkpointed."""
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    cfg = validate_config(config)
    if cfg["regimes"]:
        return _run_regimes(cfg, progress_factory=progress_factory, log=log,
                            on_scenario=on_scenario, checkpoint_dir=checkpoint_dir,
                            resume=resume, checkpoint_every=checkpoint_every, devices=devices,
                            events_dir=events_dir)
    results: dict = {"scenarios": {}}
    current: tuple[str, Checkpointer | None] | None = None
    try:
        mesh = experiment_mesh(cfg, devices)
        if mesh is not None:
            log(f"devices: {mesh.devices.size} ({dict(mesh.shape)}: runs × batch)")
        t0 = time.perf_counter()
        stream, load_info = load_experiment_stream(cfg, log=log)
        _set_steps(cfg, stream, log)
        if checkpoint_every is not None and checkpoint_dir is not None:
            _log_checkpoint_every(cfg["steps"], checkpoint_every, log)
        method = get_method(cfg["method"], **cfg["method_options"])
        plan = plan_runs(cfg, method)
        results = {"config": copy.deepcopy(cfg), "versions": versions(),
                   "stream": {**_stream_summary(stream), "evaluated_on": cfg["evaluate_on"],
                              "metric_tasks": list(range(cfg.get("metric_from_task", 0),
                                                         stream.num_tasks))},
                   **load_info, "scenarios": {}}
        where = {name: None if checkpoint_dir is None else pathlib.Path(checkpoint_dir) / name
                 for name in cfg["scenarios"]}
        if resume:
            results["scenarios"] = _finished_before(cfg, where, log)
        check_state_sizes(cfg, stream, [n for n in cfg["scenarios"]
                                        if n not in results["scenarios"]],
                          len(plan.grid) * plan.seeds, mesh=mesh, log=log)
        for name in cfg["scenarios"]:
            if name in results["scenarios"]:
                continue
            setup = build_scenario(cfg, stream, name, mesh=mesh)
            scenario_dir = where[name]
            ckpt = None if scenario_dir is None else Checkpointer(
                scenario_dir / STATE_DIR, log=log, identity=run_identity(cfg, name))
            current = (name, ckpt)
            res = run_scenario(cfg, setup, plan, progress_factory=progress_factory,
                               checkpoint=ckpt, checkpoint_every=checkpoint_every,
                               resume=resume, mesh=mesh)
            entry = summarise_scenario(cfg, setup, plan, res, log=log)
            with deferred_interrupts():   # a finished scenario is written whole
                _write_finished(cfg, name, plan, res, entry, scenario_dir, events_dir)
                results["scenarios"][name] = entry
                results["scenarios"] = {n: results["scenarios"][n] for n in cfg["scenarios"]
                                        if n in results["scenarios"]}    # the config's order
                results["total_seconds"] = time.perf_counter() - t0
                if on_scenario is not None:
                    on_scenario(results)
                current = None
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(list(results["scenarios"]),
                             [] if current is None else _checkpointed(*current)) from None
    return results


def _set_steps(cfg: dict, stream: TaskStream, log: Callable[[str], None]) -> None:
    """``cfg["steps"]`` from ``cfg["epochs"]`` when given: epochs over the largest task (with
    ``epochs_over="each_task"`` the static length; each task then stops after its own)."""
    if cfg["epochs"] is None:
        return
    largest = int(stream.train.n.max())
    cfg["steps"] = max(1, int(np.ceil(cfg["epochs"] * largest / cfg["batch_size"])))
    log(f"{cfg['epochs']} epoch(s) of {largest} examples at batch {cfg['batch_size']} = "
        f"{cfg['steps']} steps per task"
        + (" at most: each task trains its own epochs" if cfg.get("epochs_over") == "each_task"
           else ""))


def _log_checkpoint_every(steps: int, checkpoint_every: int, log: Callable[[str], None]) -> None:
    every = call_length(steps, checkpoint_every)
    log(f"checkpoints every {every} steps" + (
        f" (--checkpoint-every {checkpoint_every} rounded down to a divisor of the "
        f"{steps} steps per task)" if every != checkpoint_every else ""))


def _stream_summary(stream: TaskStream) -> dict:
    return {"name": stream.name, "num_tasks": stream.num_tasks, "classes": stream.classes,
            "train_sizes": stream.train.n.tolist(), "test_sizes": stream.test.n.tolist()}


def _finished_before(cfg: dict, where: dict[str, pathlib.Path | None],
                     log: Callable[[str], None]) -> dict:
    """The scenarios a resumed run finished before, from their ``result.json`` (only those of
    this run's identity)."""
    out = {}
    for name in cfg["scenarios"]:
        scenario_dir = where[name]
        finished = None if scenario_dir is None else scenario_dir / RESULT_FILE
        if finished is not None and finished.is_file():
            entry = _reuse(finished, run_identity(cfg, name), name, log)
            if entry is not None:
                out[name] = entry
                log(f"{name}-IL: finished before this resumed run; its results are reused")
    return out


def _write_finished(cfg: dict, name: str, plan: SweepPlan, res: Any, entry: dict,
                    scenario_dir: pathlib.Path | None, events_dir: str | None) -> None:
    """A finished scenario's TensorBoard events and its ``result.json`` (for a resume)."""
    if events_dir is not None:
        events.write_scenario_events(events_dir, name, res.train_loss, res.accuracy,
                                     events.run_names(plan.grid, plan.seeds))
    if scenario_dir is not None:   # NaN kept as NaN (not strict JSON): reread here
        write_text_atomic(scenario_dir / RESULT_FILE, json.dumps(
            {"identity": run_identity(cfg, name), "result": entry}, default=_to_builtin))


def _run_regimes(cfg: dict, *, checkpoint_dir: str | None, events_dir: str | None,
                 on_scenario: Callable[[dict], None] | None, log: Callable[[str], None],
                 **kwargs: Any) -> dict:
    """:func:`run_experiment` of every regime of ``cfg`` in turn (see there)."""
    out = {"config": cfg, "versions": versions(), "regimes": {}}
    for regime, overrides in cfg["regimes"].items():
        sub = copy.deepcopy({k: v for k, v in cfg.items() if k != "regimes"})
        for dotted, value in overrides.items():
            apply_override(sub, dotted, value)
        log(f"regime {regime}: {overrides}")

        def partial(results, regime=regime):
            if on_scenario is not None:
                on_scenario({**out, "regimes": {**out["regimes"], regime: results}})

        try:
            out["regimes"][regime] = run_experiment(
                sub, log=log, on_scenario=partial,
                checkpoint_dir=None if checkpoint_dir is None else
                str(pathlib.Path(checkpoint_dir) / regime),
                events_dir=None if events_dir is None else str(pathlib.Path(events_dir) / regime),
                **kwargs)
        except RunInterrupted as e:
            done = [f"{r}/{n}" for r, sub_results in out["regimes"].items()
                    for n in sub_results.get("scenarios", {})]
            raise RunInterrupted(done + [f"{regime}/{n}" for n in e.finished],
                                 [(f"{regime}/{n}", d, i) for n, d, i in e.checkpoints]) from None
    return out


__all__ = ["MODELS", "SCALE_KEYS", "UNFILLED_KEYS", "EPOCHS_OVER", "metric_block",
           "apply_override", "validate_config", "scale_options", "experiment_mesh",
           "make_optimizer", "make_model", "dataset_metadata", "StreamOutline", "stream_outline",
           "config_plan", "run_identity", "StateSizeError", "STATE_MEMORY_FRACTION",
           "estimate_state_bytes", "check_state_sizes", "RunInterrupted",
           "deferred_interrupts",
           "load_experiment_stream", "ScenarioSetup", "SweepPlan", "plan_runs", "build_scenario",
           "run_scenario", "summarise_scenario", "run_experiment", "summarise", "summarise_finite",
           "sweep_grid", "versions", "task_eval_data", "flatness_analysis",
           "multitask_solutions"]

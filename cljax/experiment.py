"""Run a configured CL experiment end to end: data → vmapped training over seeds → metrics.

A config is a plain dict (see ``experiments/configs/*.py``, each with ``get_config()``). The keys:

``dataset`` (tfds name), ``stream`` ('split' | 'permuted' | 'rotated'), ``stream_options`` (kwargs
of the stream builder), ``scenarios`` (subset of 'task', 'domain', 'class'), ``model``
(``{'kind': 'mlp', 'widths': [...], 'dropout': p}`` or ``{'kind': 'cnn', ...}``), ``optimizer``
(``{'name': 'adam' | 'sgd', 'learning_rate': ..., ...}``), ``steps`` (per task), ``batch_size``,
``method``, ``method_options`` (the method's static settings, e.g. ``{"fisher": "true"}``),
``hparams`` (the method's hyperparameters, scalars), ``sweep`` (``{name: [values]}``: every
combination × every seed runs as one vmapped program), ``seeds``, ``seed``, ``eval_chunk``,
``reset_optimizer``, ``data_dir``, ``epochs`` (if set, replaces ``steps``: epochs over the
largest task's training set), ``analysis`` (None or ``"flatness"``: keep θ*_t and report
λ_max per task and the forgetting bound, see :mod:`cljax.analysis`), ``analysis_options``, and
``regimes`` (``{name: {dotted.key: value}}``: run the experiment once per regime, e.g. Mirzadeh
et al.'s "naive" and "stable" training regimes, and report them side by side).
"""
from __future__ import annotations

import copy
import itertools
import platform
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from cljax import metrics
from cljax.data import SCENARIOS, load_stream, make_scenario
from cljax.methods import get_method
from cljax.nn import CNN, MLP, as_model
from cljax.training import make_batch, make_trainer, prepare_data, run_stream

REQUIRED_KEYS = ("dataset", "stream", "scenarios", "model", "optimizer", "steps", "batch_size",
                 "method", "seeds")


def validate_config(config: dict) -> dict:
    """Check a config's keys and values; return a normalised deep copy."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise KeyError(f"config is missing {missing}")
    cfg = copy.deepcopy(config)
    cfg.setdefault("stream_options", {})
    cfg.setdefault("hparams", {})
    cfg.setdefault("method_options", {})
    cfg.setdefault("sweep", {})
    cfg.setdefault("seed", 0)
    cfg.setdefault("eval_chunk", 1000)
    cfg.setdefault("reset_optimizer", False)
    cfg.setdefault("data_dir", None)
    cfg.setdefault("epochs", None)
    cfg.setdefault("analysis", None)
    cfg.setdefault("analysis_options", {})
    cfg.setdefault("regimes", {})
    if cfg["analysis"] not in (None, "flatness"):
        raise ValueError(f"config['analysis'] must be None or 'flatness'; got {cfg['analysis']!r}")
    if isinstance(cfg["scenarios"], str):
        cfg["scenarios"] = [s.strip() for s in cfg["scenarios"].split(",")]
    cfg["scenarios"] = list(cfg["scenarios"])
    bad = [s for s in cfg["scenarios"] if s not in SCENARIOS]
    if bad or not cfg["scenarios"]:
        raise ValueError(f"scenarios must be a non-empty subset of {SCENARIOS}; got {cfg['scenarios']}")
    for key in ("steps", "batch_size", "seeds"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be a positive int; got {cfg[key]!r}")
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
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                raise ValueError(f"config['sweep'][{name!r}] values must be finite numbers >= 0;"
                                 f" got {v!r}")
    for name, v in cfg["hparams"].items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
            raise ValueError(f"config['hparams'][{name!r}] must be a finite number >= 0; got {v!r}")
    if cfg["model"].get("kind") not in ("mlp", "cnn"):
        raise ValueError(f"config['model']['kind'] must be 'mlp' or 'cnn'; got {cfg['model'].get('kind')!r}")
    make_optimizer(cfg["optimizer"], steps_per_task=cfg["steps"])
    return cfg


def make_optimizer(spec: dict, *, steps_per_task: int) -> optax.GradientTransformation:
    """An optax optimizer from ``{'name': 'adam'|'sgd', 'learning_rate': lr, ...}``.

    ``task_decay: γ`` (with optional ``min_learning_rate``) decays the learning rate per task,
    lr·γ^t floored at the minimum (Mirzadeh et al. 2020): a schedule of the optimizer's step
    count, so nothing recompiles between tasks. Other keys go to the optax constructor.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    lr = spec.pop("learning_rate", None)
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"optimizer learning_rate must be a positive number; got {lr!r}")
    decay = spec.pop("task_decay", None)
    floor = spec.pop("min_learning_rate", 0.0)
    if decay is not None:
        if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"optimizer task_decay must be in (0, 1]; got {decay!r}")
        base_lr = lr

        def lr(count):  # noqa: F811 — the schedule replaces the constant
            return jax.numpy.maximum(base_lr * decay ** (count // steps_per_task), floor)
    if name == "adam":
        return optax.adam(lr, **spec)
    if name == "sgd":
        return optax.sgd(lr, **spec)
    raise ValueError(f"optimizer name must be 'adam' or 'sgd'; got {name!r}")


def make_model(spec: dict, *, num_outputs: int, num_heads: int):
    spec = dict(spec)
    kind = spec.pop("kind")
    module = (MLP(tuple(spec.pop("widths")), num_outputs, num_heads=num_heads, **spec)
              if kind == "mlp" else CNN(num_outputs, num_heads=num_heads, **spec))
    return as_model(module)


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


def summarise(R: np.ndarray, b: np.ndarray) -> dict:
    """Every metric of :mod:`cljax.metrics` as ``{'mean', 'sem', 'per_run'}`` over runs."""
    out = {}
    for name, per_run in metrics.all_metrics(R, b).items():
        mean, sem = metrics.mean_and_sem(per_run)
        out[name] = {"mean": mean, "sem": sem, "per_run": np.asarray(per_run).tolist()}
    return out


def summarise_finite(R: np.ndarray, b: np.ndarray) -> dict:
    """:func:`summarise` over the runs given (the finite ones); NaN metrics if there are none."""
    if R.shape[0] == 0:
        names = metrics.all_metrics(np.zeros((1,) + R.shape[1:]), np.zeros((1,) + b.shape[1:]))
        return {n: {"mean": float("nan"), "sem": float("nan"), "per_run": []} for n in names}
    return summarise(R, b)


def task_eval_data(data) -> dict:
    """Every task's whole test set as model-ready stacked arrays ``x [T, N, ...]``, ``y``, ``task``
    (rows past ``data.test.n[t]`` are padding)."""
    T, N = data.test.y.shape
    tasks = jax.numpy.repeat(jax.numpy.arange(T, dtype=jax.numpy.int32), N)
    idx = jax.numpy.tile(jax.numpy.arange(N, dtype=jax.numpy.int32), T)
    flat = make_batch(data, data.test, tasks, idx)
    return {k: v.reshape((T, N) + v.shape[1:]) for k, v in flat.items()}


def flatness_analysis(model, data, task_params, *, runs, seed: int, log=print,
                      max_seeds: int = 1, num_iters: int = 50, tol: float = 1e-3,
                      chunk_size: int = 1000, curvature: str = "hessian") -> dict:
    """λ_max per task and the forgetting bound (seed 000 eq. 19–20) for the first ``max_seeds``
    of ``runs``, on each task's test set (the data of the accuracy matrix)."""
    from cljax import analysis

    task_data = task_eval_data(data)
    counts = [int(c) for c in np.asarray(data.test.n)]
    out = []
    for r in list(runs)[:max_seeds]:
        params_r = jax.tree.map(lambda p: p[r], task_params)
        key = jax.random.fold_in(jax.random.key(seed), r)
        t0 = time.perf_counter()
        flat = analysis.flatness(model.logits_fn, params_r, task_data, key, num_iters=num_iters,
                                 tol=tol, chunk_size=chunk_size, counts=counts,
                                 curvature=curvature)
        bound = analysis.forgetting_bound(model.logits_fn, params_r, task_data,
                                          lambda_max=flat.lambda_max, chunk_size=chunk_size,
                                          counts=counts, curvature=curvature)
        seconds = time.perf_counter() - t0
        log(f"  run {r}: λ_max per task {np.round(flat.lambda_max, 3).tolist()}; bound holds for "
            f"{bound.summary['frac_measured_le_bound']:.2f} of pairs ({seconds:.1f} s)")
        out.append({"run": r, "flatness": analysis.to_json(flat),
                    "bound": analysis.to_json(bound), "seconds": seconds})
    return {"curvature": curvature, "data": "test set of each task", "runs": out}


def run_experiment(config: dict, *, progress_factory: Callable | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Run every scenario of ``config`` (and every regime); return the results dict written to
    ``results.json``."""
    cfg = validate_config(config)
    if cfg["regimes"]:
        out = {"config": cfg, "versions": versions(), "regimes": {}}
        for regime, overrides in cfg["regimes"].items():
            sub = copy.deepcopy({k: v for k, v in cfg.items() if k != "regimes"})
            for dotted, value in overrides.items():
                *parents, leaf = dotted.split(".")
                node = sub
                for part in parents:
                    node = node[part]
                node[leaf] = value
            log(f"regime {regime}: {overrides}")
            out["regimes"][regime] = run_experiment(sub, progress_factory=progress_factory,
                                                    log=log)
        return out
    t0 = time.perf_counter()
    stream = load_stream(cfg["dataset"], cfg["stream"], data_dir=cfg["data_dir"],
                         **cfg["stream_options"])
    load_seconds = time.perf_counter() - t0
    log(f"loaded {stream.name}: {stream.num_tasks} tasks, train sizes {stream.train.n.tolist()} "
        f"({load_seconds:.1f} s)")
    if cfg["epochs"] is not None:
        if not isinstance(cfg["epochs"], (int, float)) or cfg["epochs"] <= 0:
            raise ValueError(f"config['epochs'] must be a positive number; got {cfg['epochs']!r}")
        cfg["steps"] = max(1, int(np.ceil(cfg["epochs"] * int(stream.train.n.max())
                                          / cfg["batch_size"])))
        log(f"{cfg['epochs']} epoch(s) of {int(stream.train.n.max())} examples at batch "
            f"{cfg['batch_size']} = {cfg['steps']} steps per task")
    method = get_method(cfg["method"], **cfg["method_options"])
    grid = sweep_grid({**method.default_hparams, **cfg["hparams"]}, cfg["sweep"])
    S, G = cfg["seeds"], len(grid)
    # run g*S + s = grid point g with seed s: every point sees the same seeds
    keys = jax.random.split(jax.random.key(cfg["seed"]), S)
    keys = jax.numpy.concatenate([keys] * G)
    hparams = {name: np.repeat([point[name] for point in grid], S) for name in grid[0]}
    results = {"config": copy.deepcopy(cfg), "versions": versions(), "stream": {
        "name": stream.name, "num_tasks": stream.num_tasks, "classes": stream.classes,
        "train_sizes": stream.train.n.tolist(), "test_sizes": stream.test.n.tolist()},
        "load_seconds": load_seconds, "scenarios": {}}
    for name in cfg["scenarios"]:
        scenario = make_scenario(stream, name)
        model = make_model(cfg["model"], num_outputs=scenario.num_outputs,
                           num_heads=scenario.num_heads)
        trainer = make_trainer(model, method, optimizer=make_optimizer(
                                   cfg["optimizer"], steps_per_task=cfg["steps"]),
                               batch_size=cfg["batch_size"],
                               eval_chunk=cfg["eval_chunk"],
                               reset_optimizer=cfg["reset_optimizer"])
        data = prepare_data(stream, scenario, eval_chunk=cfg["eval_chunk"])
        bar = progress_factory(name, stream.num_tasks * cfg["steps"]) if progress_factory else None
        callback = None
        if bar is not None:
            last = {"t": -1, "done": 0}

            def callback(task, done, total, bar=bar, last=last):
                delta = done - (last["done"] if last["t"] == task else 0)
                last.update(t=task, done=done)
                bar.set_description(f"{name}-IL task {task + 1}/{stream.num_tasks}")
                bar.update(delta)
        res = run_stream(trainer, data, num_steps=cfg["steps"], keys=keys, hparams=hparams,
                         steps_per_call=250 if bar is not None else None, progress=callback,
                         keep_params=cfg["analysis"] == "flatness", on_nonfinite="mark")
        if bar is not None:
            bar.close()
        points = []
        for g, point in enumerate(grid):
            runs = slice(g * S, (g + 1) * S)
            gone = [{"seed": s, "task": int(res.diverged[g * S + s, 0]),
                     "step": int(res.diverged[g * S + s, 1])}
                    for s in range(S) if res.diverged[g * S + s, 0] >= 0]
            ok = np.flatnonzero(res.diverged[runs, 0] < 0)
            summary = summarise_finite(res.accuracy[runs][ok], res.init_accuracy[runs][ok])
            log(f"{name}-IL {point}: ACC {100 * summary['acc']['mean']:.2f} ± "
                f"{100 * summary['acc']['sem']:.2f} over {len(ok)} seed(s)"
                + (f"; DIVERGED (non-finite loss): {gone}" if gone else ""))
            points.append({
                "hparams": point,
                "accuracy": res.accuracy[runs].tolist(), "loss": res.loss[runs].tolist(),
                "init_accuracy": res.init_accuracy[runs].tolist(),
                "init_loss": res.init_loss[runs].tolist(),
                "final_train_loss": res.train_loss[runs, :, -50:].mean(-1).tolist(),
                "metrics": summary,
                "loss_metrics": summarise_finite(res.loss[runs][ok], res.init_loss[runs][ok]),
                "diverged": gone})
        log(f"{name}-IL: {G * S} vmapped run(s); compile {res.timings['compile_seconds']:.1f} s, "
            f"train+eval {res.timings['run_seconds']:.1f} s")
        # Best: fewest diverged runs first (an unstable point is never preferred), then ACC.
        best = max(range(G), key=lambda g: (-len(points[g]["diverged"]),
                                            np.nan_to_num(points[g]["metrics"]["acc"]["mean"],
                                                          nan=-np.inf)))
        entry = {"num_heads": scenario.num_heads, "num_outputs": scenario.num_outputs,
                 **points[best], "timings": res.timings}
        if cfg["sweep"]:
            entry["best_hparams"] = points[best]["hparams"]
            entry["sweep"] = points
        if cfg["analysis"] == "flatness":
            entry["analysis"] = flatness_analysis(model, data, res.task_params,
                                                  runs=range(best * S, best * S + S),
                                                  seed=cfg["seed"], log=log,
                                                  **cfg["analysis_options"])
        results["scenarios"][name] = entry
    results["total_seconds"] = time.perf_counter() - t0
    return results


__all__ = ["validate_config", "make_optimizer", "make_model", "run_experiment", "summarise",
           "summarise_finite",
           "sweep_grid", "versions", "task_eval_data", "flatness_analysis"]

"""How much of a task's conv-layer inputs RGO's projection protects (20-split CIFAR-100).

RGO (Liu & Liu 2022) grows each layer's H̄ by one row a step: the layer's mean input over the
step's batch (``rows="step"``; for a conv, the mean im2col patch over the batch *and* every
position) and projects later gradients with P = dim/tr(Q)·Q, Q = H̄⁻¹ (eq. 10). A later update
ΔW̄ = −η G P changes what the layer does to an old patch x by −η G P x, so ‖P x‖² / ‖x‖² is the
share of an old patch's "interference energy" the projection lets through (1 for P = I; a
random direction gets tr(P²)/dim ≥ 1).

**At initialisation** (default): the config's first task's 2000 steps of batch 10 run through
the reduced ResNet-18 at its initialisation (no training: the question is the geometry of the
inputs); each layer's Q is accumulated from the steps' mean rows as ``rgo_accumulate`` does
(and, for comparison, from each example's mean row, ``rows="example"``, and from each step's
whole input second moment, ``rows="moment"``), then measured on 50 other batches of the task.

**After training** (``--run DIR``, a finished or checkpointed ``rgo`` run of the config, e.g.
``runs/rgo_cifar_s0/rgo_seed0``): the run's last checkpoint's parameters and projection P (after
its last task), measured on 50 batches of each task named by ``--tasks``, at those parameters.

Per layer: the passed share for the patches themselves, for their centred part (patch − the
mean patch) and for the mean patch's direction.

    python experiments/rgo_conv_rows.py [--steps 2000] [--seed 0]
    python experiments/rgo_conv_rows.py --run runs/rgo_cifar_s0/rgo_seed0 --tasks 1,10,20

Prints JSON per layer.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from rgo_probe import layer_rows, task_batch

from cljax.checkpoint import read_latest
from cljax.config import load_config
from cljax.data import load_stream, make_scenario
from cljax.experiment import make_model
from cljax.layers import capture_rows
from cljax.methods import get_method
from cljax.training import prepare_data, stream_spec
from cljax.transforms.rgo import ROWS, init_rgo, rgo_accumulate, rgo_consolidate, step_rows
from cljax.workdir import CHECKPOINT_DIR, STATE_DIR


def passed_share(p: jax.Array, x: jax.Array) -> float:
    """Σ‖P x‖² / Σ‖x‖² over the rows of ``x``."""
    return float(jnp.sum((x @ p) ** 2) / jnp.sum(x ** 2))


def shares(p: jax.Array, x: jax.Array) -> dict:
    """The passed share of patches ``x`` ``[n, dim]``, of their centred part and of their mean's
    direction, and a random direction's (tr(P²)/dim)."""
    mean = jnp.mean(x, axis=0, keepdims=True)
    return {"patches": passed_share(p, x), "centred": passed_share(p, x - mean),
            "mean_direction": passed_share(p, mean),
            "random_direction": float(jnp.trace(p @ p) / p.shape[0])}


def _setup(*, first_task_only: bool, fel: bool):
    """The config, its model (with ``fel``, RGO's: the feature encoding layer for every task of
    the stream) and the stream's data (its first task only, or all)."""
    cfg = load_config("split_cifar100_rgo")
    tasks = cfg["stream_options"]["tasks"]
    stream = load_stream("cifar100", "split", tasks=tasks[:1] if first_task_only else tasks)
    scenario = make_scenario(stream, "task")
    model = make_model(cfg["model"], num_outputs=scenario.num_outputs,
                       num_heads=scenario.num_heads)
    data = prepare_data(stream, scenario, eval_chunk=cfg["eval_chunk"])
    if fel:
        model = get_method("rgo").model(model, stream_spec(model, data))
    return cfg, model, data


def at_initialisation(args) -> dict:
    """Q from a task's rows of every kind at the initial parameters, measured on that task."""
    cfg, model, data = _setup(first_task_only=True, fel=False)
    batch_at = task_batch(data, cfg["batch_size"])
    key = jax.random.key(args.seed)
    params = model.init(jax.random.fold_in(key, 1), batch_at(jax.random.fold_in(key, 2), 0))
    states = {rows: init_rgo(params, alpha=1.0, moment=rows == "moment") for rows in ROWS}
    layers = list(states["step"].running)

    @jax.jit
    def step(states, k):
        _, captured = capture_rows(model.logits_fn, params, batch_at(k, 0), layers=layers)
        return {rows: rgo_accumulate(st, step_rows(captured, rows))
                for rows, st in states.items()}, None

    keys = jax.random.split(jax.random.fold_in(key, 3), args.steps)
    states, _ = jax.lax.scan(step, states, keys)
    states = {rows: rgo_consolidate(st) for rows, st in states.items()}
    probe = layer_rows(model, layers, batch_at)(
        params, 0, jax.random.split(jax.random.fold_in(key, 4), args.probe_batches))
    out: dict = {"steps": args.steps, "probe_batches": args.probe_batches, "layers": {}}
    for name in layers:
        x = probe[name]
        out["layers"][name] = {"dim": int(x.shape[1]), "patches": int(x.shape[0]),
                               **{f"{rows}_rows": shares(st.projection[name], x)
                                  for rows, st in states.items()}}
    return out


def after_training(args) -> dict:
    """The last checkpoint's P against each named task's patches at its parameters."""
    state_dir = pathlib.Path(args.run) / CHECKPOINT_DIR / "task" / STATE_DIR
    read = read_latest(state_dir)     # read-only, digest checked
    if read is None:
        raise SystemExit(f"--run {args.run!r}: no checkpoint in {state_dir}")
    saved, last = read.payload, read.step
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[0]), saved["state"]["params"])
    projection = {n: jnp.asarray(np.asarray(p)[0])
                  for n, p in saved["state"]["mstate"]["projection"].items()}
    cfg, model, data = _setup(first_task_only=False, fel=True)
    batch_at = task_batch(data, cfg["batch_size"])
    tasks = [int(t) for t in args.tasks.split(",")]
    out: dict = {"run": str(args.run), "step": last, "tasks": tasks,
                 "tasks_consolidated": int(np.asarray(saved["state"]["mstate"]["count"])[0]),
                 "probe_batches": args.probe_batches, "layers": {}}
    key = jax.random.key(args.seed)
    rows = layer_rows(model, list(projection), batch_at)
    for t in tasks:
        probe = rows(params, t - 1, jax.random.split(jax.random.fold_in(key, t),
                                                     args.probe_batches))
        for name, p in projection.items():
            row = out["layers"].setdefault(name, {"dim": int(p.shape[0])})
            row[f"task_{t}"] = shares(p, probe[name])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--probe-batches", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=None, help="a checkpointed rgo run of split_cifar100_rgo")
    ap.add_argument("--tasks", default="1,10,20", help="with --run: tasks to measure (1-based)")
    args = ap.parse_args(argv)
    out = at_initialisation(args) if args.run is None else after_training(args)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

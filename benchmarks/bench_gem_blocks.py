"""GEM's step on A-GEM's permuted MNIST shapes: per-task reference gradients of the finished
tasks only (``reference_grads="seen"``, a ``lax.cond`` loop) against every block vmapped
(``"all"``).

17 tasks of permuted MNIST (``TFDS_DATA_DIR``), MLP 784-256-256-10 (Domain-IL), SGD 0.1, batch
10, 25 stored examples per class (250 per task, A-GEM's Table 4 setting). For each timed task k
the memory holds tasks 0 … k − 1 (their boundaries run, no training: the cost does not depend on
the weights) and ``fit`` runs ``--steps`` steps of task k, timed over ``--rounds`` interleaved
rounds (the median). Prints one JSON line per (task, mode), the mean over the timed tasks, and
the time of GEM's projection alone (:func:`cljax.transforms.gem_project` against 17 random
reference gradients of the model's shapes, every constraint active): the part of the step that
static shapes keep at full size whatever the task.

    python benchmarks/bench_gem_blocks.py [--tasks 1,4,8,12,16] [--steps 100] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from cljax.data import load_stream, make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data
from cljax.transforms import gem_project

MODES = ("seen", "all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="1,4,8,12,16")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    timed = [int(t) for t in args.tasks.split(",")]
    if not all(1 <= t < 17 for t in timed):
        parser.error(f"--tasks must lie in [1, 17) (a task after a boundary); got {args.tasks}")
    stream = load_stream("mnist", "permuted", num_tasks=17, seed=0)
    sc = make_scenario(stream, "domain")
    data = prepare_data(stream, sc)
    model = as_model(MLP((256, 256), sc.num_outputs))
    fits, states = {}, {}
    for mode in MODES:
        method = get_method("gem", per_class=25, reference_grads=mode)
        tr = make_trainer(model, method, optimizer=optax.sgd(0.1), batch_size=10)
        state = tr.init(jax.random.key(0), method.default_hparams, data)
        end_task = jax.jit(tr.end_task)
        fit = jax.jit(tr.fit, static_argnums=3)
        for t in range(max(timed)):
            state = end_task(state, data, jnp.asarray(t))
            if t + 1 in timed:
                states[mode, t + 1] = state
        jax.block_until_ready(fit(states[mode, timed[0]], data, jnp.asarray(timed[0]), args.steps))
        fits[mode] = fit
    times: dict = {key: [] for key in states}
    for _ in range(args.rounds):
        for (mode, task), state in states.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fits[mode](state, data, jnp.asarray(task), args.steps))
            times[mode, task].append((time.perf_counter() - t0) / args.steps)
    device = str(jax.devices()[0])
    for (mode, task), ts in times.items():
        ms = 1e3 * statistics.median(ts)
        print(json.dumps({"mode": mode, "task": task, "ms_per_step": round(ms, 3),
                          "rounds": args.rounds, "steps": args.steps, "device": device}))
    mean = {m: statistics.mean(statistics.median(times[m, t]) for t in timed) for m in MODES}
    print(json.dumps({"summary": "mean over the timed tasks", "tasks": timed,
                      **{f"{m}_ms_per_step": round(1e3 * mean[m], 3) for m in MODES},
                      "all_over_seen": round(mean["all"] / mean["seen"], 3), "device": device}))
    print(json.dumps({"part": "gem_project", "ms": round(1e3 * _projection_seconds(
        states["all", timed[0]].params, args.rounds), 3), "device": device}))


def _projection_seconds(params, rounds: int, calls: int = 50) -> float:
    """Median over ``rounds`` of the mean time of one jitted ``gem_project`` (17 references)."""
    keys = iter(jax.random.split(jax.random.key(1), 2 * len(jax.tree.leaves(params))))
    refs = jax.tree.map(lambda p: jax.random.normal(next(keys), (17,) + p.shape), params)
    grad = jax.tree.map(lambda p: -jax.random.normal(next(keys), p.shape), params)
    project = jax.jit(lambda g, r, m: gem_project(g, r, m, margin=0.5))
    mask = jnp.ones(17, bool)
    jax.block_until_ready(project(grad, refs, mask))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = project(grad, refs, mask)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


if __name__ == "__main__":
    main()

"""Step cost of the architecture family (PackNet, HAT, progressive networks) relative to a plain
Adam step (issue 21 targets: PackNet ≤ 1.1×, HAT ≤ 1.3×; progressive networks reported per T).

Two parts, each timing a method's ``fit`` (a ``lax.scan`` of ``--steps`` steps, one run, jitted)
in ``--rounds`` interleaved rounds (the median per case):

* ``split_mnist``: Split MNIST Task-IL (van de Ven protocol: MLP 784-400-400, a head per task,
  Adam 1e-3, batch 128), on task ``--task`` after the earlier tasks' boundaries (PackNet's
  pruning, HAT's masks, PNN's frozen columns), next to fine-tuning (``adam``);
* ``pnn_per_T``: progressive networks on Permuted MNIST (MLP 784-256-256, SGD 0.1, batch 10,
  A-GEM's protocol) with T = ``--pnn-tasks`` columns preallocated, on the first and the last
  task (the first column alone, all T), next to fine-tuning of the same MLP.

    python benchmarks/bench_architecture.py                # TFDS_DATA_DIR=../shared/tfds
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

SPLIT_CASES = ("none", "packnet", "hat", "pnn")


def _fit_at(method_name, model, data, optimizer, batch, task, warm_steps):
    """A jitted ``fit`` and the state it starts from on ``task``: the earlier tasks trained for
    ``warm_steps`` each and their boundaries run."""
    method = get_method(method_name)
    tr = make_trainer(model, method, optimizer=optimizer, batch_size=batch)
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    fit = jax.jit(tr.fit, static_argnums=3)
    end_task = jax.jit(tr.end_task)
    for t in range(task):
        state, _ = fit(state, data, jnp.asarray(t), warm_steps)
        state = end_task(state, data, jnp.asarray(t))
    return fit, state


def _time(cases, data, steps, rounds):
    """{case: median seconds per step} over interleaved rounds; ``cases``: name → (fit, state, task)."""
    for fit, state, task in cases.values():
        jax.block_until_ready(fit(state, data, jnp.asarray(task), steps))
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fit, state, task) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fit(state, data, jnp.asarray(task), steps))
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def split_mnist(args, device):
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    sc = make_scenario(stream, "task")
    data = prepare_data(stream, sc)
    model = as_model(MLP((400, 400), sc.num_outputs, num_heads=sc.num_heads))
    cases = {}
    for name in SPLIT_CASES:
        fit, state = _fit_at(name, model, data, optax.adam(1e-3), 128, args.task, 20)
        cases[name] = (fit, state, args.task)
    per_step = _time(cases, data, args.steps, args.rounds)
    for name in SPLIT_CASES:
        print(json.dumps({"part": "split_mnist", "method": name, "task": args.task + 1,
                          "ms_per_step": round(1e3 * per_step[name], 3),
                          "vs_adam": round(per_step[name] / per_step["none"], 3),
                          "steps": args.steps, "rounds": args.rounds, "device": device}))


def pnn_per_tasks(args, device):
    for num_tasks in args.pnn_tasks:
        stream = load_stream("mnist", "permuted", num_tasks=num_tasks, seed=0, pad_to=None,
                             permute_first=True, max_train_per_task=1000)
        sc = make_scenario(stream, "task")
        data = prepare_data(stream, sc)
        model = as_model(MLP((256, 256), sc.num_outputs, num_heads=sc.num_heads))
        cases = {}
        fit, state = _fit_at("none", model, data, optax.sgd(0.1), 10, 0, 0)
        cases["sgd"] = (fit, state, 0)
        for task in (0, num_tasks - 1):
            fit, state = _fit_at("pnn", model, data, optax.sgd(0.1), 10, task, 5)
            cases[f"pnn_task{task + 1}"] = (fit, state, task)
        per_step = _time(cases, data, args.steps, args.rounds)
        for name, seconds in per_step.items():
            print(json.dumps({"part": "pnn_per_T", "T": num_tasks, "case": name,
                              "ms_per_step": round(1e3 * seconds, 4),
                              "vs_sgd": round(seconds / per_step["sgd"], 2),
                              "steps": args.steps, "rounds": args.rounds, "device": device}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--task", type=int, default=4, help="0-based Split MNIST task timed")
    parser.add_argument("--pnn-tasks", type=int, nargs="*", default=[5, 10, 20], dest="pnn_tasks")
    parser.add_argument("--parts", default="split_mnist,pnn_per_T")
    args = parser.parse_args()
    if not 0 <= args.task < 5:
        parser.error(f"--task must be in [0, 5) (Split MNIST has 5 tasks), got {args.task}")
    device = str(jax.devices()[0])
    parts = args.parts.split(",")
    if "split_mnist" in parts:
        split_mnist(args, device)
    if "pnn_per_T" in parts:
        pnn_per_tasks(args, device)


if __name__ == "__main__":
    main()

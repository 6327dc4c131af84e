"""Step costs of issue 23's methods — MC-SGD, ORTHOG-SUBSPACE, REMIND — relative to plain SGD, and
the cost of SRC's sleep phase per task (issue 23 targets: REMIND's replay step and MC-SGD ≤ 1.5×).

Two parts, each timing jitted functions of one run in ``--rounds`` interleaved rounds (the median
per case):

* ``permuted``: Permuted MNIST in the orthog_subspace protocol (``permuted_mnist_rgo``: MLP
  784-256-256, SGD 0.1, batch 10, 20 tasks of 10,000 examples, one 10-way head), timed on task
  ``--task`` after the earlier tasks' boundaries: ``fit`` of ``--steps`` steps for fine-tuning
  (``sgd``), ER (one example per class and task, replay batch 10), ORTHOG-SUBSPACE (its default
  memory of one example per class, a past task's block replayed per step), REMIND (G the first
  hidden layer, 8 codebooks of 256 codes; one replayed example per current one as ER, and the
  paper's 50 as ``remind_50``) and MC-SGD (whose steps are fine-tuning's); and MC-SGD's phase
  (its ``end_task``: 125 steps of batch 16 on 6 points per segment). MC-SGD's cost per step is
  (a task's 1,000 steps + its phase) / 1,000, against fine-tuning's 1,000 steps.
* ``sleep``: SRC's sleep after the first task (15,000 time steps) of its MNIST protocol
  (``split_mnist_src``: MLP 784-1200-1200-10 without biases), against the task's 100 training
  steps; its later tasks sleep 15,000 · (1 + t/3) steps.

    python benchmarks/bench_geometry.py                # TFDS_DATA_DIR=../shared/tfds
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

PERMUTED_CASES = {
    "sgd": ("none", {}),
    "er": ("er", {"per_class": 1, "memory_batch_size": 10, "loss": "concat"}),
    "orthog": ("orthog", {}),
    "remind": ("remind", {"split": "first_layer", "capacity": 2000, "num_subvectors": 8,
                          "kmeans_iters": 10, "replay_samples": 1}),
    "remind_50": ("remind", {"split": "first_layer", "capacity": 2000, "num_subvectors": 8,
                             "kmeans_iters": 10, "replay_samples": 50}),
    "mcsgd": ("mcsgd", {"per_class": 1, "num_points": 6, "mc_steps": 125, "mc_batch_size": 16,
                        "memory_batch_size": 16}),
}


def _at_task(name, options, model, data, optimizer, batch, task, warm_steps):
    """A jitted ``fit``, a jitted ``end_task`` and the state after the earlier tasks (each
    trained ``warm_steps`` steps and its boundary run)."""
    method = get_method(name, **options)
    tr = make_trainer(model, method, optimizer=optimizer, batch_size=batch)
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    fit = jax.jit(tr.fit, static_argnums=3)
    end_task = jax.jit(tr.end_task)
    for t in range(task):
        state, _ = fit(state, data, jnp.asarray(t), warm_steps)
        state = end_task(state, data, jnp.asarray(t))
    return fit, end_task, state


def _median(fn, rounds):
    jax.block_until_ready(fn())
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def permuted(args, device):
    stream = load_stream("mnist", "permuted", num_tasks=20, seed=0, pad_to=None,
                         permute_first=True, max_train_per_task=10000)
    sc = make_scenario(stream, "domain")
    data = prepare_data(stream, sc)
    model = as_model(MLP((256, 256), sc.num_outputs, kernel_init="orthogonal", bias_init=0.1))
    task = jnp.asarray(args.task)
    built = {name: _at_task(method, options, model, data, optax.sgd(0.1), 10, args.task, 20)
             for name, (method, options) in PERMUTED_CASES.items()}
    for fit, _, state in built.values():      # compile every case before any timing
        jax.block_until_ready(fit(state, data, task, args.steps))
    per_step = {}
    for _ in range(args.rounds):   # interleaved: every case once per round
        for name, (fit, _, state) in built.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fit(state, data, task, args.steps))
            per_step.setdefault(name, []).append((time.perf_counter() - t0) / args.steps)
    per_step = {k: statistics.median(v) for k, v in per_step.items()}
    _, end_task, state = built["mcsgd"]
    phase = _median(lambda: end_task(state, data, task), args.rounds)
    for name, seconds in per_step.items():
        print(json.dumps({"part": "permuted", "case": name, "task": args.task + 1,
                          "ms_per_step": round(1e3 * seconds, 4),
                          "vs_sgd": round(seconds / per_step["sgd"], 3),
                          "steps": args.steps, "rounds": args.rounds, "device": device}))
    task_steps = 1000
    amortised = (task_steps * per_step["mcsgd"] + phase) / task_steps
    print(json.dumps({"part": "permuted", "case": "mcsgd_phase", "task": args.task + 1,
                      "phase_s": round(phase, 4),
                      "ms_per_step_with_phase": round(1e3 * amortised, 4),
                      "vs_sgd_with_phase": round(amortised / per_step["sgd"], 3),
                      "task_steps": task_steps, "rounds": args.rounds, "device": device}))


def sleep(args, device):
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
                         max_train_per_task=5000)
    sc = make_scenario(stream, "class")
    data = prepare_data(stream, sc)
    model = as_model(MLP((1200, 1200), sc.num_outputs, use_bias=False, dropout=0.25))
    optimizer = optax.sgd(0.1, momentum=0.5)
    fit, end_task, state = _at_task("src", {}, model, data, optimizer, 100, 0, 0)
    _, _, plain = _at_task("none", {}, model, data, optimizer, 100, 0, 0)
    task = jnp.asarray(0)
    trained, _ = fit(state, data, task, 100)
    seconds = _median(lambda: end_task(trained, data, task), args.sleep_rounds)
    train = _median(lambda: fit(plain, data, task, 100), args.sleep_rounds)
    print(json.dumps({"part": "sleep", "case": "src", "task": 1, "sleep_steps": 15000,
                      "sleep_s": round(seconds, 3),
                      "ms_per_sleep_step": round(1e3 * seconds / 15000, 4),
                      "task_training_s": round(train, 3),
                      "sleep_vs_training": round(seconds / train, 2),
                      "rounds": args.sleep_rounds, "device": device}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sleep-rounds", type=int, default=3, dest="sleep_rounds")
    parser.add_argument("--task", type=int, default=4, help="0-based permuted task timed")
    parser.add_argument("--parts", default="permuted,sleep")
    args = parser.parse_args()
    if not 1 <= args.task < 20:
        parser.error(f"--task must be in [1, 20) (a task after a boundary), got {args.task}")
    device = str(jax.devices()[0])
    parts = args.parts.split(",")
    if "permuted" in parts:
        permuted(args, device)
    if "sleep" in parts:
        sleep(args, device)


if __name__ == "__main__":
    main()

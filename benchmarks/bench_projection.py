"""Step cost of the gradient-projection methods relative to plain SGD (issue 11 targets), and
RGO's state bytes after 1, 5, 10 and 20 tasks.

Protocols: ``gpm_mnist`` (GPM's permuted MNIST: MLP 784-100-100-10 without biases, one head,
SGD 0.01, batch 10), ``rgo_mnist`` (the 20-task protocol of ``permuted_mnist_rgo.py``: MLP
784-256-256, batch 10), ``cnn`` (``cljax.nn.CNN(10)`` on CIFAR-shaped data, batch 64). Each
method's ``fit`` (a ``lax.scan`` of ``--steps`` steps) is timed after one task boundary filled its
state (``*_last_task``: after all boundaries but the last, OGD's fullest store), in
``--rounds`` interleaved rounds (median), next to the same model with plain SGD.

    python benchmarks/bench_projection.py                      # TFDS_DATA_DIR=../shared/tfds
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.data import ArrayDataset, make_scenario, permuted_tasks, split_tasks
from cljax.data.sources import load_split
from cljax.methods import get_method
from cljax.nn import CNN, MLP, as_model
from cljax.training import make_trainer, prepare_data

PROTOCOLS = {
    "gpm_mnist": dict(widths=(100, 100), bias=False, batch=10, tasks=10),
    "rgo_mnist": dict(widths=(256, 256), bias=True, batch=10, tasks=20),
    "cnn": dict(batch=64, tasks=5),
}
METHODS = {"sgd": ("none", {}), "rgo": ("rgo", {}), "rgo_unfused": ("rgo", {"fused_gradient": False}),
           "gpm_unfused": ("gpm", {"thresholds": (0.97,), "fused_gradient": False}),
           "rgo2": ("rgo2", {}), "gpm": ("gpm", {"thresholds": (0.97,)}),
           "ogd": ("ogd", {"per_task": 200}),
           "ogd_last_task": ("ogd", {"per_task": 200}),
           "ogd_unfused_last_task": ("ogd", {"per_task": 200, "fused_gradient": False}),
           "ogd_dense_last_task": ("ogd", {"per_task": 200, "factored": False}),
           "ogd_deferred": ("ogd", {"per_task": 200, "deferred": True}),
           "ogd_deferred_last_task": ("ogd", {"per_task": 200, "deferred": True})}
# "<method>_last_task": timed with the state the last task trains with (every boundary but the
# last passed: OGD's store then holds (tasks − 1) × 200 directions), not after one boundary


def _stream(name, tasks):
    if name == "cnn":
        rng = np.random.default_rng(0)
        ds = ArrayDataset(rng.integers(0, 255, (2000, 32, 32, 3), dtype=np.uint8),
                          rng.integers(0, 10, 2000).astype(np.int32), 10)
        return split_tasks(ds, ds, tasks=[[2 * t, 2 * t + 1] for t in range(tasks)])
    train = load_split("mnist", "train")
    test = load_split("mnist", "test")
    return permuted_tasks(train, test, num_tasks=tasks, pad_to=None, max_train_per_task=5000,
                          max_test_per_task=500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    for proto in args.protocols.split(","):
        spec = PROTOCOLS[proto]
        stream = _stream(proto, spec["tasks"])
        sc = make_scenario(stream, "task" if proto == "cnn" else "domain")
        data = prepare_data(stream, sc, eval_chunk=500)
        fits, states, sizes = {}, {}, {}
        for name in args.methods.split(","):
            method_name, options = METHODS[name]
            method = get_method(method_name, **options)
            if proto == "cnn":     # the method builds its own model from it (RGO's FEL)
                model = as_model(CNN(sc.num_outputs, num_heads=sc.num_heads))
            else:
                model = as_model(MLP(spec["widths"], sc.num_outputs, use_bias=spec["bias"]))
            tr = make_trainer(model, method, optimizer=optax.sgd(0.01),
                              batch_size=spec["batch"], eval_chunk=500)
            state = tr.init(jax.random.key(0), method.default_hparams, data)
            fit = jax.jit(tr.fit, static_argnums=3)
            end = jax.jit(tr.end_task)
            state, _ = fit(state, data, jnp.asarray(0), 20)
            state = end(state, data, jnp.asarray(0))
            if name.endswith("_last_task"):
                for t in range(1, spec["tasks"] - 1):
                    state = end(state, data, jnp.asarray(t))
            jax.block_until_ready(fit(state, data, jnp.asarray(1), args.steps))
            fits[name], states[name] = fit, state
            sizes[name] = int(sum(x.nbytes for x in jax.tree.leaves(state.mstate)))
            if name == "rgo" and proto == "rgo_mnist":   # constant in the number of tasks
                by_tasks, s = {}, state
                for t in range(1, spec["tasks"]):
                    s = end(s, data, jnp.asarray(t))
                    if t + 1 in (5, 10, 20):
                        by_tasks[t + 1] = int(sum(x.nbytes for x in jax.tree.leaves(s.mstate)))
                print(json.dumps({"protocol": proto, "rgo_state_bytes_after_tasks":
                                  {1: sizes[name], **by_tasks}}))
        times = {n: [] for n in fits}
        for _ in range(args.rounds):
            for n in fits:
                t0 = time.perf_counter()
                jax.block_until_ready(fits[n](states[n], data, jnp.asarray(1), args.steps))
                times[n].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["sgd"]) if "sgd" in times else None
        for n in fits:
            m = states[n].mstate
            filled = getattr(getattr(m, "store", m), "size", None)   # DeferredOGDState.store
            ms = 1e3 * statistics.median(times[n])
            print(json.dumps({"protocol": proto, "method": n, "ms_per_step": round(ms, 4),
                              "vs_sgd": None if base is None else round(ms / 1e3 / base, 3),
                              "method_state_bytes": sizes[n], "batch": spec["batch"],
                              **({} if filled is None else {"stored_directions": int(filled)}),
                              "steps": args.steps, "rounds": args.rounds,
                              "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main()

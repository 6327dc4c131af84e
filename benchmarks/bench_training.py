"""Training throughput on Split MNIST (van de Ven protocol: MLP 784-400-400, Adam 1e-3, batch 128).

Prints JSON lines:
* ``scan_vs_loop``: steps/s of ``fit`` (one ``lax.scan`` over the task) vs a Python loop calling
  a jitted single step;
* ``one_seed_stream``: wall time of one seed over 5 tasks × ``--steps`` steps, evaluation included,
  compilation excluded (reported separately);
* ``vmap_vs_sequential``: ``--seeds`` seeds as one vmapped program vs the same seeds run one after
  another (each compiled once beforehand);
* ``compute_floor``: a bare jitted ``value_and_grad`` of the same model and batch size, and the
  machine's matmul throughput: what one step cannot go below.

    python benchmarks/bench_training.py --steps 2000 --seeds 8 --vmap-steps 500
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax

from cljax.data import load_stream, make_scenario
from cljax.methods import none
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--vmap-steps", type=int, default=500, dest="vmap_steps",
                    help="steps per task for the vmapped-vs-sequential comparison")
    ap.add_argument("--scenario", default="task")
    args = ap.parse_args()

    stream = load_stream("mnist", "split")
    sc = make_scenario(stream, args.scenario)
    model = as_model(MLP((400, 400), sc.num_outputs, num_heads=sc.num_heads))
    trainer = make_trainer(model, none, optimizer=optax.adam(1e-3), batch_size=128)
    data = prepare_data(stream, sc)
    device = str(jax.devices()[0])

    # scan vs Python loop of jitted steps (same step function, 1 seed)
    state = trainer.init(jax.random.key(0), {}, data)
    task = jnp.asarray(0, jnp.int32)
    n = 1000
    scan = jax.jit(trainer.fit, static_argnums=3)
    step = jax.jit(lambda s, d, t: trainer.fit(s, d, t, 1))
    jax.block_until_ready(scan(state, data, task, n))
    jax.block_until_ready(step(state, data, task))
    best_scan = best_loop = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(scan(state, data, task, n))
        best_scan = min(best_scan, time.perf_counter() - t0)
        s = state
        t0 = time.perf_counter()
        for _ in range(n):
            s, _loss = step(s, data, task)
        jax.block_until_ready(s)
        best_loop = min(best_loop, time.perf_counter() - t0)
    print(json.dumps({"bench": "scan_vs_loop", "device": device, "steps": n,
                      "scan_steps_per_s": n / best_scan, "loop_steps_per_s": n / best_loop,
                      "speedup": best_loop / best_scan, "ms_per_step_scan": 1e3 * best_scan / n}))

    # compute floor: a bare jitted value_and_grad call, and matmul throughput
    batch = {"x": jax.random.uniform(jax.random.key(0), (128, *stream.input_shape)),
             "y": jnp.zeros(128, jnp.int32), "task": jnp.zeros(128, jnp.int32)}
    vg = jax.jit(jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.logits_fn(p, batch), batch["y"]).mean()))

    def per_call_ms(f, *a, n=200):
        jax.block_until_ready(f(*a))
        t0 = time.perf_counter()
        for _ in range(n):
            out = f(*a)
        jax.block_until_ready(out)
        return 1e3 * (time.perf_counter() - t0) / n

    a = jax.random.normal(jax.random.key(1), (1024, 1024))
    mm_ms = per_call_ms(jax.jit(lambda m: m @ m), a, n=50)
    n_params = sum(p.size for p in jax.tree.leaves(state.params))
    vg_ms = per_call_ms(vg, state.params)
    print(json.dumps({"bench": "compute_floor", "device": device,
                      "value_and_grad_ms": vg_ms,
                      "approx_gflops_per_step": 3 * 2 * 128 * n_params / 1e9,
                      "matmul_1024_gflop_per_s": 2 * 1024 ** 3 / mm_ms / 1e6}))

    # one seed end to end
    keys = jax.random.split(jax.random.key(0), args.seeds)
    res = run_stream(trainer, data, num_steps=args.steps, keys=keys[:1])
    print(json.dumps({"bench": "one_seed_stream", "device": device, "tasks": 5,
                      "steps_per_task": args.steps, "run_seconds": res.timings["run_seconds"],
                      "compile_seconds": res.timings["compile_seconds"]}))

    # vmapped seeds vs sequential single-seed runs
    vm = run_stream(trainer, data, num_steps=args.vmap_steps, keys=keys)
    seq = 0.0
    for r in range(args.seeds):
        seq += run_stream(trainer, data, num_steps=args.vmap_steps, keys=keys[r:r + 1]).timings[
            "run_seconds"]
    print(json.dumps({"bench": "vmap_vs_sequential", "device": device, "seeds": args.seeds,
                      "steps_per_task": args.vmap_steps, "vmapped_seconds": vm.timings["run_seconds"],
                      "sequential_seconds": seq,
                      "vmapped_over_sequential": vm.timings["run_seconds"] / seq}))


if __name__ == "__main__":
    main()

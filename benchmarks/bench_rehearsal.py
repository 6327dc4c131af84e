"""Step cost of the rehearsal methods relative to a plain Adam step (issue 10 targets).

Split MNIST, Class-IL, MLP 784-400-400-10, Adam 1e-3, current batch 128, memory 100 examples
per class (1000): each method's ``fit`` (a ``lax.scan`` of ``--steps`` steps, one run) is timed on
task 2 after task 1's boundary filled the memory, in ``--rounds`` interleaved rounds (the median
per method), next to fine-tuning at batch 128 and at batch 256 (the doubled batch: what ER's
128 current + 128 memory rows cost at least). Prints one JSON line per method and a summary.

    python benchmarks/bench_rehearsal.py                 # TFDS_DATA_DIR=../shared/tfds
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

CASES = {   # name: (method, options, batch size)
    "adam": ("none", {}, 128),
    "adam_b256": ("none", {}, 256),
    "er": ("er", {}, 128),
    "agem": ("agem", {}, 128),
    "derpp": ("derpp", {"memory_batch_size": 64}, 128),    # 128 current + 2 × 64 memory rows
    "derpp_b128x2": ("derpp", {}, 128),                    # mammoth's default sizes: 128 + 2×128
    "gem": ("gem", {}, 128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(CASES))
    args = parser.parse_args()
    cases = {k: v for k, v in CASES.items() if args.only is None or k in args.only.split(",")}
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    sc = make_scenario(stream, "class")
    data = prepare_data(stream, sc)
    model = as_model(MLP((400, 400), sc.num_outputs))
    fits, states, memory_bytes = {}, {}, {}
    for name, (method_name, options, batch) in cases.items():
        method = get_method(method_name, **options)
        tr = make_trainer(model, method, optimizer=optax.adam(1e-3), batch_size=batch)
        state = tr.init(jax.random.key(0), method.default_hparams, data)
        state, _ = jax.jit(tr.fit, static_argnums=3)(state, data, jnp.asarray(0), 10)
        state = jax.jit(tr.end_task)(state, data, jnp.asarray(0))
        fit = jax.jit(tr.fit, static_argnums=3)
        jax.block_until_ready(fit(state, data, jnp.asarray(1), args.steps))
        fits[name], states[name] = fit, state
        leaves = jax.tree.leaves(state.mstate)
        memory_bytes[name] = int(sum(x.nbytes for x in leaves))
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name in cases:
            t0 = time.perf_counter()
            jax.block_until_ready(fits[name](states[name], data, jnp.asarray(1), args.steps))
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["adam"]) if "adam" in times else None
    doubled = statistics.median(times["adam_b256"]) if "adam_b256" in times else None
    for name in cases:
        ms = 1e3 * statistics.median(times[name])
        print(json.dumps({"method": name, "ms_per_step": round(ms, 3),
                          "vs_adam": None if base is None else round(ms / 1e3 / base, 3),
                          "vs_adam_batch256": None if doubled is None else
                          round(ms / 1e3 / doubled, 3),
                          "method_state_bytes": memory_bytes[name],
                          "rounds": args.rounds, "steps": args.steps,
                          "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main()

"""Step cost of the sampling rules (issue 27): i.i.d. draws against shuffled epochs.

Shuffled epochs compute each example's position through a keyed Feistel permutation
(:mod:`cljax.permutation`) instead of one ``randint``; this measures what that costs inside a
training step. Split MNIST, Task-IL, MLP 784-400-400, Adam 1e-3: fine-tuning's ``fit`` (a
``lax.scan`` of ``--steps`` steps, one run) on task 1 at batch 128 and at batch 10 (the one-pass
protocols' batch, where the sampling is the largest share of a step), each rule in ``--rounds``
interleaved rounds, the median per case. Prints one JSON line per case.

    python benchmarks/bench_sampling.py                  # TFDS_DATA_DIR=../shared/tfds
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
from cljax.training import SAMPLINGS, make_trainer, prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    sc = make_scenario(stream, "task")
    data = prepare_data(stream, sc)
    model = as_model(MLP((400, 400), sc.num_outputs, num_heads=sc.num_heads))
    cases = {}
    for batch in (128, 10):
        for sampling in SAMPLINGS:
            tr = make_trainer(model, get_method("none"), optimizer=optax.adam(1e-3),
                              batch_size=batch, sampling=sampling)
            state = tr.init(jax.random.key(0), {}, data)
            fit = jax.jit(tr.fit, static_argnums=3)
            jax.block_until_ready(fit(state, data, jnp.asarray(1), args.steps))
            cases[(batch, sampling)] = (fit, state)
    times: dict = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (fit, state) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fit(state, data, jnp.asarray(1), args.steps))
            times[case].append((time.perf_counter() - t0) / args.steps)
    for (batch, sampling), values in times.items():
        ms = 1e3 * statistics.median(values)
        base = 1e3 * statistics.median(times[(batch, "iid")])
        print(json.dumps({"batch": batch, "sampling": sampling, "ms_per_step": round(ms, 4),
                          "vs_iid": round(ms / base, 3), "rounds": args.rounds,
                          "steps": args.steps, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main()

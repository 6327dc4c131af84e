"""Step cost of VCL (issue 22 target: ≤ 2× a deterministic network's step) in its two protocols.

Times ``fit`` (a ``lax.scan`` of ``--steps`` steps of task 1, one run, jitted) in ``--rounds``
interleaved rounds (the median per case), for fine-tuning (``none``: the deterministic network,
Adam) and VCL with 1 and with 10 Monte Carlo samples per step (the paper's 10), no coreset:

* ``permuted``: Permuted MNIST, MLP 784-100-100, one head, batch 256 (VCL's protocol);
* ``split``: Split MNIST Task-IL, MLP 784-256-256, a head per task, batch 12,000 (its "full
  batch").

    python benchmarks/bench_vcl.py                # TFDS_DATA_DIR=../shared/tfds
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

PROTOCOLS = {
    "permuted": dict(stream=("mnist", "permuted", {"num_tasks": 2, "seed": 0}), scenario="domain",
                     widths=(100, 100), batch=256),
    "split": dict(stream=("mnist", "split", {"tasks": [[0, 1], [2, 3]]}), scenario="task",
                  widths=(256, 256), batch=12000),
}
CASES = {"none": ("none", {}), "vcl_1_sample": ("vcl", {"train_samples": 1}),
         "vcl_10_samples": ("vcl", {"train_samples": 10})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--protocols", default="permuted,split")
    args = parser.parse_args()
    for name in args.protocols.split(","):
        p = PROTOCOLS[name]
        dataset, kind, options = p["stream"]
        stream = load_stream(dataset, kind, **options)
        sc = make_scenario(stream, p["scenario"])
        model = as_model(MLP(p["widths"], sc.num_outputs, num_heads=sc.num_heads,
                             kernel_stddev=0.1, bias_init=0.1))
        data = prepare_data(stream, sc)
        fits = {}
        for case, (method_name, opts) in CASES.items():
            method = get_method(method_name, **opts)
            tr = make_trainer(model, method, optimizer=optax.adam(1e-3), batch_size=p["batch"])
            state = tr.init(jax.random.key(0), dict(method.default_hparams), data)
            fit = jax.jit(tr.fit, static_argnums=3)
            jax.block_until_ready(fit(state, data, jnp.asarray(0), args.steps))
            fits[case] = (fit, state)
        times = {case: [] for case in fits}
        for _ in range(args.rounds):
            for case, (fit, state) in fits.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fit(state, data, jnp.asarray(0), args.steps))
                times[case].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["none"])
        for case, t in times.items():
            print(json.dumps({"bench": "vcl_step", "protocol": name, "case": case,
                              "batch": p["batch"], "widths": list(p["widths"]),
                              "ms_per_step": round(1e3 * statistics.median(t), 3),
                              "vs_deterministic": round(statistics.median(t) / base, 2),
                              "rounds": args.rounds, "steps": args.steps,
                              "backend": jax.default_backend()}), flush=True)


if __name__ == "__main__":
    main()

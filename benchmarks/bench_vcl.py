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

import jax
from fit_timing import compiled_fits, median_step_seconds

from cljax.data import load_stream, make_scenario
from cljax.nn import MLP, as_model
from cljax.training import prepare_data

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
        fits = compiled_fits(CASES, model, data, p["batch"], task=0, steps=args.steps)
        seconds = median_step_seconds(fits, data, task=0, steps=args.steps, rounds=args.rounds)
        base = seconds["none"]
        for case, t in seconds.items():
            print(json.dumps({"bench": "vcl_step", "protocol": name, "case": case,
                              "batch": p["batch"], "widths": list(p["widths"]),
                              "ms_per_step": round(1e3 * t, 3),
                              "vs_deterministic": round(t / base, 2),
                              "rounds": args.rounds, "steps": args.steps,
                              "backend": jax.default_backend()}), flush=True)


if __name__ == "__main__":
    main()

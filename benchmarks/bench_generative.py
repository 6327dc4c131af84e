"""Step cost of generative replay (issue 22 target: DGR ≤ 2.5× a plain Adam step, the generator's
own training included) against fine-tuning (``none``: the classifier alone, Adam).

Times ``fit`` (a ``lax.scan`` of ``--steps`` steps of the second task, one run, jitted) in
``--rounds`` interleaved rounds (the median per case):

* ``split_mnist``: van de Ven & Tolias 2019's Split MNIST, Class-IL, MLP 784-400-400, batch 128;
  DGR and DGR + distill with their generator (VAE 784-400-400-100, one Adam step per step, a
  replayed batch of 128);
* ``cifar_features``: the fully connected part of van de Ven et al. 2022's Split CIFAR-100
  (1024 frozen-conv features, 2000-2000, batch 256; random features of that shape, so no encoder
  is needed), DGR with a Gaussian VAE 1024-2000-2000-100 and BI-R (the classifier *is* the
  encoder of its VAE).

    python benchmarks/bench_generative.py            # TFDS_DATA_DIR=../shared/tfds
"""
from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from fit_timing import compiled_fits, median_step_seconds

from cljax.data import ArrayDataset, load_stream, make_scenario, split_tasks
from cljax.nn import MLP, as_model
from cljax.training import prepare_data


def _cifar_like_stream():
    rng = np.random.default_rng(0)

    def part(n):
        return ArrayDataset(rng.normal(size=(n, 1024)).astype(np.float32),
                            np.repeat(np.arange(20), n // 20).astype(np.int32), 20)

    return split_tasks(part(2000), part(400), tasks=[list(range(10)), list(range(10, 20))])


PROTOCOLS = {
    "split_mnist": dict(stream=lambda: load_stream("mnist", "split",
                                                   tasks=[[0, 1], [2, 3]]),
                        widths=(400, 400), batch=128,
                        cases={"none": ("none", {}), "dgr": ("dgr", {}),
                               "dgr_distill": ("dgr_distill", {})}),
    "cifar_features": dict(stream=_cifar_like_stream, widths=(2000, 2000), batch=256,
                           cases={"none": ("none", {}),
                                  "dgr": ("dgr", {"widths": (2000, 2000),
                                                  "likelihood": "gaussian",
                                                  "learning_rate": 1e-4}),
                                  "bir": ("bir", {})}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--protocols", default="split_mnist,cifar_features")
    args = parser.parse_args()
    for name in args.protocols.split(","):
        p = PROTOCOLS[name]
        stream = p["stream"]()
        sc = make_scenario(stream, "class")
        model = as_model(MLP(p["widths"], sc.num_outputs, num_heads=sc.num_heads))
        data = prepare_data(stream, sc)
        fits = compiled_fits(p["cases"], model, data, p["batch"], task=1, steps=args.steps)
        seconds = median_step_seconds(fits, data, task=1, steps=args.steps, rounds=args.rounds)
        base = seconds["none"]
        for case, t in seconds.items():
            print(json.dumps({"bench": "generative_step", "protocol": name, "case": case,
                              "batch": p["batch"], "widths": list(p["widths"]),
                              "ms_per_step": round(1e3 * t, 3), "vs_adam": round(t / base, 2),
                              "rounds": args.rounds, "steps": args.steps,
                              "backend": jax.default_backend()}), flush=True)


if __name__ == "__main__":
    main()

"""Record the accuracy / loss matrices of the architecture family (PackNet, HAT, progressive
networks; issue 21) on the short stream of ``record_every_method``: the oracle that later changes
to the trainer or to these methods change nothing.

Recorded once at commit fc61bd2 (the methods as first landed) with
``python tests/golden/record_architecture.py``; the output ``architecture_matrices.npz`` is what
``tests/test_golden.py::test_architecture_methods`` compares against. ``CASES`` is shared with
the test; ``main`` must not be rerun on later code (it would overwrite the reference). Task-IL
only (the family needs each example's task id); looped runs.
"""
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import record_every_method as every

from cljax.methods import get_method
from cljax.training import run_stream

CASES = {  # case: (method, options, hparams overrides, optimizer)
    "packnet": ("packnet", {"prune_ratio": 0.5, "retrain_steps": 3}, {}, "adam"),
    "hat": ("hat", {}, {}, "adam"),
    "hat_sgd": ("hat", {}, {"c": 0.0}, "sgd"),
    "pnn": ("pnn", {}, {}, "adam"),
}


def main():
    out = {}
    keys = jax.random.split(jax.random.key(every.SEED), 2)
    for case, (name, options, overrides, optimizer) in CASES.items():
        method = get_method(name, **options)
        trainer, data = every.build(method, "task", optimizer)
        res = run_stream(trainer, data, num_steps=every.STEPS, keys=keys, runs="map",
                         hparams={**method.default_hparams, **overrides})
        for field in every.FIELDS:
            out[f"{case}/task/{field}"] = getattr(res, field)
        print(case, np.round(res.accuracy[:, -1], 3).tolist())
    np.savez(pathlib.Path(__file__).with_name("architecture_matrices.npz"), **out)


if __name__ == "__main__":
    main()

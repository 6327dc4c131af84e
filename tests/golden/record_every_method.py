"""Record the accuracy / loss matrices of the methods the first golden file lacks (rehearsal and
projection) on a short stream: the oracle that the trainer's refactor (issue 21) changed nothing.

Recorded once at commit 175501f, before the trainer was split into parts, with
``PYTHONPATH=<a checkout of 175501f> python tests/golden/record_every_method.py`` run from that
checkout; the output ``every_method_matrices.npz`` is what
``tests/test_golden.py::test_rehearsal_and_projection_methods`` compares against. ``CASES`` and ``build`` are
shared with the test; ``main`` must not be rerun on later code (it would overwrite the
reference). Runs are looped (``runs="map"``, the CPU default), so a run's numbers do not depend
on the runs beside it.
"""
import pathlib
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream

STEPS = 8
SEED = 11
SCENARIOS = ("task", "class")
CASES = {  # case: (method, options, hparams overrides, optimizer, scenarios)
    "er": ("er", {"per_class": 5}, {}, "adam", SCENARIOS),
    "er_reservoir": ("er", {"memory": "reservoir", "capacity": 12}, {}, "adam", SCENARIOS),
    "agem": ("agem", {"per_class": 5}, {}, "adam", SCENARIOS),
    "gem": ("gem", {"per_class": 4}, {"margin": 0.5}, "adam", SCENARIOS),
    "lwf": ("lwf", {}, {"strength": 1.0}, "adam", SCENARIOS),
    "derpp": ("derpp", {"capacity": 12}, {}, "adam", SCENARIOS),
    "icarl": ("icarl", {"per_class": 4}, {}, "adam", ("class",)),
    "rgo": ("rgo", {}, {}, "sgd", SCENARIOS),
    "rgo2_unfused": ("rgo2", {"fused_gradient": False}, {}, "sgd", SCENARIOS),
    "gpm": ("gpm", {"thresholds": (0.97,), "num_examples": 16}, {}, "sgd", SCENARIOS),
    "ogd": ("ogd", {"per_task": 6}, {}, "sgd", SCENARIOS),
    "ogd_deferred": ("ogd", {"per_task": 6, "deferred": True}, {}, "sgd", SCENARIOS),
}
OPTIMIZERS = {"adam": lambda: optax.adam(1e-2), "sgd": lambda: optax.sgd(0.1)}
FIELDS = ("accuracy", "loss", "train_loss", "init_accuracy")


def stream():
    train = tiny_dataset(num_classes=6, n=90)
    test = tiny_dataset(num_classes=6, n=45, seed=1)
    return split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]])


def build(method, scenario, optimizer):
    """The trainer of the configured MLP (the method builds its own model from it)."""
    s = stream()
    sc = make_scenario(s, scenario)
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    trainer = make_trainer(model, method, optimizer=OPTIMIZERS[optimizer](), batch_size=8,
                           eval_chunk=16)
    return trainer, prepare_data(s, sc, eval_chunk=16)


def build_at_record_time(method, scenario, optimizer):
    """The trainer as 175501f built it (the method's ``model_options`` merged into the MLP)."""
    s = stream()
    sc = make_scenario(s, scenario)
    options = getattr(method, "model_options", None)   # Method.model since issue 21
    extra = options(s.num_tasks) if options else {}
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads, **extra))
    trainer = make_trainer(model, method, optimizer=OPTIMIZERS[optimizer](), batch_size=8,
                           eval_chunk=16)
    return trainer, prepare_data(s, sc, eval_chunk=16)


def main():
    out = {}
    keys = jax.random.split(jax.random.key(SEED), 2)
    for case, (name, options, overrides, optimizer, scenarios) in CASES.items():
        method = get_method(name, **options)
        for scenario in scenarios:
            trainer, data = build_at_record_time(method, scenario, optimizer)
            res = run_stream(trainer, data, num_steps=STEPS, keys=keys, runs="map",
                             hparams={**method.default_hparams, **overrides})
            for field in FIELDS:
                out[f"{case}/{scenario}/{field}"] = getattr(res, field)
            print(case, scenario, np.round(res.accuracy[:, -1], 3).tolist())
    np.savez(pathlib.Path(__file__).with_name("every_method_matrices.npz"), **out)


if __name__ == "__main__":
    main()

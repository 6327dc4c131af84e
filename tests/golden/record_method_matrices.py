"""Record every method's accuracy / loss matrices on a short stream (the protocol-change oracle).

Run once at commit 45a5439 (before the method protocol was widened, issue 10) with
``python tests/golden/record_method_matrices.py``; the output ``method_matrices.npz`` is what
``tests/test_methods.py::test_matrices_unchanged_by_the_protocol_change`` compares against, bit
for bit. At 45a5439 ``make_trainer`` also took ``input_shape=stream.input_shape`` (the only
difference of the recording run); ``build`` is shared with the test, ``main`` must not be rerun
on later code (it would overwrite the reference).
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

SMALL = {"num_examples": 16, "chunk_size": 8}
CASES = {  # name: (method, options, hparams overrides, reset_optimizer)
    "none": ("none", {}, {}, False),
    "none_reset": ("none", {}, {}, True),
    "joint": ("joint", {}, {}, False),
    "ewc": ("ewc", SMALL, {"strength": 30.0}, False),
    "ewc_true": ("ewc", {**SMALL, "fisher": "true"}, {"strength": 30.0}, False),
    "online_ewc": ("online_ewc", SMALL, {"strength": 30.0, "decay": 0.7}, False),
    "si": ("si", {}, {"strength": 3.0}, False),
    "mas": ("mas", SMALL, {"strength": 3.0}, False),
    "l2": ("l2", {}, {"strength": 0.3}, False),
    "kfac_ewc": ("kfac_ewc", SMALL, {"strength": 30.0, "decay": 0.9}, False),
    "kfac_ewc_sum": ("kfac_ewc", {**SMALL, "mode": "sum"}, {"strength": 30.0}, False),
    "kfac_ewc_multi": ("kfac_ewc", {**SMALL, "mode": "multi_task", "num_slots": 3},
                       {"strength": 30.0}, False),
    "ncl": ("ncl", SMALL, {"strength": 10.0, "learning_rate": 0.05}, False),
    "ncl_kfac": ("ncl_kfac", SMALL, {"strength": 10.0, "learning_rate": 0.05}, False),
    "ncl_kfac_unfused": ("ncl_kfac", {**SMALL, "fused_gradient": False},
                         {"strength": 10.0, "learning_rate": 0.05}, False),
}


def build(method, scenario, reset_optimizer):
    train = tiny_dataset(num_classes=6, n=90)
    test = tiny_dataset(num_classes=6, n=45, seed=1)
    stream = split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(stream, scenario)
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    trainer = make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=8,
                           eval_chunk=16, reset_optimizer=reset_optimizer)
    return trainer, prepare_data(stream, sc, eval_chunk=16)


def main():
    out = {}
    keys = jax.random.split(jax.random.key(7), 2)
    for case, (name, options, overrides, reset) in CASES.items():
        method = get_method(name, **options)
        for scenario in ("task", "class"):
            trainer, data = build(method, scenario, reset)
            res = run_stream(trainer, data, num_steps=10, keys=keys,
                             hparams={**method.default_hparams, **overrides})
            for field in ("accuracy", "loss", "train_loss", "init_accuracy"):
                out[f"{case}/{scenario}/{field}"] = getattr(res, field)
            print(case, scenario, res.accuracy[0, -1])
    np.savez(pathlib.Path(__file__).with_name("method_matrices.npz"), **out)


if __name__ == "__main__":
    main()

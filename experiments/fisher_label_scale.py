"""How much the Fisher's label choice scales EWC's λ, measured on Split MNIST (Task-IL).

van de Ven & Tolias 2019 estimated EWC's diagonal Fisher with the model's *predicted* (argmax)
label; their current code and cljax use the exact Fisher (expectation over the model's classes).
For a confident model the argmax label's gradient is ∝ (1 − p_max), so its squared gradient is
roughly (1 − p_max)/p_max times the exact Fisher's: far smaller, and the λ tuned on it far
larger. This script trains the protocol's MLP with plain fine-tuning (seed 0), and after each task
compares, on 1024 training examples of that task at θ*_t, the summed exact, true (one sampled label)
and argmax-label diagonal Fishers.

    python experiments/fisher_label_scale.py [--steps 2000] [--examples 1024]

Prints JSON: per task, the sums and the ratio exact / argmax.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import importance as imp
from cljax.data import load_stream, make_scenario
from cljax.experiment import make_model
from cljax.methods import get_method
from cljax.training import make_batch, make_trainer, prepare_data, run_stream


def total(tree) -> float:
    return float(sum(jnp.sum(x) for x in jax.tree.leaves(tree)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    scenario = make_scenario(stream, "task")
    model = make_model({"kind": "mlp", "widths": [400, 400]},
                       num_outputs=scenario.num_outputs, num_heads=scenario.num_heads)
    trainer = make_trainer(model, get_method("none"), optimizer=optax.adam(1e-3), batch_size=128, eval_chunk=1000)
    data = prepare_data(stream, scenario, eval_chunk=1000)
    res = run_stream(trainer, data, num_steps=args.steps, keep_params=True,
                     keys=jax.random.split(jax.random.key(args.seed), 1))
    out = {"steps": args.steps, "examples": args.examples, "tasks": []}
    for t in range(stream.num_tasks):
        params = jax.tree.map(lambda p, t=t: p[0, t], res.task_params)
        k_idx, k_lab = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), t))
        tasks = jnp.full((args.examples,), t, jnp.int32)
        idx = jax.random.randint(k_idx, (args.examples,), 0, data.train.n[t])
        batch = make_batch(data, data.train, tasks, idx)
        logits = model.logits_fn(params, batch)
        p_max = jnp.max(jax.nn.softmax(logits), axis=-1)
        exact = imp.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=256)
        true = imp.true_fisher_diagonal(model.logits_fn, params, batch, k_lab, chunk_size=256)
        argmax = imp.empirical_fisher_diagonal(
            model.logits_fn, params, {**batch, "y": jnp.argmax(logits, -1).astype(jnp.int32)},
            chunk_size=256)
        row = {"task": t + 1, "accuracy": float(res.accuracy[0, t, t]),
               "mean_p_max": float(jnp.mean(p_max)),
               "mean_1_minus_p_max": float(jnp.mean(1 - p_max)),
               "sum_exact": total(exact), "sum_true": total(true), "sum_argmax": total(argmax)}
        row["exact_over_argmax"] = row["sum_exact"] / row["sum_argmax"]
        out["tasks"].append(row)
    ratios = [r["exact_over_argmax"] for r in out["tasks"]]
    out["geometric_mean_exact_over_argmax"] = float(np.exp(np.mean(np.log(ratios))))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

"""Why the running Fisher's window moves EWC-as-A-GEM's-code on permuted MNIST (68.9 at windows
of 10, 72.2 at 50): which weights the rescaled Fisher protects, not how much it weighs.

A-GEM's code (Chaudhry et al. 2019, facebookresearch/agem ``model.py``) keeps RWalk's running
Fisher (Chaudhry et al. 2018, eq. 10) — squared minibatch gradients summed over a window of
``FISHER_UPDATE_AFTER`` steps, folded into an average of weight 0.9, so the last window weighs
0.9 of it — and rescales it to [0, 1] before EWC's penalty. This script trains A-GEM's
permuted-MNIST network (784-256-256, their initialisation) on the protocol's first task by plain
SGD (one shuffled pass at batch 10, lr 0.03, their EWC learning rate), feeds the *same*
gradients into running Fishers of every window given, then fine-tunes the second task from the
first task's end. Per window it reads the rescaled Fisher's total weight and its penalty
Σ F̂ Δθ² at the fine-tuned point (ratios to the first window's), the fraction of weights it
leaves below 1e-4 (unprotected whatever λ), and its cosine with the last window's rescaled
Fisher (give the longest last: the best-estimated).

    python experiments/running_fisher_window.py [--windows 10,50,500] [--seed 0]

Prints JSON (a cljax diagnostic, ``written_by`` says so).
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax
from optax.tree_utils import tree_max, tree_norm, tree_size, tree_sum, tree_vdot

from cljax import __version__
from cljax.data import load_stream, make_scenario
from cljax.experiment import make_model
from cljax.importance import init_running_fisher, minmax_normalize, update_running_fisher
from cljax.training import make_batch, prepare_data

CONFIG_MODEL = {"kind": "mlp", "widths": [256, 256], "kernel_stddev": 0.1, "bias_init": 0.1}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="10,50,500", help="comma-separated window lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learning-rate", type=float, default=0.03)
    ap.add_argument("--batch-size", type=int, default=10)
    args = ap.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",")]
    if not windows or min(windows) < 1:
        raise ValueError(f"--windows: positive integers expected; got {args.windows!r}")

    stream = load_stream("mnist", "permuted", num_tasks=2, seed=0, pad_to=None,
                         permute_first=True, max_train_per_task=55000)
    scenario = make_scenario(stream, "domain")
    model = make_model(CONFIG_MODEL, num_outputs=scenario.num_outputs,
                       num_heads=scenario.num_heads)
    data = prepare_data(stream, scenario, eval_chunk=1000)
    n = int(data.train_counts[0])
    steps = n // args.batch_size
    key = jax.random.key(args.seed)
    k_init, k_pass1, k_pass2 = jax.random.split(key, 3)
    params = model.init(k_init, make_batch(data, data.train, jnp.zeros((1,), jnp.int32),
                                           jnp.zeros((1,), jnp.int32)))

    def loss(p, batch):
        logits = model.logits_fn(p, batch)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))

    def one_pass(p, task, pass_key, fishers, windows):
        """One shuffled pass of SGD over ``task``, each step's gradient into every running Fisher
        of ``fishers`` (their ``windows``; none given: plain fine-tuning)."""
        order = jax.random.permutation(pass_key, n)[: steps * args.batch_size]
        order = order.reshape(steps, args.batch_size)

        def step(carry, xs):
            p, fishers = carry
            i, idx = xs
            batch = make_batch(data, data.train, jnp.full_like(idx, task), idx)
            g = jax.grad(loss)(p, batch)
            fishers = tuple(update_running_fisher(f, g, i, window=w, decay=0.9)
                            for f, w in zip(fishers, windows))
            p = jax.tree.map(lambda a, b: a - args.learning_rate * b, p, g)
            return (p, fishers), None

        (p, fishers), _ = jax.lax.scan(step, (p, fishers), (jnp.arange(steps), order))
        return p, fishers

    train = jax.jit(one_pass, static_argnums=(1, 4))
    fishers = tuple(init_running_fisher(params) for _ in windows)
    theta1, fishers = train(params, 0, k_pass1, fishers, tuple(windows))
    theta2, _ = train(theta1, 1, k_pass2, (), ())
    delta_sq = jax.tree.map(lambda a, b: jnp.square(a - b), theta2, theta1)
    reference = minmax_normalize(fishers[-1].running)   # the longest window given last
    out = {"written_by": f"cljax {__version__} experiments/running_fisher_window.py",
           "seed": args.seed, "steps_per_task": steps, "learning_rate": args.learning_rate,
           "windows": {}}
    size = tree_size(params)
    for w, f in zip(windows, fishers):
        scaled = minmax_normalize(f.running)
        out["windows"][str(w)] = {
            "raw_max_over_mean": float(tree_max(f.running) / (tree_sum(f.running) / size)),
            "rescaled_sum": float(tree_sum(scaled)),
            "penalty_at_finetuned": float(tree_vdot(scaled, delta_sq)),
            "fraction_below_1e-4": float(tree_sum(jax.tree.map(
                lambda x: jnp.sum(x < 1e-4), scaled)) / size),
            "cosine_with_last_window": float(
                tree_vdot(scaled, reference) / (tree_norm(scaled) * tree_norm(reference))),
        }
    first = out["windows"][str(windows[0])]
    for row in out["windows"].values():
        row["rescaled_sum_over_first"] = row["rescaled_sum"] / first["rescaled_sum"]
        row["penalty_over_first"] = row["penalty_at_finetuned"] / first["penalty_at_finetuned"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

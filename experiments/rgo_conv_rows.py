"""How much of a task's conv-layer inputs RGO's per-step mean rows protect (20-split CIFAR-100).

RGO (Liu & Liu 2022) grows each layer's H̄ by one row a step: the layer's mean input over the
step's batch (``rows="step"``; for a conv, the mean im2col patch over the batch *and* every
position) and projects later gradients with P = dim/tr(Q)·Q, Q = H̄⁻¹ (eq. 10). A later update
ΔW̄ = −η G P changes what the layer does to an old patch x by −η G P x, so ‖P x‖² / ‖x‖² is the
share of an old patch's "interference energy" the projection lets through (1 for P = I; a
random direction gets tr(P²)/dim ≥ 1).

This script runs the config's first task's 2000 steps of batch 10 through the reduced ResNet-18
at its initialisation (no training: the question is the geometry of the inputs), accumulates
each layer's Q from the steps' mean rows as ``rgo_accumulate`` does (and, for comparison, from
each example's mean row, ``rows="example"``, and from each step's whole input second moment,
``rows="moment"``), then measures on 50 other batches of the same task,
per layer: the passed share for the patches themselves, for their centred part (patch − the mean
patch) and for the mean patch's direction.

    python experiments/rgo_conv_rows.py [--steps 2000] [--seed 0]

Prints JSON per layer.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from cljax.config import load_config
from cljax.data import load_stream, make_scenario
from cljax.experiment import make_model
from cljax.layers import capture_rows
from cljax.training import make_batch, prepare_data
from cljax.transforms.rgo import ROWS, init_rgo, rgo_accumulate, rgo_consolidate, step_rows


def passed_share(p: jax.Array, x: jax.Array) -> float:
    """Σ‖P x‖² / Σ‖x‖² over the rows of ``x``."""
    return float(jnp.sum((x @ p) ** 2) / jnp.sum(x ** 2))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--probe-batches", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = load_config("split_cifar100_rgo")
    stream = load_stream("cifar100", "split", tasks=[cfg["stream_options"]["tasks"][0]])
    scenario = make_scenario(stream, "task")
    model = make_model(cfg["model"], num_outputs=scenario.num_outputs,
                       num_heads=scenario.num_heads)
    data = prepare_data(stream, scenario, eval_chunk=cfg["eval_chunk"])
    key = jax.random.key(args.seed)
    task = jnp.zeros((cfg["batch_size"],), jnp.int32)

    def batch_at(k):
        idx = jax.random.randint(k, (cfg["batch_size"],), 0, data.train.n[0])
        return make_batch(data, data.train, task, idx)

    params = model.init(jax.random.fold_in(key, 1), batch_at(jax.random.fold_in(key, 2)))
    states = {rows: init_rgo(params, alpha=1.0, moment=rows == "moment") for rows in ROWS}
    layers = list(states["step"].running)

    @jax.jit
    def step(states, k):
        _, captured = capture_rows(model.logits_fn, params, batch_at(k), layers=layers)
        return {rows: rgo_accumulate(st, step_rows(captured, rows))
                for rows, st in states.items()}, None

    keys = jax.random.split(jax.random.fold_in(key, 3), args.steps)
    states, _ = jax.lax.scan(step, states, keys)
    states = {rows: rgo_consolidate(st) for rows, st in states.items()}

    @jax.jit
    def patches(k):
        _, captured = capture_rows(model.logits_fn, params, batch_at(k), layers=layers)
        return {n: jnp.concatenate([r.reshape(-1, r.shape[-1]) for r in rows])
                for n, rows in captured.items()}

    probe = [patches(k) for k in jax.random.split(jax.random.fold_in(key, 4), args.probe_batches)]
    out: dict = {"steps": args.steps, "probe_batches": args.probe_batches, "layers": {}}
    for name in layers:
        x = jnp.concatenate([b[name] for b in probe])
        centred = x - jnp.mean(x, axis=0)
        mean_dir = jnp.mean(x, axis=0, keepdims=True)
        row = {"dim": int(x.shape[1]), "patches": int(x.shape[0])}
        for rows, st in states.items():
            p = st.projection[name]
            row[f"{rows}_rows"] = {"patches": passed_share(p, x), "centred": passed_share(p, centred),
                          "mean_direction": passed_share(p, mean_dir),
                          "random_direction": float(jnp.trace(p @ p) / p.shape[0])}
        out["layers"][name] = row
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

"""Where an old task's outputs move under RGO: its weights' change, or its inputs' drift.

RGO (Liu & Liu 2022) projects each layer's update away from the inputs it saw on old tasks, so a
layer's own weight change should leave an old task's pre-activations alone. But the inputs a
deep layer receives for an old task are the outputs of the layers below, which every later task
changes too (each stage is only partly protected: ``experiments/rgo_conv_rows.py``). For layer
l, old task i and later parameters θ_t, with X the layer's rows (im2col patches, a 1 for a bias)
on task i's examples and W̄ = [W; b]::

    X_t W̄_t − X_i W̄_i = X_i (W̄_t − W̄_i)  +  (X_t − X_i) W̄_t
                          weight change       input drift

both as shares of ‖X_i W̄_i‖² (their sum is the whole change, up to the cross term; for the
multi-head classifier, W̄'s columns of task i's head only). A projection that protected task i
perfectly would leave the first term 0 in every layer; the second is what no per-layer
projection of the layer's own update can stop.

The script trains the config ``split_cifar100_rgo``'s first ``--tasks`` tasks with ``--method``
(``rgo`` or ``none`` for the contrast), keeping θ*_t after every task (checkpointed in
``--workdir``, so a stopped run resumes), then measures the split on ``--probe-batches``
batches of task 1 (and of every task at the end).

    python experiments/rgo_drift.py --method rgo --tasks 6 --workdir runs/drift_rgo
    python experiments/rgo_drift.py --method none --tasks 6 --workdir runs/drift_none
    python experiments/rgo_drift.py --method rgo --alpha 0.01 --tasks 6 --workdir runs/drift_a001
    python experiments/rgo_drift.py --method rgo --option scale=alpha --tasks 6 --workdir runs/drift_owm

Prints JSON (and writes it to ``<workdir>/drift.json``).
"""
from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from rgo_probe import layer_rows, task_batch

from cljax.checkpoint import Checkpointer
from cljax.config import load_config, parse_value
from cljax.experiment import (
    build_scenario,
    load_experiment_stream,
    plan_runs,
    run_identity,
    run_scenario,
    validate_config,
)
from cljax.layers import get_layer, pack, param_layers


def split_change(x_old: jax.Array, x_new: jax.Array, w_old: jax.Array, w_new: jax.Array
                 ) -> dict:
    """The weight-change and input-drift shares of a layer's output change (module doc)."""
    base = jnp.sum((x_old @ w_old) ** 2)
    weight = jnp.sum((x_old @ (w_new - w_old)) ** 2) / base
    drift = jnp.sum(((x_new - x_old) @ w_new) ** 2) / base
    total = jnp.sum((x_new @ w_new - x_old @ w_old) ** 2) / base
    inputs = jnp.sum((x_new - x_old) ** 2) / jnp.sum(x_old ** 2)
    return {"weight_change": float(weight), "input_drift": float(drift),
            "total": float(total), "inputs_moved": float(inputs)}


def train(args) -> tuple:
    """The config's first ``args.tasks`` tasks trained with ``args.method`` (θ*_t kept)."""
    cfg = load_config("split_cifar100_rgo")
    cfg["method"] = args.method
    cfg["seed"] = args.seed
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.alpha is not None:
        cfg["hparams"]["alpha"] = args.alpha
    for option in args.option:
        name, _, value = option.partition("=")
        cfg["method_options"][name] = parse_value(value)
    cfg["stream_options"]["tasks"] = cfg["stream_options"]["tasks"][:args.tasks]
    cfg = validate_config(cfg)
    stream, _ = load_experiment_stream(cfg)
    setup = build_scenario(cfg, stream, "task")
    plan = plan_runs(cfg, setup.method)
    ckpt = Checkpointer(pathlib.Path(args.workdir) / "checkpoints", keep=2,
                        identity={**run_identity(cfg, "task"), "keep_params": True})
    res = run_scenario(cfg, setup, plan, checkpoint=ckpt, checkpoint_every=500,
                       resume=bool(ckpt.steps()), keep_params=True)
    return cfg, setup, res


def measure(cfg, setup, res, args) -> dict:
    """The split for task 1 after every later task, and for every task after the last."""
    theta = [jax.tree.map(lambda p, t=t: p[0, t], res.task_params) for t in range(args.tasks)]
    layers = list(param_layers(theta[0]))
    rows = layer_rows(setup.model, layers, task_batch(setup.data, cfg["batch_size"]))
    keys = jax.random.split(jax.random.key(args.seed + 1), args.probe_batches)
    pairs = [(0, t) for t in range(1, args.tasks)] + [(i, args.tasks - 1)
                                                       for i in range(1, args.tasks - 1)]
    acc = np.asarray(res.accuracy)[0]
    out: dict = {"method": args.method, "tasks": args.tasks, "seed": args.seed,
                 "steps": cfg["steps"], "hparams": cfg["hparams"],
                 "method_options": cfg["method_options"],
                 "probe_batches": args.probe_batches,
                 "accuracy": (100 * acc).round(1).tolist(), "pairs": []}
    heads, classes = setup.scenario.num_heads, setup.scenario.num_outputs

    def own(w, i):   # the head layer's columns of task i (the other heads never see its data)
        return w[:, i * classes:(i + 1) * classes] if w.shape[1] == heads * classes > classes \
            else w

    for i, t in pairs:
        old, new = rows(theta[i], i, keys), rows(theta[t], i, keys)
        split = {n: split_change(old[n], new[n], own(pack(get_layer(theta[i], n)), i),
                                 own(pack(get_layer(theta[t], n)), i)) for n in layers}
        out["pairs"].append({"task": i + 1, "after": t + 1, "layers": split})
    return out


def layer_group(name: str) -> str:
    """The reduced ResNet-18's part a layer belongs to (two blocks a stage)."""
    if "/" not in name:
        return "first conv" if name.startswith("Conv") else "classifier"
    block, conv = name.split("/")
    if conv == "Conv_2":
        return "1x1 shortcuts"
    return f"stage {int(block.split('_')[1]) // 2 + 1}"


def summary_table(out: dict) -> str:
    """Markdown: per pair (task, after) and part of the network, the range over its layers of
    the weight-change and input-drift shares."""
    lines = ["| task, after | part | weight change | input drift | whole change |",
             "|---|---|---|---|---|"]
    for pair in out["pairs"]:
        groups: dict = {}
        for name, split in pair["layers"].items():
            groups.setdefault(layer_group(name), []).append(split)
        for group, splits in groups.items():
            cells = [f"{min(x[k] for x in splits):.3g}–{max(x[k] for x in splits):.3g}"
                     for k in ("weight_change", "input_drift", "total")]
            lines.append(f"| {pair['task']}, {pair['after']} | {group} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="rgo", choices=["rgo", "rgo2", "none"])
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="per task (default: the config's)")
    ap.add_argument("--alpha", type=float, default=None, help="RGO's α (default: the config's)")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a method option, e.g. scale=alpha (repeatable)")
    ap.add_argument("--probe-batches", type=int, default=20)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown summary of <workdir>/drift.json and stop")
    args = ap.parse_args(argv)
    if args.table:
        out = json.loads((pathlib.Path(args.workdir) / "drift.json").read_text())
        print(summary_table(out))
        return out
    if args.tasks < 2:
        ap.error("--tasks must be at least 2")
    cfg, setup, res = train(args)
    out = measure(cfg, setup, res, args)
    text = json.dumps(out, indent=1)
    (pathlib.Path(args.workdir) / "drift.json").write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()

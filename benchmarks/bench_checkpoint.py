"""Checkpoint overhead: a Split MNIST stream with and without checkpoints (issue 12).

Task-IL, MLP 784-400-400, Adam 1e-3, batch 128, ``--steps`` per task, ``--seeds`` runs in one
program; method ``--method`` (its state is saved too: SI's ω, θ_start and penalty = 3 × params).
Runs the same stream ``--rounds`` times alternating: no checkpoint, checkpoint after every task,
checkpoint after every task and every ``--every`` steps; prints the per-task training time and
the checkpoint bytes and seconds as JSON lines.

    python benchmarks/bench_checkpoint.py                       # TFDS_DATA_DIR=../shared/tfds
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import jax
import optax

from cljax.checkpoint import Checkpointer
from cljax.data import load_stream, make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def _bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="si")
    args = parser.parse_args()
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    sc = make_scenario(stream, "task")
    data = prepare_data(stream, sc)
    method = get_method(args.method)
    tr = make_trainer(as_model(MLP((400, 400), sc.num_outputs, num_heads=sc.num_heads)), method,
                      optimizer=optax.adam(1e-3), batch_size=128)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    modes = {"none": None, "per_task": None, f"per_task_and_{args.every}_steps": args.every}
    seconds = {m: [] for m in modes}
    sizes = {}
    for _ in range(args.rounds):
        for mode, every in modes.items():
            with tempfile.TemporaryDirectory() as d:
                ckpt = None if mode == "none" else Checkpointer(pathlib.Path(d) / "c")
                chunk = args.every   # the same calls in every mode: only saving differs
                t0 = time.perf_counter()
                res = run_stream(tr, data, num_steps=args.steps, keys=keys,
                                 hparams=method.default_hparams, checkpoint=ckpt,
                                 checkpoint_every=every, steps_per_call=chunk)
                seconds[mode].append(sum(res.timings["task_seconds"]) / len(
                    res.timings["task_seconds"]))
                if ckpt is not None:
                    sizes[mode] = _bytes(pathlib.Path(d) / "c") / len(ckpt.steps())
                del res, t0
    base = statistics.median(seconds["none"])
    for mode in modes:
        per_task = statistics.median(seconds[mode])
        print(json.dumps({"mode": mode, "seconds_per_task": round(per_task, 3),
                          "overhead_fraction": round(per_task / base - 1, 4),
                          "bytes_per_checkpoint": sizes.get(mode), "seeds": args.seeds,
                          "steps_per_task": args.steps, "method": args.method,
                          "rounds": args.rounds, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main()

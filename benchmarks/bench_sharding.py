"""Sharded runs and sharded batches over 1, 2 and 4 devices (issue 13).

For each device count the script starts a worker process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the count is fixed when JAX starts) and
prints its JSON lines:

* ``split_mnist``: Split MNIST, Task-IL, MLP 784-400-400, Adam 1e-3, batch 128, ``--steps`` per
  task, ``--seeds`` runs of EWC sharded over the runs axis (``run_stream(mesh=make_mesh(N))``;
  R padded to a multiple of N with dummy runs); compile and train+eval seconds, mean ACC and
  the largest |Δ training loss| over the first task's steps and |ΔACC| against the one-device
  sharded run (and, on one device, the default path: ``runs="auto"``, a loop over the runs);
  rounding-level differences in the first task grow over hundreds of Adam steps (Adam divides
  near-zero gradients by their own size), as they do between the two one-device paths;
  With ``--batch-devices B`` (default 2) also a runs × batch mesh (N/B runs × B devices per
  run: every batch, the boundary Fisher's chunks and the evaluation split over B devices), with
  the backend compilations counted after the first call (0: nothing recompiles per task);
* ``fisher``: ``--estimators`` (empirical, exact Fisher diagonal, K-FAC factors with the exact
  Fisher) of that MLP on ``--examples`` MNIST training examples split over the N devices
  (``examples_sharding``, ``sharding=`` inside ``jit``), one chunk and chunks of 1000 per
  device; median seconds of ``--repeats`` calls, the ratio to one chunk on the same devices,
  the compiled program's collectives (``sharding.collectives``: none inside the chunk loop)
  and the largest relative difference to one device;
* ``lambda_max``: λ_max of the Hessian of the mean loss on the same examples (Lanczos, 20
  iterations, one chunk and chunks of 2000, a 0/1 weight per example), seconds of the second
  call (the first compiles) and the relative difference.

On a CPU the "devices" are forced host devices sharing the same cores: these figures show
correctness and the partitioning overhead, not a speed-up. With ``--devices-available`` on a
machine with real accelerators, the same worker measures them (``--counts`` up to their number).

    python benchmarks/bench_sharding.py                        # TFDS_DATA_DIR=../shared/tfds
    python benchmarks/bench_sharding.py --counts 1,2,4 --steps 200 --seeds 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from cljax import curvature as cv
    from cljax import importance as imp
    from cljax import sharding as shd
    from cljax.data import load_stream, make_scenario
    from cljax.methods import get_method
    from cljax.nn import MLP, as_model
    from cljax.training import make_trainer, prepare_data, run_stream

    n = args.worker
    assert jax.device_count() >= n, (jax.device_count(), n)
    mesh = shd.make_mesh(n)
    base = {"devices": n, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind}
    stream = load_stream("mnist", "split", tasks=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    sc = make_scenario(stream, "task")
    model = as_model(MLP((400, 400), sc.num_outputs, num_heads=sc.num_heads))
    method = get_method("ewc")
    tr = make_trainer(model, method, optimizer=optax.adam(1e-3), batch_size=128)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    hp = {"strength": np.geomspace(1.0, 1e4, args.seeds).astype(np.float32)}
    if "split_mnist" in args.parts:
        paths = [("sharded", dict(mesh=mesh))]
        if n == 1:   # the one-device default path (runs="auto": a loop over runs on the CPU)
            paths.append(("one_device_default", dict(runs="auto")))
        b = args.batch_devices
        if 1 < b <= n and n % b == 0:   # runs × batch: data parallelism within each run too
            paths.append((f"runs_x_batch_{n // b}x{b}", dict(mesh=shd.make_mesh(n, batch=b))))
        compiles = []

        def listener(event, duration, **kw):
            if event == "/jax/core/compile/backend_compile_duration":
                compiles.append(event)

        jax.monitoring.register_event_duration_secs_listener(listener)
        for path, kw in paths:
            data = prepare_data(stream, sc, mesh=kw.get("mesh"))
            at_call = []
            res = run_stream(tr, data, num_steps=args.steps, keys=keys, hparams=hp,
                             progress=lambda *a: at_call.append(len(compiles)), **kw)
            acc = res.accuracy
            print(json.dumps({**base, "bench": "split_mnist", "path": path, "method": "ewc",
                              "runs": args.seeds,
                              "mesh": res.timings.get("devices"),
                              "compiles_after_first_call": at_call[-1] - at_call[0],
                              "steps_per_task": args.steps,
                              "compile_s": round(res.timings["compile_seconds"], 2),
                              "train_eval_s": round(res.timings["run_seconds"], 2),
                              "acc_mean": float(np.mean(acc[:, -1])),
                              "accuracy": np.round(acc, 7).tolist(),
                              "task0_loss": res.train_loss[:, 0].tolist()}), flush=True)
            del data

    # a whole task's examples split over the devices (10k MNIST training images)
    x = stream.train.x[:, :2000].reshape((-1,) + stream.train.x.shape[2:])[:args.examples]
    tasks = np.repeat(np.arange(5, dtype=np.int32), 2000)[:args.examples]
    y = np.asarray(sc.label_table)[tasks, stream.train.y[:, :2000].reshape(-1)[:args.examples]]
    batch = {"x": x.astype(np.float32) / 255.0, "y": y.astype(np.int32), "task": tasks}
    params = model.init(jax.random.key(1), {k: jnp.asarray(v[:1]) for k, v in batch.items()})
    padded, weights, count = shd.pad_batch(batch, n)
    sharded = shd.put(padded, shd.examples_sharding(mesh))
    w = shd.put(jnp.asarray(weights), shd.examples_sharding(mesh))
    params = shd.put(params, shd.replicated(mesh))

    def timed(fn):
        jax.block_until_ready(fn())           # compile
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return out, float(np.median(times))

    if "fisher" in args.parts:
        ex = shd.examples_sharding(mesh)
        estimators = {
            "empirical": lambda p, b, c, s=ex: imp.empirical_fisher_diagonal(
                model.logits_fn, p, b, chunk_size=c, sharding=s),
            "exact": lambda p, b, c, s=ex: imp.exact_fisher_diagonal(
                model.logits_fn, p, b, chunk_size=c, sharding=s),
            "kfac_exact": lambda p, b, c, s=ex: imp.kfac_factors(
                model.logits_fn, p, b, fisher="exact", chunk_size=c, sharding=s),
        }
        for kind, fn in estimators.items():
            if kind not in args.estimators.split(","):
                continue
            with jax.enable_x64(True):     # a float64 reference on one device, one chunk
                p64 = jax.tree.map(lambda v: np.asarray(v, np.float64), shd.to_host(params))
                b64 = {k: (np.asarray(v, np.float64) if k == "x" else np.asarray(v))
                       for k, v in batch.items()}
                ref64 = [np.asarray(v) for v in jax.tree.leaves(fn(p64, b64, None, None))]
            for chunk in (None, 1000):
                fisher = jax.jit(lambda p, b, c=chunk, f=fn: f(p, shd.unpad(b, count), c))
                out, sec = timed(lambda: fisher(params, sharded))
                hlo = fisher.lower(params, sharded).compile().as_text()
                print(json.dumps({**base, "bench": "fisher", "estimator": kind,
                                  "examples": count, "chunk_size": chunk,
                                  "seconds": round(sec, 4),
                                  "collectives": shd.collectives(hlo),
                                  "max_rel_err_vs_float64": float(max(
                                      np.max(np.abs(np.asarray(v, np.float64) - r))
                                      / np.max(np.abs(r))
                                      for v, r in zip(jax.tree.leaves(out), ref64))),
                                  "sum": float(sum(jnp.sum(v) for v in jax.tree.leaves(out))),
                                  "leaves": [np.asarray(v).ravel()[::max(1, v.size // 4000)]
                                             .tolist() for v in jax.tree.leaves(out)][:1]}),
                      flush=True)
    if "lambda_max" in args.parts:
        for chunk in (None, 2000):
            mv = cv.make_task_matvec(model.logits_fn, params, sharded, chunk_size=chunk,
                                     weights=w)
            t0 = time.perf_counter()
            eig = cv.top_eigenvalues_matvec(mv, params, jax.random.key(2), num_iters=20,
                                            tol=None)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            eig = cv.top_eigenvalues_matvec(mv, params, jax.random.key(2), num_iters=20,
                                            tol=None)
            sec = time.perf_counter() - t0
            ex = shd.examples_sharding(mesh)
            hvp = jax.jit(lambda p, b, ww, c=chunk: cv.task_hvp(
                model.logits_fn, p, b, p, chunk_size=c, weights=ww, sharding=ex))
            found = shd.collectives(hvp.lower(params, sharded, w).compile().as_text())
            print(json.dumps({**base, "bench": "lambda_max", "examples": count, "num_iters": 20,
                              "hvp_collectives": found,
                              "chunk_size": chunk, "seconds": round(sec, 3),
                              "first_call_s": round(first, 3),
                              "lambda_max": float(eig.eigenvalues[0])}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="split_mnist,fisher,lambda_max")
    parser.add_argument("--batch-devices", type=int, default=2,
                        help="split_mnist: also a runs × batch mesh with this many devices "
                             "per run (where it divides the device count)")
    parser.add_argument("--estimators", default="empirical,exact,kfac_exact",
                        help="the estimators the fisher part times")
    parser.add_argument("--devices-available", action="store_true",
                        help="use the machine's own devices (no forced host devices)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    if args.worker is not None:
        return worker(args)
    ref = {}
    for n in (int(c) for c in args.counts.split(",")):
        env = dict(os.environ)
        if not args.devices_available:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={n}").strip()
            env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, "--worker", str(n), "--steps", str(args.steps),
               "--seeds", str(args.seeds), "--examples", str(args.examples),
               "--repeats", str(args.repeats), "--parts", ",".join(args.parts),
               "--estimators", args.estimators, "--batch-devices", str(args.batch_devices)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
        for line in proc.stdout.splitlines():
            row = json.loads(line)
            key = (row["bench"], row.get("estimator"), row.get("chunk_size"))
            if row["bench"] == "split_mnist":
                key = (row["bench"], None, None)     # every layout against the first row
            import numpy as np
            if row["bench"] == "split_mnist":
                acc = np.asarray(row.pop("accuracy"))
                loss0 = np.asarray(row.pop("task0_loss"))
                ref.setdefault(key, (acc, loss0))
                row["max_abs_dloss_task0_vs_1"] = float(np.abs(loss0 - ref[key][1]).max())
                row["max_abs_dacc_vs_1"] = float(np.abs(acc - ref[key][0]).max())
            elif row["bench"] == "fisher":
                leaf = np.asarray(row.pop("leaves")[0])
                ref.setdefault(key, leaf)
                row["max_rel_diff_vs_1"] = float(np.max(np.abs(leaf - ref[key]))
                                                 / np.max(np.abs(ref[key])))
                one = ref.setdefault(("one_chunk_s", n, row["estimator"]), row["seconds"])
                row["vs_one_chunk_same_devices"] = round(row["seconds"] / one, 3)
            else:
                ref.setdefault(key, row["lambda_max"])
                row["rel_diff_vs_1"] = abs(row["lambda_max"] - ref[key]) / abs(ref[key])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark the curvature tools on MLP 784-400-400-10 and MNIST; prints one JSON object per line.

    python benchmarks/bench_curvature.py [--sizes 1000,10000] [--chunk-size 1000]
        [--train-steps 300] [--long-iters 60] [--repeats 3]

The net is trained briefly first (``--train-steps`` Adam steps, lr 1e-3, batch 128, on the first
10,000 training images; 0 = random init). Then, for each data size N (examples taken from the
training split, chunks of ``--chunk-size``):

* ``hvp_vs_grad``: wall time of one whole-task Hessian-vector product (``task_hvp``, jitted) and
  of a jitted ``task_value_and_grad`` over the same data in the same chunks; their ratio
  (target <= 3). Also the GGN-vector product.
* ``lanczos_convergence``: one long Lanczos run of ``--long-iters`` HVPs gives the reference top
  eigenvalues; because Lanczos is nested, the Ritz values of the leading m×m block of T are those
  after m HVPs, so the number of HVPs to reach 1e-3 relative accuracy is read off directly
  (target <= 30 for k = 1).
* ``top_eigenvalues``: wall time of ``top_eigenvalues_matvec`` with the default stopping rule
  (``tol=1e-3``) for k = 1 and k = 5, after compilation, with the HVPs spent, the error
  against the long run and ``wall_over_hvps_own_time`` = wall / (HVPs × one HVP's time)
  (target <= 1.3: the stopping loop runs on device).
* ``trace``: Hutchinson with ``--trace-probes`` Rademacher probes against Hutch++ with a quarter
  and a third of those products: estimates, standard errors (Hutch++'s is that of its
  Hutchinson part given the sketch) and times (target: Hutch++'s standard error <= that of the
  plain probes with <= 1/3 of the HVPs); for the Hessian also ``ggn_split_trace`` (exact GGN
  trace from the exact Fisher diagonal + ``--trace-probes // 7`` Hutchinson probes of H − G), its
  time in HVP-equivalents (wall / one HVP).

Timings: after compilation, ``block_until_ready``, best of ``--repeats``. CPU timings on a shared
machine fluctuate; compare the ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import curvature as cv
from cljax.nn import MLP, as_model


def load_mnist(n: int):
    import tensorflow_datasets as tfds

    data_dir = os.environ.get("TFDS_DATA_DIR", "/work/shared/tfds")
    source = tfds.data_source("mnist", split="train", data_dir=data_dir)
    items = source.__getitems__(list(range(n)))
    x = np.stack([it["image"] for it in items]).reshape(n, -1).astype(np.float32) / 255.0
    y = np.asarray([it["label"] for it in items], np.int32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def train(model, params, data, steps: int, key):
    if steps == 0:
        return params
    opt = optax.adam(1e-3)

    def loss(p, b):
        return jnp.mean(cv.softmax_cross_entropy(model.logits_fn(p, b), b))

    def step(carry, k):
        p, s = carry
        idx = jax.random.randint(k, (128,), 0, data["x"].shape[0])
        b = {"x": data["x"][idx], "y": data["y"][idx]}
        g = jax.grad(loss)(p, b)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.jit(lambda p, ks: jax.lax.scan(step, (p, opt.init(p)), ks))(
        params, jax.random.split(key, steps))
    return params


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def ritz_top(alphas, betas, m, k):
    t = np.diag(alphas[:m]) + np.diag(betas[:m - 1], 1) + np.diag(betas[:m - 1], -1)
    return np.sort(np.linalg.eigvalsh(t))[::-1][:k]


def emit(record):
    print(json.dumps(record), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--long-iters", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace-probes", type=int, default=50,
                    help="Hutchinson probes to compare Hutch++ with (0 = skip)")
    ap.add_argument("--trace-curvatures", default="hessian,ggn",
                    help="matrices whose trace is estimated: hessian and/or ggn")
    ap.add_argument("--skip-lanczos", action="store_true",
                    help="only the HVP timing and the trace comparison")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    model = as_model(MLP((400, 400), 10))
    data = load_mnist(max(max(sizes), 10_000))
    params = model.init(jax.random.key(0), {"x": data["x"][:2]})
    params = train(model, params, data, args.train_steps, jax.random.key(1))
    dim = sum(p.size for p in jax.tree.leaves(params))
    emit({"bench": "setup", "model": "MLP 784-400-400-10", "num_params": int(dim),
          "train_steps": args.train_steps, "chunk_size": args.chunk_size,
          "backend": jax.default_backend(), "devices": str(jax.devices()),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version()})

    for n in sizes:
        batch = {k: a[:n] for k, a in data.items()}
        c = min(args.chunk_size, n)
        lf = model.logits_fn
        vg = jax.jit(lambda p, b: cv.task_value_and_grad(lf, p, b, chunk_size=c))
        hv = jax.jit(lambda p, b, v: cv.task_hvp(lf, p, b, v, chunk_size=c))
        gv = jax.jit(lambda p, b, v: cv.task_ggn_vp(lf, p, b, v, chunk_size=c))
        v = jax.tree.map(lambda p: jnp.ones_like(p) / np.sqrt(dim), params)
        t_grad = best_time(vg, params, batch, repeats=args.repeats)
        t_hvp = best_time(hv, params, batch, v, repeats=args.repeats)
        t_ggn = best_time(gv, params, batch, v, repeats=args.repeats)
        emit({"bench": "hvp_vs_grad", "n": n, "chunk_size": c, "value_and_grad_s": t_grad,
              "hvp_s": t_hvp, "ggn_vp_s": t_ggn, "hvp_over_grad": t_hvp / t_grad,
              "ggn_over_grad": t_ggn / t_grad})

        matvec = cv.make_task_matvec(lf, params, batch, chunk_size=c)
        if not args.skip_lanczos:
            t = time.perf_counter()
            res = cv.lanczos(matvec, params, jax.random.key(2), num_iters=args.long_iters)
            alphas, betas = np.asarray(res.alphas, np.float64), np.asarray(res.betas, np.float64)
            t_long = time.perf_counter() - t
            ref = ritz_top(alphas, betas, args.long_iters, 5)
            hvps_to = {}
            for k in (1, 5):
                hvps_to[k] = next((m for m in range(k, args.long_iters + 1)
                                   if np.all(np.abs(ritz_top(alphas, betas, m, k) - ref[:k])
                                             <= 1e-3 * np.abs(ref[:k]))), None)
            emit({"bench": "lanczos_convergence", "n": n, "long_iters": args.long_iters,
                  "long_run_s": t_long, "reference_top5": ref.tolist(),
                  "hvps_to_1e-3_k1": hvps_to[1], "hvps_to_1e-3_k5": hvps_to[5]})

            for k in (1, 5):
                run = lambda: cv.top_eigenvalues_matvec(matvec, params, jax.random.key(3), k=k,
                                                        num_iters=args.long_iters, tol=1e-3)
                out = run()  # compiles the Lanczos program for this matvec
                times, hvp_times = [], []
                for _ in range(args.repeats):   # interleaved with one HVP (the load drifts)
                    t = time.perf_counter()
                    jax.block_until_ready(hv(params, batch, v))
                    hvp_times.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    out = run()
                    jax.block_until_ready(out.eigenvalues)
                    times.append(time.perf_counter() - t)
                t_hvp_here = min(hvp_times)
                err = np.abs(np.asarray(out.eigenvalues, np.float64) - ref[:k]) / np.abs(ref[:k])
                emit({"bench": "top_eigenvalues", "n": n, "k": k, "tol": 1e-3, "wall_s": min(times),
                      "num_hvps": out.num_matvecs, "converged": out.converged,
                      "eigenvalues": np.asarray(out.eigenvalues).tolist(),
                      "max_rel_err_vs_long_run": float(err.max()),
                      "hvp_s": t_hvp_here, "wall_over_hvp": min(times) / t_hvp_here,
                      "wall_over_hvps_own_time": min(times) / (out.num_matvecs * t_hvp_here)})

        for curvature in (args.trace_curvatures.split(",") if args.trace_probes else []):
            p = args.trace_probes
            tmv = (matvec if curvature == "hessian" else
                   cv.make_task_matvec(lf, params, batch, curvature=curvature, chunk_size=c))
            hut = jax.jit(lambda k: cv.hutchinson_trace(tmv, params, k, num_samples=p))
            est = hut(jax.random.key(4))
            t_h = best_time(hut, jax.random.key(4), repeats=1)
            rec = {"bench": "trace", "n": n, "curvature": curvature, "hutchinson_probes": p,
                   "hutchinson_trace": float(est.trace), "hutchinson_stderr": float(est.stderr),
                   "hutchinson_s": t_h}
            for sketch in ("random", "krylov"):
                for m in sorted({max(6, p // 4), p // 3}):
                    hpp = jax.jit(lambda k, m=m, sk=sketch: cv.hutchpp_trace(
                        tmv, params, k, num_matvecs=m, sketch=sk))
                    e = hpp(jax.random.key(5))
                    tag = f"hutchpp_{sketch}_{m}"
                    rec[f"{tag}_trace"] = float(e.trace)
                    rec[f"{tag}_stderr"] = float(e.stderr)
                    rec[f"{tag}_s"] = best_time(hpp, jax.random.key(5), repeats=1)
                    rec[f"{tag}_stderr_over_hutchinson"] = float(e.stderr / est.stderr)
            if curvature == "hessian":
                q = max(1, p // 7)     # each probe of H − G costs one HVP and one GGN-vp
                gs = lambda k: cv.ggn_split_trace(lf, params, batch, k, num_samples=q,
                                                  chunk_size=c)
                e = gs(jax.random.key(6))
                t_gs = time.perf_counter()
                jax.block_until_ready(gs(jax.random.key(6)).trace)
                t_gs = time.perf_counter() - t_gs
                rec.update({f"ggn_split_{q}_trace": float(e.trace),
                            f"ggn_split_{q}_stderr": float(e.stderr),
                            f"ggn_split_{q}_s": t_gs,
                            f"ggn_split_{q}_s_over_hutchinson": t_gs / t_h,
                            f"ggn_split_{q}_hvp_equivalents": t_gs / t_hvp,
                            f"ggn_split_{q}_stderr_over_hutchinson": float(e.stderr / est.stderr)})
            emit(rec)


if __name__ == "__main__":
    main()

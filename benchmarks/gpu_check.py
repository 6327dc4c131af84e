"""One-script device check: prints one JSON object per line (run through ``gpu_check.sh``).

    python benchmarks/gpu_check.py [--small] [--only NAME,...] [--workdir DIR]

Checks (each line has ``"check"``; a failing check prints ``"error"`` and the others still run):

* ``setup`` — backend, devices, versions.
* ``cli_split_mnist`` — ``cljax run split_mnist --steps N --seeds 1
  --scenarios task --no-progress`` (one seed-run of the protocol, N = 2000) and the same with
  ``--seeds 8``: run seconds of each and the vmapped-seeds speed-up, 8 × t(1 seed) / t(8 seeds)
  (target >= 4 on a GPU; ≈ 1 on a 2-core CPU, which has no idle parallelism to fill).
* ``cli_permuted_mnist_task`` — one Permuted MNIST task of the protocol (5000 steps) via the CLI
  (``--set stream_options.num_tasks=1``).
* ``cifar_cnn_step`` — ``cljax.nn.CNN(10, channels=(32, 64), hidden=256)``, batch 128, one
  training step (gather, value_and_grad, Adam) jitted alone and inside the vmapped scan that
  ``run_stream`` compiles (per step), and which convolution path the backend takes.
* ``estimators`` — MLP 784-400-400-10 on N = 10,000 MNIST-shaped random examples (chunks of
  500): a jitted value_and_grad and the empirical / true / exact Fisher, MAS and K-FAC estimators
  with their ratio to it; plus the exact Fisher of the CIFAR CNN on 512 examples.
* ``lanczos`` — λ_max of the Hessian of the same MLP at N = 10,000 (chunks of 1,000):
  ``top_eigenvalues_matvec`` wall time, HVPs, and wall / (HVPs × one HVP).

``--small`` shrinks every size (CPU / CI: a few minutes at most): 10 CLI steps, 2 seeds in the
vmapped comparison, batch 16, N = 500.
Timings: after compilation, ``block_until_ready``, best of a few repetitions.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def emit(record):
    print(json.dumps(record), flush=True)


def best_time(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def _run_seconds(workdir: pathlib.Path) -> dict:
    res = json.loads((workdir / "results.json").read_text())
    timings = next(iter(res["scenarios"].values())).get("timings", {})
    return {"run_seconds": timings.get("run_seconds"),
            "compile_seconds": timings.get("compile_seconds"),
            "total_seconds": res.get("total_seconds")}


def cli(config: str, steps: int, seeds: int, workdir: pathlib.Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "cljax.cli", "run", config,
           "--steps", str(steps), "--seeds", str(seeds), "--scenarios", "task", "--no-progress",
           "--workdir", str(workdir), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"command": " ".join(["cljax"] + cmd[3:]), "wall_seconds": wall,
            **_run_seconds(workdir)}


def check_cli_split_mnist(args, tmp):
    steps = 10 if args.small else 2000
    seeds = 2 if args.small else 8
    one = cli("split_mnist", steps, 1, tmp / "split1")
    many = cli("split_mnist", steps, seeds, tmp / f"split{seeds}")
    speedup = seeds * one["run_seconds"] / many["run_seconds"]
    emit({"check": "cli_split_mnist", "steps": steps, "one_seed": one,
          f"{seeds}_seeds": many, "vmapped_seeds": seeds, "vmapped_speedup": speedup})


def check_cli_permuted(args, tmp):
    steps = 10 if args.small else 5000
    out = cli("permuted_mnist", steps, 1, tmp / "perm", "--set", "stream_options.num_tasks=1")
    emit({"check": "cli_permuted_mnist_task", "steps": steps, **out})


def check_cnn_step(args, tmp):
    from bench_conv import make_fit

    from cljax.nn import CNN, as_model
    from cljax.nn.conv import noncanonical_convolutions, use_canonical_conv

    batch = 16 if args.small else 128
    rng = np.random.default_rng(0)
    data_x = jnp.asarray(rng.integers(0, 256, (2000, 32, 32, 3)), jnp.uint8)
    data_y = jnp.asarray(rng.integers(0, 10, 2000), jnp.int32)
    init, step, fit = make_fit(as_model(CNN(10, channels=(32, 64), hidden=256)), data_x, data_y,
                               batch)
    state = jax.jit(init)(jax.random.key(0))
    step_j = jax.jit(step)
    vfit = jax.jit(jax.vmap(fit, in_axes=(0, None)), static_argnums=1)
    vstate = jax.tree.map(lambda a: a[None], state)
    length = 4
    t_jit = best_time(lambda: step_j(state, None))
    t_scan = best_time(lambda: vfit(vstate, length)) / length
    hlo = vfit.lower(vstate, length).compile().as_text()
    emit({"check": "cifar_cnn_step", "batch": batch, "jit_ms": 1e3 * t_jit,
          "vmap_scan_ms_per_step": 1e3 * t_scan, "vmap_scan_over_jit": t_scan / t_jit,
          "canonical_conv_path": use_canonical_conv(),
          "noncanonical_convs": noncanonical_convolutions(hlo)})


def check_estimators(args, tmp):
    from bench_importance import make_value_and_grad

    from cljax.importance import estimation
    from cljax.nn import CNN, MLP, as_model

    n = 500 if args.small else 10_000
    chunk = min(500, n)
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.random((n, 28, 28, 1)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}
    mlp = as_model(MLP((400, 400), 10))
    params = mlp.init(jax.random.key(0), batch)
    vg = make_value_and_grad(mlp.logits_fn, chunk)
    t_vg = best_time(lambda: vg(params, batch))
    rec = {"check": "estimators", "model": "MLP 784-400-400-10", "n": n, "chunk": chunk,
           "value_and_grad_s": t_vg}
    key = jax.random.key(1)
    for kind in ("empirical", "true", "exact", "mas", "kfac_true"):
        k = key if kind in ("true", "kfac_true") else None
        fn = functools.partial(estimation.estimate_jit, mlp.logits_fn, params, batch, k, kind=kind,
                               num_samples=1, chunk_size=chunk, implementation="auto")
        t = best_time(fn)
        rec[f"{kind}_s"] = t
        rec[f"{kind}_over_value_and_grad"] = t / t_vg
    nc = 32 if args.small else 512
    cchunk = min(128, nc)
    cb = {"x": jnp.asarray(rng.random((nc, 32, 32, 3)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 10, nc), jnp.int32)}
    cnn = as_model(CNN(10))
    cparams = cnn.init(jax.random.key(0), cb)
    cvg = make_value_and_grad(cnn.logits_fn, cchunk)
    t_cvg = best_time(lambda: cvg(cparams, cb), 2)
    fn = functools.partial(estimation.estimate_jit, cnn.logits_fn, cparams, cb, None, kind="exact",
                           num_samples=1, chunk_size=cchunk, implementation="auto")
    t_ex = best_time(fn, 2)
    rec.update({"cnn_n": nc, "cnn_chunk": cchunk, "cnn_value_and_grad_s": t_cvg,
                "cnn_exact_fisher_s": t_ex, "cnn_exact_over_value_and_grad": t_ex / t_cvg})
    emit(rec)


def check_lanczos(args, tmp):
    from cljax import curvature as cv
    from cljax.nn import MLP, as_model

    n = 500 if args.small else 10_000
    chunk = min(1000, n)
    rng = np.random.default_rng(2)
    batch = {"x": jnp.asarray(rng.random((n, 784)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}
    mlp = as_model(MLP((400, 400), 10))
    params = mlp.init(jax.random.key(0), batch)
    hv = jax.jit(lambda p, b, v: cv.task_hvp(mlp.logits_fn, p, b, v, chunk_size=chunk))
    v = jax.tree.map(jnp.ones_like, params)
    t_hvp = best_time(lambda: hv(params, batch, v))
    matvec = cv.make_task_matvec(mlp.logits_fn, params, batch, chunk_size=chunk)
    run = lambda: cv.top_eigenvalues_matvec(matvec, params, jax.random.key(3), k=1,
                                            num_iters=60, tol=1e-3).eigenvalues
    t = best_time(run, 2)
    out = cv.top_eigenvalues_matvec(matvec, params, jax.random.key(3), k=1, num_iters=60,
                                    tol=1e-3)
    emit({"check": "lanczos", "n": n, "chunk": chunk, "hvp_s": t_hvp, "wall_s": t,
          "num_hvps": out.num_matvecs, "lambda_max": float(out.eigenvalues[0]),
          "wall_over_hvps_own_time": t / (out.num_matvecs * t_hvp)})


CHECKS = {"cli_split_mnist": check_cli_split_mnist, "cli_permuted_mnist_task": check_cli_permuted,
          "cifar_cnn_step": check_cnn_step, "estimators": check_estimators,
          "lanczos": check_lanczos}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="small sizes (CPU / CI)")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks to run")
    ap.add_argument("--workdir", default=None, help="where the CLI runs write (default: a temp dir)")
    args = ap.parse_args(argv)
    names = [s for s in args.only.split(",") if s]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}; choose from {sorted(CHECKS)}")
    if "TFDS_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "tfds").is_dir():
        os.environ["TFDS_DATA_DIR"] = str(ROOT.parent / "shared" / "tfds")
    emit({"check": "setup", "backend": jax.default_backend(), "devices": str(jax.devices()),
          "jax": jax.__version__, "small": args.small, "cpu_count": os.cpu_count()})
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(args.workdir or d)
        for name in names:
            t = time.perf_counter()
            try:
                CHECKS[name](args, tmp)
            except Exception as e:
                failed += 1
                emit({"check": name, "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()[-3000:]})
            emit({"check": name, "seconds": time.perf_counter() - t})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

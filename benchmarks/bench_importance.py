"""Time the importance estimators against a jitted value_and_grad over the same examples.

Run:  python benchmarks/bench_importance.py [--n 10000] [--chunk 500] [--repeats 3]

Prints one JSON object per line: for each model (MLP 784-400-400-10 on N MNIST training images;
CNN(10) on random CIFAR-10-shaped data) and estimator, the wall time after compilation (best of
``--repeats`` rounds in which the baseline and every estimator run once, interleaved;
``block_until_ready``), its ratio to a jitted ``value_and_grad`` of the mean loss
over the same examples in the same chunks (``lax.scan``), and XLA's temp-buffer size of the
compiled program (``compiled.memory_analysis().temp_size_in_bytes``: the working memory beyond
inputs/outputs). The last line gives the process peak RSS (``resource.getrusage`` ru_maxrss).
MNIST comes from tfds (``TFDS_DATA_DIR``, default /work/shared/tfds); with ``--random-mnist``
random data of the same shape is used instead.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.importance import estimation
from cljax.nn import CNN, MLP, as_model


def load_mnist(n: int, random: bool) -> dict:
    if random:
        rng = np.random.RandomState(0)
        return {"x": rng.rand(n, 28, 28, 1).astype(np.float32),
                "y": rng.randint(0, 10, n).astype(np.int32)}
    import tensorflow_datasets as tfds
    data_dir = os.environ.get("TFDS_DATA_DIR", "/work/shared/tfds")
    src = tfds.data_source("mnist", split="train", data_dir=data_dir)
    ex = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [src[i] for i in range(n)]
    return {"x": np.stack([e["image"] for e in ex]).astype(np.float32) / 255.0,
            "y": np.array([e["label"] for e in ex], np.int32)}


def make_value_and_grad(logits_fn, chunk: int):
    """Mean softmax-CE loss and its gradient over N examples, in chunks inside one jit."""

    @jax.jit
    def vg(params, batch):
        n = batch["x"].shape[0]
        chunks = jax.tree.map(lambda v: v.reshape((n // chunk, chunk) + v.shape[1:]), batch)

        def body(carry, b):
            def loss(p):
                lg = logits_fn(p, b)
                return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(lg, b["y"])) / n
            l, g = jax.value_and_grad(loss)(params)
            return jax.tree.map(jnp.add, carry, (l, g)), None

        init = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        return jax.lax.scan(body, init, chunks)[0]

    return vg


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def temp_bytes(jitted, *args, **kwargs) -> int | None:
    try:
        return int(jitted.lower(*args, **kwargs).compile().memory_analysis().temp_size_in_bytes)
    except Exception:
        return None


def bench_model(label: str, model, params, batch, chunk: int, repeats: int, vmap_kinds):
    """Every estimator and the baseline timed in ``repeats`` interleaved rounds (best kept)."""
    f = model.logits_fn
    key = jax.random.PRNGKey(0)
    vg = make_value_and_grad(f, chunk)
    n = int(batch["x"].shape[0])
    common = {"model": label, "n": n, "chunk_size": chunk, "dtype": "float32",
              "device": jax.devices()[0].device_kind, "cpus": os.cpu_count()}
    runs = {"value_and_grad (baseline)": (lambda: vg(params, batch),
                                          temp_bytes(vg, params, batch), "auto")}
    kinds = [(k, "auto") for k in ("empirical", "true", "exact", "mas", "kfac_true")]
    kinds += [(k, "vmap") for k in vmap_kinds]
    for kind, impl in kinds:
        kw = dict(kind=kind, num_samples=1, chunk_size=chunk, implementation=impl)
        k = key if kind in ("true", "kfac_true") else None
        fn = functools.partial(estimation.estimate_jit, f, params, batch, k, **kw)
        runs[(kind, impl)] = (fn, temp_bytes(estimation.estimate_jit, f, params, batch, k, **kw),
                              impl)
    best = {}
    for fn, _, _ in runs.values():
        jax.block_until_ready(fn())  # compile + warm up
    for r in range(repeats):
        for name, (fn, _, impl) in runs.items():
            if impl == "vmap" and r > 0:   # the vmap(grad) fallback is ~100x slower: once
                continue
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    t_vg = best["value_and_grad (baseline)"]
    for name, (_, mem, impl) in runs.items():
        est = name if isinstance(name, str) else name[0]
        print(json.dumps({**common, "estimator": est, "implementation": impl,
                          "seconds": best[name], "ratio": best[name] / t_vg,
                          "xla_temp_bytes": mem}), flush=True)


def chunk_loop_check(model, params, chunk: int, repeats: int) -> None:
    """Per-chunk time of an estimator over 4 chunks (a lax.scan) against one chunk (no loop),
    interleaved: the conv slow path inside loops would show here as a ratio >> 1."""
    rng = np.random.RandomState(2)
    mk = lambda n: {"x": jnp.asarray(rng.rand(n, 32, 32, 3), jnp.float32),
                    "y": jnp.asarray(rng.randint(0, 10, n), jnp.int32)}
    one, four = mk(chunk), mk(4 * chunk)
    fns = {}
    for kind in ("empirical", "exact"):
        for tag, b in (("one", one), ("four", four)):
            fns[(kind, tag)] = functools.partial(
                estimation.estimate_jit, model.logits_fn, params, b, None, kind=kind,
                num_samples=1, chunk_size=chunk, implementation="auto")
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[k] = min(best[k], (time.perf_counter() - t) / (4 if k[1] == "four" else 1))
    for kind in ("empirical", "exact"):
        print(json.dumps({"check": "chunk_loop", "estimator": kind, "chunk_size": chunk,
                          "one_chunk_s": best[(kind, "one")],
                          "per_chunk_in_scan_s": best[(kind, "four")],
                          "scan_over_one": best[(kind, "four")] / best[(kind, "one")]}),
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cnn-n", type=int, default=256)
    ap.add_argument("--cnn-chunk", type=int, default=128)
    ap.add_argument("--random-mnist", action="store_true")
    ap.add_argument("--skip-cnn", action="store_true")
    ap.add_argument("--skip-mlp", action="store_true")
    ap.add_argument("--no-vmap", action="store_true", help="skip the vmap(grad) fallback runs")
    ap.add_argument("--loop-check", action="store_true",
                    help="CNN: an estimator's chunk loop against one chunk (per chunk)")
    args = ap.parse_args()
    print(json.dumps({"jax": jax.__version__, "platform": platform.platform(),
                      "backend": jax.default_backend()}), flush=True)

    if not args.skip_mlp:
        data = load_mnist(args.n, args.random_mnist)
        batch = {"x": jnp.asarray(data["x"]), "y": jnp.asarray(data["y"])}
        mlp = as_model(MLP((400, 400), 10))
        params = mlp.init(jax.random.PRNGKey(0), batch)
        bench_model("MLP 784-400-400-10 / MNIST", mlp, params, batch, args.chunk, args.repeats,
                    vmap_kinds=() if args.no_vmap else ("empirical", "mas"))

    if not args.skip_cnn:
        rng = np.random.RandomState(1)
        cb = {"x": jnp.asarray(rng.rand(args.cnn_n, 32, 32, 3), jnp.float32),
              "y": jnp.asarray(rng.randint(0, 10, args.cnn_n), jnp.int32)}
        cnn = as_model(CNN(10))
        cparams = cnn.init(jax.random.PRNGKey(0), cb)
        bench_model("CNN(10) / CIFAR-10 shapes (random)", cnn, cparams, cb, args.cnn_chunk,
                    args.repeats, vmap_kinds=() if args.no_vmap else ("empirical",))
    if not args.skip_cnn and args.loop_check:
        chunk_loop_check(cnn, cparams, args.cnn_chunk, args.repeats)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)


if __name__ == "__main__":
    main()

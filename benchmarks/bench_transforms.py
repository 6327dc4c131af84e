"""Time a jitted training step with each cljax transform against plain Adam.

Model: MLP 784-400-400-10 (``cljax.nn.MLP((400, 400), 10)``), batch of random float32 data. A
step is ``value_and_grad`` of the mean cross-entropy + optimizer update + ``apply_updates``;
``--steps`` steps run inside one ``lax.scan`` (compiled once, excluded from timing) so that
per-step dispatch does not count. The optimizers are timed in many short interleaved rounds and
each one's best round is kept: on a shared 2-core VM, long rounds (500–2000 steps, 4–8 rounds)
gave ratios that moved by ±0.3 between back-to-back runs, 30 rounds of 100 steps by ≤ 0.07
(0.15 for the fused NCL K-FAC step).

Prints one JSON object per line (one per optimizer, then a summary with the ratios)::

    python benchmarks/bench_transforms.py --steps 100 --repeats 30
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import optax

from cljax import importance as imp_lib
from cljax import transforms as T
from cljax.nn import MLP, as_model
from cljax.types import KFACFactors


def _setup(batch: int, num_batches: int):
    model = as_model(MLP((400, 400), 10))
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(kx, (num_batches, batch, 784), jnp.float32)
    ys = jax.random.randint(ky, (num_batches, batch), 0, 10)
    params = model.init(kp, {"x": xs[0]})
    return model, params, xs, ys


def _optimizers(params):
    """(name, optax transform, CL state or None, its extra-argument name, value-and-grad function
    ``(loss_fn, cl_state, params, *args)`` or None for ``jax.value_and_grad``). Each CL state has
    had its task boundaries before timing."""
    imp = jax.tree.map(lambda p: jnp.abs(p) * 1e-2, params)
    factors = {}
    for name, node in params.items():
        n, m = node["kernel"].shape[0] + 1, node["kernel"].shape[1]
        factors[name] = KFACFactors(jnp.eye(n) * 0.5, jnp.eye(m) * 2.0)
    lr = 1e-3
    online = T.consolidate(T.init_penalty(params), params, imp, mode="online", decay=0.9)
    five = T.init_penalty(params)
    for t in range(5):
        five = T.consolidate(five, jax.tree.map(lambda x: x + 0.01 * t, params), imp,
                             mode="multi_task")
    kfac = T.consolidate(T.init_penalty(params, curvature="kfac"), params, factors)
    prior = dict(strength=1e3, damping=1.0)
    ncl_diag = T.ncl_consolidate(T.init_ncl(params), params, imp, **prior)
    ncl_kfac = T.ncl_consolidate(T.init_ncl(params, curvature="kfac"), params, factors, **prior)
    return [
        ("adam", optax.adam(lr), None, None, None),
        ("ewc_online+adam", T.quadratic_penalty_adam(lr, strength=1e3), online, "penalty_state",
         None),
        ("ewc_multitask+adam", T.quadratic_penalty_adam(lr, strength=1e3), five, "penalty_state",
         None),
        # SI: the same penalty + Adam, wrapped to accumulate the path integral every step
        ("si+adam", imp_lib.with_path_integral(T.quadratic_penalty_adam(lr, strength=1.0)),
         T.consolidate(T.init_penalty(params), params, imp, mode="online"), "penalty_state",
         None),
        ("kfac_penalty+adam", T.quadratic_penalty_adam(lr, strength=1e3), kfac, "penalty_state",
         None),
        ("sgd", optax.sgd(lr), None, None, None),
        ("ncl_diag+sgd", T.ncl(lr), ncl_diag, "ncl_state", None),
        ("ncl_kfac+sgd", T.ncl(lr), ncl_kfac, "ncl_state", None),
        ("ncl_kfac_fused+sgd", T.ncl(lr, preconditioned_gradients=True), ncl_kfac, "ncl_state",
         T.ncl_kfac_value_and_grad),
    ]


def _make_run(model, tx, xs, ys, steps: int, arg=None, value_and_grad=None):
    def loss_fn(params, x, y):
        logits = model.logits_fn(params, {"x": x})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, i, cl):
        params, state = carry
        j = i % xs.shape[0]
        if value_and_grad is None:
            loss, grads = jax.value_and_grad(loss_fn)(params, xs[j], ys[j])
        else:
            loss, grads = value_and_grad(loss_fn, cl, params, xs[j], ys[j])
        updates, state = tx.update(grads, state, params, **({arg: cl} if arg else {}))
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params, state, cl):
        (params, state), losses = jax.lax.scan(lambda c, i: step(c, i, cl), (params, state),
                                               jnp.arange(steps))
        return params, state, losses[-1]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--num-batches", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated optimizer names")
    args = ap.parse_args()

    model, params, xs, ys = _setup(args.batch, args.num_batches)
    runs = {}
    opts = _optimizers(params)
    if args.only:
        keep = set(args.only.split(","))
        opts = [o for o in opts if o[0] in keep or o[0] in ("adam", "sgd")]
    for name, tx, cl, arg, value_and_grad in opts:
        state = (tx.init(params), cl)
        run = _make_run(model, tx, xs, ys, args.steps, arg, value_and_grad)
        t0 = time.perf_counter()
        jax.block_until_ready(run(params, *state))  # compile + one warm run
        runs[name] = (run, state, time.perf_counter() - t0)

    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):  # interleaved rounds: each optimizer sees similar load
        for name, (run, state, _) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run(params, *state))
            best[name] = min(best[name], time.perf_counter() - t0)

    device = jax.devices()[0]
    for name, (_, _, first) in runs.items():
        print(json.dumps({"bench": "transforms", "optimizer": name, "steps": args.steps,
                          "batch": args.batch, "best_s": round(best[name], 4),
                          "ms_per_step": round(1e3 * best[name] / args.steps, 4),
                          "compile_and_first_run_s": round(first, 2),
                          "ratio_vs_adam": round(best[name] / best["adam"], 3)}))
    ratios = {name: round(best[name] / best["adam"], 3) for name in best}
    targets = {"ewc_online+adam": 1.15, "si+adam": 1.15, "ncl_diag+sgd": 1.3,
               "ncl_kfac_fused+sgd": 2.0}
    print(json.dumps({"bench": "transforms_summary", "device": device.device_kind,
                      "platform": device.platform, "cpus": jax.local_device_count(),
                      "machine": platform.machine(), "jax": jax.__version__,
                      "ratios_vs_adam": ratios,
                      "targets_met": {k: ratios[k] <= v for k, v in targets.items()
                                      if k in ratios}}))


if __name__ == "__main__":
    main()

"""Time convolutional training steps: jitted alone, inside lax.scan, vmapped scan, and PyTorch.

    python benchmarks/bench_conv.py [--models cnn,alexnet,resnet] [--batch 128] [--scan 4]
        [--rounds 5] [--native-scan] [--threads 2]

One step = a random batch gathered on device from a uint8 array (normalised), value_and_grad of
the mean softmax cross-entropy, Adam (lr 1e-3), apply_updates: a copy of ``cljax.training``'s
train step. For each model it times, **interleaved in ``--rounds`` rounds** within one process
(best round kept; on a shared machine only ratios from one run mean anything):

* ``jit``: the step as a jitted function called from Python (one step per call);
* ``scan``: ``--scan`` steps inside one ``lax.scan`` (per step);
* ``vmap_scan``: ``jax.jit(jax.vmap(fit))`` with one run, what ``run_stream`` compiles (per step);
* ``native_jit`` (and with ``--native-scan`` ``native_scan``): the same network with flax's
  ``nn.Conv`` (XLA's native convolution; its scanned form is the slow path, ~10 s a step);
* ``torch`` / ``torch_channels_last``: the same network in PyTorch on the CPU with
  ``--threads`` threads (only when ``torch`` is importable; it is not a dependency).

Prints one JSON object per line; the last line per model has the ratios.

``--layer`` instead compares ways to write one 3×3 conv (``--layer-shape B,H,Cin,Cout``, default
128,32,32,32, SAME), forward + the gradients w.r.t. input and kernel, jitted alone and per step
inside a ``lax.scan`` of ``--scan`` steps (and the scan fully unrolled): ``native``
(``lax.conv_general_dilated``, what ``nn.Conv`` does), ``canonical`` (:data:`canonical_conv_p`,
what ``cljax.nn.Conv`` does on the CPU), ``im2col`` (patches from 9 shifted slices, one matmul),
``split`` (3 column shifts concatenated, one matmul to 3·Cout, 3 row-shifted sums) and
``custom_vjp`` (native forward; input gradient a canonical conv, kernel gradient im2col ᵀ @ g —
fast, but a ``custom_vjp`` has no forward-mode derivative, so no HVPs). XLA options are compared
by running the same command under ``XLA_FLAGS=...`` (e.g. ``--xla_cpu_use_onednn=true``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.nn import CNN, AlexNet, ResNet18, as_model
from cljax.nn.conv import noncanonical_convolutions


class NativeCNN(nn.Module):
    """cljax.nn.CNN with flax's nn.Conv (XLA's native convolution)."""

    num_outputs: int
    channels: tuple = (32, 64)
    hidden: int = 256

    @nn.compact
    def __call__(self, x, task=None, *, train=False):
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (3, 3))(x))
            x = nn.relu(nn.Conv(c, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_outputs)(x)


def make_fit(model, data_x, data_y, batch: int):
    opt = optax.adam(1e-3)

    def step(state, _):
        params, opt_state, key, i = state
        k_idx, k_drop = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(k_idx, (batch,), 0, data_x.shape[0])
        b = {"x": data_x[idx].astype(jnp.float32) / 255.0 - 0.5, "y": data_y[idx]}

        def loss(p):
            lg = model.train_logits_fn(p, b, k_drop)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lg, b["y"]))

        val, g = jax.value_and_grad(loss)(params)
        u, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, u), opt_state, key, i + 1), val

    def init(key):
        params = model.init(key, {"x": jnp.zeros((1,) + data_x.shape[1:], jnp.float32)})
        return (params, opt.init(params), key, jnp.zeros((), jnp.int32))

    def fit(state, steps):
        return jax.lax.scan(step, state, None, length=steps)

    return init, step, fit


def torch_step_fn(name: str, classes: int, batch: int, threads: int, channels_last: bool):
    import torch

    torch.set_num_threads(threads)
    tnn = torch.nn
    if name == "cnn":
        net = tnn.Sequential(
            tnn.Conv2d(3, 32, 3, padding=1), tnn.ReLU(), tnn.Conv2d(32, 32, 3, padding=1),
            tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(),
            tnn.Conv2d(64, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(4096, 256), tnn.ReLU(), tnn.Linear(256, classes))
    elif name == "alexnet":
        def blk(i, o, k, p):
            return [tnn.Conv2d(i, o, k, bias=False), tnn.BatchNorm2d(o, track_running_stats=False),
                    tnn.ReLU(), tnn.Dropout(p), tnn.MaxPool2d(2)]
        net = tnn.Sequential(
            *blk(3, 64, 4, 0.2), *blk(64, 128, 3, 0.2), *blk(128, 256, 2, 0.5), tnn.Flatten(),
            tnn.Linear(1024, 2048, bias=False), tnn.BatchNorm1d(2048, track_running_stats=False),
            tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(2048, 2048, bias=False),
            tnn.BatchNorm1d(2048, track_running_stats=False), tnn.ReLU(), tnn.Dropout(0.5),
            tnn.Linear(2048, classes, bias=False))
    else:
        class Block(tnn.Module):
            def __init__(self, i, o, s):
                super().__init__()
                self.c1 = tnn.Conv2d(i, o, 3, s, 1, bias=False)
                self.b1 = tnn.BatchNorm2d(o, track_running_stats=False)
                self.c2 = tnn.Conv2d(o, o, 3, 1, 1, bias=False)
                self.b2 = tnn.BatchNorm2d(o, track_running_stats=False)
                self.sc = (tnn.Sequential() if s == 1 and i == o else tnn.Sequential(
                    tnn.Conv2d(i, o, 1, s, bias=False), tnn.BatchNorm2d(o, track_running_stats=False)))

            def forward(self, x):
                out = torch.relu(self.b1(self.c1(x)))
                return torch.relu(self.b2(self.c2(out)) + self.sc(x))

        layers = [tnn.Conv2d(3, 20, 3, 1, 1, bias=False), tnn.BatchNorm2d(20, track_running_stats=False),
                  tnn.ReLU()]
        i = 20
        for stage in range(4):
            for b in range(2):
                o = 20 * 2 ** stage
                layers.append(Block(i, o, 2 if stage > 0 and b == 0 else 1))
                i = o
        layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(160, classes)]
        net = tnn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    data = torch.randint(0, 256, (5000, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, classes, (5000,))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)

    def step():
        idx = torch.randint(0, 5000, (batch,))
        x = (data[idx].float() / 255.0 - 0.5).contiguous(memory_format=fmt)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), labels[idx])
        loss.backward()
        opt.step()

    return step


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def emit(record):
    print(json.dumps(record), flush=True)


def bench_model(name: str, args, torch_ok: bool):
    classes = 10
    module = {"cnn": CNN(classes, channels=(32, 64), hidden=256),
              "alexnet": AlexNet(classes), "resnet": ResNet18(classes)}[name]
    rng = np.random.default_rng(0)
    data_x = jnp.asarray(rng.integers(0, 256, (5000, 32, 32, 3)), jnp.uint8)
    data_y = jnp.asarray(rng.integers(0, classes, 5000), jnp.int32)
    init, step, fit = make_fit(as_model(module), data_x, data_y, args.batch)
    state = jax.jit(init)(jax.random.key(0))
    step_j = jax.jit(step)
    fit_j = jax.jit(fit, static_argnums=1)
    vfit = jax.jit(jax.vmap(fit, in_axes=(0, None)), static_argnums=1)
    vstate = jax.tree.map(lambda a: a[None], state)
    hlo = vfit.lower(vstate, args.scan).compile().as_text()
    bad = noncanonical_convolutions(hlo)
    runs = {
        "jit": lambda: jax.block_until_ready(step_j(state, None)),
        "scan": lambda: jax.block_until_ready(fit_j(state, args.scan)),
        "vmap_scan": lambda: jax.block_until_ready(vfit(vstate, args.scan)),
    }
    per_call = {"jit": 1, "scan": args.scan, "vmap_scan": args.scan}
    if name == "cnn":
        ninit, nstep, nfit = make_fit(as_model(NativeCNN(classes)), data_x, data_y, args.batch)
        nstate = jax.jit(ninit)(jax.random.key(0))
        nstep_j = jax.jit(nstep)
        runs["native_jit"] = lambda: jax.block_until_ready(nstep_j(nstate, None))
        per_call["native_jit"] = 1
        if args.native_scan:
            nfit_j = jax.jit(nfit, static_argnums=1)
            runs["native_scan"] = lambda: jax.block_until_ready(nfit_j(nstate, 1))
            per_call["native_scan"] = 1
    if name == "cnn":   # evaluation: logits of 4 chunks in a lax.map vs one chunk alone
        lf = as_model(module).logits_fn
        xs = (data_x[:4 * args.batch].astype(jnp.float32) / 255.0 - 0.5).reshape(
            (4, args.batch) + data_x.shape[1:])
        ev_one = jax.jit(lambda p, x: jnp.argmax(lf(p, {"x": x}), -1))
        ev_map = jax.jit(lambda p, xs: jax.lax.map(lambda x: jnp.argmax(lf(p, {"x": x}), -1),
                                                   xs))
        runs["eval_chunk_jit"] = lambda: jax.block_until_ready(ev_one(state[0], xs[0]))
        runs["eval_chunk_in_map"] = lambda: jax.block_until_ready(ev_map(state[0], xs))
        per_call.update({"eval_chunk_jit": 1, "eval_chunk_in_map": 4})
    if torch_ok:
        for cl in (False, True):
            fn = torch_step_fn(name, classes, args.batch, args.threads, cl)
            key = "torch_channels_last" if cl else "torch"
            runs[key] = fn
            per_call[key] = 1
    for fn in runs.values():   # compile / warm up
        fn()
        fn()
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            best[k] = min(best[k], timed(fn) / per_call[k])
    n_params = int(sum(p.size for p in jax.tree.leaves(state[0])))
    record = {"bench": "conv_step", "model": name, "batch": args.batch, "num_params": n_params,
              "scan_length": args.scan, "rounds": args.rounds,
              "noncanonical_convs_in_vmapped_scan": bad,
              **{f"{k}_ms": 1e3 * v for k, v in best.items()},
              "scan_over_jit": best["scan"] / best["jit"],
              "vmap_scan_over_jit": best["vmap_scan"] / best["jit"]}
    for k in ("torch", "torch_channels_last"):
        if k in best:
            record[f"jit_over_{k}"] = best["jit"] / best[k]
            record[f"vmap_scan_over_{k}"] = best["vmap_scan"] / best[k]
    if "eval_chunk_jit" in best:
        record["eval_map_over_jit"] = best["eval_chunk_in_map"] / best["eval_chunk_jit"]
    if "native_jit" in best:
        record["native_jit_over_jit"] = best["native_jit"] / best["jit"]
    emit(record)


def _layer_variants():
    from jax import lax

    from cljax.nn.conv import canonical_conv

    dn = ("NHWC", "HWIO", "NHWC")

    def native(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    def patches(x, kh, kw):
        h, wd = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
        return jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(kh)
                                for j in range(kw)], -1)

    def im2col(x, w):
        kh, kw, ci, co = w.shape
        return jnp.einsum("bhwk,ko->bhwo", patches(x, kh, kw), w.reshape(-1, co))

    def split(x, w):
        kh, kw, ci, co = w.shape
        h, wd = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
        q = jnp.concatenate([xp[:, :, j:j + wd, :] for j in range(kw)], -1)
        wa = w.reshape(kh, kw * ci, co).transpose(1, 0, 2).reshape(kw * ci, kh * co)
        z = jnp.einsum("bhwk,kn->bhwn", q, wa)
        return sum(z[:, i:i + h, :, i * co:(i + 1) * co] for i in range(kh))

    @jax.custom_vjp
    def hybrid(x, w):
        return native(x, w)

    def hybrid_fwd(x, w):
        return native(x, w), (x, w)

    def hybrid_bwd(res, g):
        x, w = res
        kh, kw, ci, co = w.shape
        dx = lax.conv_general_dilated(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1),
                                      "SAME", dimension_numbers=dn)
        dw = (patches(x, kh, kw).reshape(-1, kh * kw * ci).T @ g.reshape(-1, co)).reshape(w.shape)
        return dx, dw

    hybrid.defvjp(hybrid_fwd, hybrid_bwd)
    return {"native": native, "canonical": lambda x, w: canonical_conv(x, w, padding="SAME"),
            "im2col": im2col, "split": split, "custom_vjp": hybrid}


def bench_layer(args):
    b, h, ci, co = (int(v) for v in args.layer_shape.split(","))
    x = jax.random.normal(jax.random.key(0), (b, h, h, ci))
    w = jax.random.normal(jax.random.key(1), (3, 3, ci, co)) * 0.1
    runs, per_call = {}, {}
    for name, conv in _layer_variants().items():
        grad = jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), (0, 1))

        def loop(x, w, unroll=1, grad=grad):
            def body(c, _):
                gx, gw = grad(x + c, w)
                return c + 1e-9 * jnp.mean(gx) + 1e-9 * jnp.mean(gw), None
            return jax.lax.scan(body, 0.0, None, length=args.scan, unroll=unroll)[0]

        runs[f"{name}_jit"] = jax.jit(grad)
        per_call[f"{name}_jit"] = 1
        if name != "native" or args.native_scan:
            runs[f"{name}_scan"] = jax.jit(loop)
            per_call[f"{name}_scan"] = args.scan
        if name == "native":
            runs["native_scan_unrolled"] = jax.jit(functools.partial(loop, unroll=args.scan))
            per_call["native_scan_unrolled"] = args.scan
    for f in runs.values():
        jax.block_until_ready(f(x, w))
    best = {k: float("inf") for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, w))
            best[k] = min(best[k], (time.perf_counter() - t) / per_call[k])
    base = best["native_jit"]
    emit({"bench": "conv_layer", "shape": [b, h, h, ci, co], "kernel": [3, 3],
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "scan_length": args.scan,
          **{f"{k}_ms": 1e3 * v for k, v in best.items()},
          **{f"{k}_over_native_jit": v / base for k, v in best.items()}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,alexnet,resnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--scan", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--native-scan", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--layer", action="store_true", help="compare conv formulations on one layer")
    ap.add_argument("--layer-shape", default="128,32,32,32", help="B,H,Cin,Cout")
    args = ap.parse_args()
    try:
        if args.no_torch:
            raise ImportError
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    emit({"bench": "setup", "backend": jax.default_backend(), "jax": jax.__version__,
          "torch": torch_version, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
          "python": platform.python_version(), "machine": platform.machine()})
    if args.layer:
        bench_layer(args)
        return
    for name in args.models.split(","):
        bench_model(name, args, torch_version is not None)


if __name__ == "__main__":
    main()

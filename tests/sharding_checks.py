"""Multi-device checks of cljax.sharding, run on 4 forced host CPU devices.

Not collected by pytest (no ``test_`` prefix): ``tests/test_sharding.py`` runs it as a script in
a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before JAX starts
(the device count is fixed when the backend initialises). Run by hand the same way::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharding_checks.py [NAME ...]

``multihost`` is run by two processes with 2 host devices each (``jax.distributed``, gloo)::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/sharding_checks.py \
        multihost --process 0 --port 12355 --dir /tmp/ckpt &   # and --process 1 likewise

Each check compares a sharded computation with the same computation on one device and prints
``OK <name>``; the last line is ``ALL OK``. Names: see ``CHECKS`` (default: ``DEFAULT``).
"""
from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import importance_helpers as IH
from helpers import tiny_dataset

from cljax import curvature as cv
from cljax import importance as imp
from cljax import sharding as shd
from cljax.checkpoint import Checkpointer
from cljax.data import make_scenario, split_tasks
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream

N_DEVICES = 4
TOL = dict(rtol=2e-5, atol=2e-6)          # float32 training: batched vs unbatched rounding


def _close(a, b, what, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=what, **(tol or TOL))


def _stream():
    ds = tiny_dataset(n=96, num_classes=6, seed=0)
    test = tiny_dataset(n=60, num_classes=6, seed=1)
    return split_tasks(ds, test, tasks=[[0, 1], [2, 3], [4, 5]])


def _setup(method="ewc", scenario="class", **options):
    s = _stream()
    sc = make_scenario(s, scenario)
    m = get_method(method, **options)
    model = as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, m, optimizer=optax.adam(1e-2), batch_size=12, eval_chunk=16)
    return s, sc, m, tr


def _run(tr, data, **kw):
    keys = jax.random.split(jax.random.key(3), 3)                 # R = 3: padded to 4
    if tr.method.default_hparams:
        kw.setdefault("hparams", {"strength": np.array([1.0, 30.0, 300.0], np.float32)})
    return run_stream(tr, data, num_steps=8, keys=keys, **kw)


def _fields(res):
    return [res.accuracy, res.loss, res.train_loss, res.init_accuracy, res.init_loss,
            *jax.tree.leaves(res.final_state.params), *jax.tree.leaves(res.final_state.mstate)]


# ----------------------------------------------------------------------------------------------
# 1. sharded runs (and batch-parallel runs) equal the one-device vmapped runs
# ----------------------------------------------------------------------------------------------

_REFERENCE = {}


def _reference(method):
    """The one-device vmapped runs of ``method`` (computed once per process)."""
    if method not in _REFERENCE:
        s, sc, m, tr = _setup(method)
        data = prepare_data(s, sc, eval_chunk=16)
        _REFERENCE[method] = (tr, data, _run(tr, data, runs="vmap"))
    return _REFERENCE[method]


def check_runs_sharded(method="l2", meshes=((2, 2),), devices=False):
    """A 3-point strength sweep (L2 by default; EWC, with the Fisher at the boundaries, in the
    slow selection), R = 3 padded to 4 runs."""
    tr, data, ref = _reference(method)
    for runs, batch in meshes:
        mesh = shd.make_mesh(N_DEVICES, batch=batch)
        assert dict(mesh.shape) == {"runs": runs, "batch": batch}
        res = _run(tr, data, mesh=mesh)
        # dummy runs are dropped everywhere
        assert res.accuracy.shape == ref.accuracy.shape == (3, 3, 3)
        assert all(x.shape[0] == 3 for x in jax.tree.leaves(res.final_state))
        assert res.timings["devices"] == {"runs": runs, "batch": batch,
                                          "padded_runs": shd.padded_size(3, runs)}
        _close(_fields(res), _fields(ref), f"mesh {runs}x{batch}")
        assert not np.allclose(res.accuracy[0], res.accuracy[2])   # the sweep points differ
    try:          # a loop over the runs cannot split them over devices
        _run(tr, data, mesh=shd.make_mesh(N_DEVICES), runs="map")
        raise AssertionError("runs='map' on a sharded runs axis was accepted")
    except ValueError as e:
        assert "runs='map'" in str(e), e
    if devices:   # devices=N is make_mesh(N)
        res = _run(tr, data, devices=N_DEVICES)
        _close(_fields(res), _fields(ref), "devices=4")


def check_runs_sharded_all():
    check_runs_sharded("ewc", meshes=((4, 1), (2, 2), (1, 4)), devices=True)


def _batch_parallel(method, **options):
    """``method`` on the task-IL stream, R = 1, every batch split over the 4 devices (mesh
    1×4) and on one device (vmapped): ``(trainer, data, mesh, sharded result, reference)``."""
    s, sc, m, tr = _setup(method, scenario="task", **options)
    data = prepare_data(s, sc, eval_chunk=16)
    kw = dict(hparams=dict(m.default_hparams), keep_params=True)
    keys = jax.random.split(jax.random.key(5), 1)
    ref = run_stream(tr, data, num_steps=8, keys=keys, runs="vmap", **kw)
    mesh = shd.make_mesh(N_DEVICES, batch=N_DEVICES)
    res = run_stream(tr, data, num_steps=8, keys=keys, mesh=mesh, **kw)
    return tr, data, mesh, res, ref


def check_batch_parallel_si_and_evaluation():
    """SI's path integral (grads and updates inside the step), the evaluation and the
    boundary with every batch split over 4 devices (mesh 1×4), R = 1."""
    tr, data, mesh, res, ref = _batch_parallel("si")
    _close(_fields(res) + jax.tree.leaves(res.task_params),
           _fields(ref) + jax.tree.leaves(ref.task_params), "batch-parallel SI")
    # the step really is data parallel: the batch of 12 is split 3 per device, gradients summed
    fit = jax.jit(jax.vmap(lambda st, d, t: tr.fit(st, d, t, 1), in_axes=(0, None, None),
                           spmd_axis_name="runs"))
    from cljax.training import place_data
    dm = place_data(data, mesh)
    st = jax.device_put(res.final_state, shd.runs_sharding(mesh))
    found = shd.collectives(fit.lower(st, dm, jnp.int32(0)).compile().as_text())
    # SI's path integral reads the step's all-reduced gradient: no collective of its own
    assert found["total"]["all-reduce"] == 1 and sum(found["total"].values()) == 1, found


def check_host_pipeline_on_mesh():
    """The host pipeline (rows gathered on the host, fed to the sharded steps) equals the
    device path on the same mesh."""
    s, sc, m, tr = _setup("ewc")
    mesh = shd.make_mesh(N_DEVICES, batch=2)
    dev = _run(tr, prepare_data(s, sc, eval_chunk=16, mesh=mesh), mesh=mesh, steps_per_call=4)
    host = _run(tr, prepare_data(s, sc, eval_chunk=16, placement="host", mesh=mesh), mesh=mesh,
                steps_per_call=4)
    assert host.timings["data"]["placement"] == "host"
    _close(_fields(host), _fields(dev), "host pipeline on a mesh", rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# 2. estimators and curvature tools on a sharded batch: the mean over all examples
# ----------------------------------------------------------------------------------------------

def _sharded_problem(n):
    """An MLP problem of ``n`` examples (float64) and its batch padded to a multiple of 4 and
    split over the 4 devices, with the 0/1 weights of the real examples."""
    model, params, batch = IH.mlp_problem(n=n, d=6, widths=(8,), classes=4, heads=2, seed=2)
    mesh = shd.make_mesh(N_DEVICES)
    padded, weights, n_real = shd.pad_batch(batch, N_DEVICES)
    ex = shd.examples_sharding(mesh)
    sharded = shd.put(padded, ex)
    w = shd.put(jnp.asarray(weights, jnp.float64), ex)
    assert n_real == n and len(sharded["x"].sharding.device_set) == N_DEVICES
    return model, params, batch, sharded, w, mesh


def check_estimators_on_sharded_batch(full=False):
    with jax.enable_x64(True):
        for n in (1001, 1000) if full else (1001,):     # unequal shards, then equal ones
            model, params, batch, sharded, w, mesh = _sharded_problem(n)
            key = jax.random.key(7)
            estimators = {
                "empirical": lambda b: imp.empirical_fisher_diagonal(model.logits_fn, params, b,
                                                                     chunk_size=300),
                "true": lambda b: imp.true_fisher_diagonal(model.logits_fn, params, b, key,
                                                           chunk_size=300),
                "exact": lambda b: imp.exact_fisher_diagonal(model.logits_fn, params, b),
                "mas": lambda b: imp.mas_importance(model.logits_fn, params, b, chunk_size=256),
                "kfac": lambda b: imp.kfac_factors(model.logits_fn, params, b, key, chunk_size=300),
            }
            if not full:
                estimators = {k: estimators[k] for k in ("empirical", "kfac")}
            for name, fn in estimators.items():
                want = fn(batch)
                # inside jit: drop the padding, then the estimator sees the real examples only
                got = jax.jit(lambda b: fn(shd.unpad(b, n)))(sharded)
                _close(got, want, f"{name} n={n} (pad + unpad in jit)", rtol=1e-10, atol=1e-13)
                if n % N_DEVICES == 0:   # equal shards: the sharded batch straight in
                    got = fn(jax.tree.map(lambda v: v[:n], sharded))
                    _close(got, want, f"{name} n={n} (sharded input)", rtol=1e-10, atol=1e-13)
            # the wrong way, for contrast: the mean of per-device means of unequal shards
            if full and n % N_DEVICES:
                per_dev = [imp.empirical_fisher_diagonal(model.logits_fn, params,
                                                         jax.tree.map(lambda v: v[i::4], batch))
                           for i in range(4)]
                naive = jax.tree.map(lambda *a: sum(a) / 4, *per_dev)
                right = imp.empirical_fisher_diagonal(model.logits_fn, params, batch)
                sizes = [len(batch["y"][i::4]) for i in range(4)]
                assert len(set(sizes)) > 1
                assert any(not np.allclose(a, b, rtol=1e-12, atol=0) for a, b in
                           zip(jax.tree.leaves(naive), jax.tree.leaves(right)))


def check_curvature_on_sharded_batch(full=False):
    with jax.enable_x64(True):
        n = 1001
        model, params, batch, sharded, w, mesh = _sharded_problem(n)
        v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                         params)
        tol = dict(rtol=1e-10, atol=1e-12)
        # weights: the padding counts for nothing
        _close(cv.task_hvp(model.logits_fn, params, sharded, v, chunk_size=256, weights=w),
               cv.task_hvp(model.logits_fn, params, batch, v, chunk_size=256), "task_hvp", **tol)
        key = jax.random.key(1)
        for curvature in ("hessian", "ggn") if full else ("hessian",):
            mv_s = cv.make_task_matvec(model.logits_fn, params, sharded, curvature=curvature,
                                       chunk_size=256, weights=w)
            mv_1 = cv.make_task_matvec(model.logits_fn, params, batch, curvature=curvature,
                                       chunk_size=256)
            lam_s = cv.top_eigenvalues_matvec(mv_s, params, key, k=2, num_iters=40, tol=None)
            lam_1 = cv.top_eigenvalues_matvec(mv_1, params, key, k=2, num_iters=40, tol=None)
            _close(lam_s.eigenvalues, lam_1.eigenvalues, f"λ ({curvature})", rtol=1e-8)
            if not full:
                continue
            tr_s = cv.hutchinson_trace(mv_s, params, key, num_samples=8)
            tr_1 = cv.hutchinson_trace(mv_1, params, key, num_samples=8)
            _close(tr_s.trace, tr_1.trace, f"Hutchinson ({curvature})", rtol=1e-8)
        if not full:
            return
        _close(cv.task_loss(model.logits_fn, params, sharded, chunk_size=256, weights=w),
               cv.task_loss(model.logits_fn, params, batch, chunk_size=256), "task_loss", **tol)
        _close(cv.task_ggn_vp(model.logits_fn, params, sharded, v, weights=w),
               cv.task_ggn_vp(model.logits_fn, params, batch, v), "task_ggn_vp", **tol)
        # no weights argument: unpad inside jit
        got = jax.jit(lambda b: cv.ggn_split_trace(model.logits_fn, params, shd.unpad(b, n), key,
                                                   num_samples=4, chunk_size=256).trace)(sharded)
        want = cv.ggn_split_trace(model.logits_fn, params, batch, key, num_samples=4,
                                  chunk_size=256).trace
        _close(got, want, "ggn_split_trace", rtol=1e-9)


def _loop_free(fn, *args, what, gathers=False):
    """The collectives of ``jax.jit(fn)`` on ``args``: none inside a loop (and no all-gather
    unless ``gathers``)."""
    found = shd.collectives(jax.jit(fn).lower(*args).compile().as_text())
    assert not any(found["in_loops"].values()), (what, found)
    assert gathers or not found["total"]["all-gather"], (what, found)
    return found


def check_chunked_data_parallel(full=False):
    """Chunks of a sharded batch stay on their devices: each device sums its own examples chunk
    by chunk (no collective inside the loop, no all-gather of the examples, one all-reduce after
    it), equal to one device; with ``full`` (slow) also the boundary and the evaluation of a
    batch-parallel run, and the step of that run has exactly one all-reduce."""
    mesh = shd.make_mesh(N_DEVICES)
    ex = shd.examples_sharding(mesh)
    # the check can fail: a scan over chunks whose *example* axis is split reduces in the loop
    split = shd.put(jnp.ones((3, 8)), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, shd.AXES)))
    found = shd.collectives(jax.jit(lambda a: jax.lax.scan(
        lambda c, r: (c + jnp.sum(jnp.sin(r)), None), 0.0, a)[0]).lower(split).compile().as_text())
    assert found["in_loops"]["all-reduce"] == 1, found
    with jax.enable_x64(True):
        for n in (1000, 1001) if full else (1000,):
            model, params, batch, sharded, w, mesh = _sharded_problem(n)
            key = jax.random.key(7)
            estimators = {
                "empirical": lambda b, **k: imp.empirical_fisher_diagonal(
                    model.logits_fn, params, b, chunk_size=64, **k),
                "true": lambda b, **k: imp.true_fisher_diagonal(
                    model.logits_fn, params, b, key, num_samples=2, chunk_size=64, **k),
                "kfac": lambda b, **k: imp.kfac_factors(
                    model.logits_fn, params, b, key, chunk_size=64, **k),
            }
            if not full:
                del estimators["true"]
            else:
                estimators["exact"] = lambda b, **k: imp.exact_fisher_diagonal(
                    model.logits_fn, params, b, chunk_size=100, **k)
                estimators["mas"] = lambda b, **k: imp.mas_importance(
                    model.logits_fn, params, b, chunk_size=30, **k)
            for name, fn in estimators.items():
                want = fn(batch)
                inside = lambda b, f=fn: f(shd.unpad(b, n), sharding=ex)
                _close(jax.jit(inside)(sharded), want, f"{name} n={n} sharding=", rtol=1e-10,
                       atol=1e-13)
                _loop_free(inside, sharded, what=f"{name} n={n}", gathers=n % N_DEVICES != 0)
                if n % N_DEVICES == 0:    # found on the concrete batch by itself
                    _close(fn(jax.tree.map(lambda v: v[:n], sharded)), want, f"{name} n={n}",
                           rtol=1e-10, atol=1e-13)
        v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                         params)
        products = {"task_hvp": cv.task_hvp, "task_ggn_vp": cv.task_ggn_vp}
        if not full:
            del products["task_ggn_vp"]
        for name, product in products.items():
            want = product(model.logits_fn, params, batch, v, chunk_size=64)
            _close(product(model.logits_fn, params, sharded, v, chunk_size=64, weights=w), want,
                   name, rtol=1e-10, atol=1e-12)
            _loop_free(lambda b, ww, f=product: f(model.logits_fn, params, b, v, chunk_size=64,
                                                  weights=ww, sharding=ex), sharded, w, what=name)
    # float32 on 4 devices against a float64 reference on one: equal to float32 rounding
    model, params, batch = IH.mlp_problem(n=1000, d=6, widths=(8,), classes=4, seed=2,
                                          dtype=jnp.float32)
    with jax.enable_x64(True):
        ref = imp.exact_fisher_diagonal(model.logits_fn, jax.tree.map(
            lambda p: p.astype(jnp.float64), params), jax.tree.map(
            lambda v: v.astype(jnp.float64) if v.dtype == jnp.float32 else v, batch))
    got = imp.exact_fisher_diagonal(model.logits_fn, params, shd.put(batch, ex), chunk_size=64)
    _close(got, ref, "float32 on 4 devices vs float64", rtol=2e-5, atol=1e-9)
    if not full:
        return
    # a run with its batches split over the 4 devices: EWC's boundary Fisher in chunks
    tr, data, mesh, res, ref = _batch_parallel("ewc", num_examples=48, chunk_size=4)
    _close(_fields(res), _fields(ref), "batch-parallel EWC")
    from cljax.training import place_data
    dm = place_data(data, mesh)
    st = jax.device_put(res.final_state, shd.runs_sharding(mesh))
    runs = lambda f: jax.vmap(f, in_axes=(0, None, None), spmd_axis_name="runs")
    found = _loop_free(runs(tr.end_task), st, dm, jnp.int32(0), what="EWC boundary")
    assert found["total"]["all-reduce"] == 1, found
    found = _loop_free(runs(lambda st, d, t: tr.evaluate_task(st, d, t, (d.test.x[t],
                                                                         d.test.y[t]))),
                       st, dm, jnp.int32(0), what="evaluation of a task (chunks of 16)")
    assert found["total"]["all-reduce"] >= 1, found
    found = _loop_free(runs(lambda st, d, t: tr.fit(st, d, t, 1)), st, dm, jnp.int32(0),
                       what="one step")
    assert found["total"] == {**found["total"], "all-reduce": 1}, found
    assert sum(found["total"].values()) == 1, found


# ----------------------------------------------------------------------------------------------
# 3. checkpoints of sharded runs restore on another device count
# ----------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _interrupted_then_resumed(tr, data, where, first: dict, then: dict):
    def stop(task, done, total):
        if task == 1 and done == 4:
            raise KeyboardInterrupt
    ckpt = Checkpointer(where, log=lambda msg: None)
    try:
        _run(tr, data, checkpoint=ckpt, steps_per_call=4, progress=stop, **first)
        raise AssertionError("the run was not interrupted")
    except KeyboardInterrupt:
        pass
    assert ckpt.steps()[-1] == 12                    # task 1, 4 steps: 8 + 4
    return _run(tr, data, checkpoint=ckpt, resume=True, steps_per_call=4, **then)


def check_checkpoint_across_device_counts():
    tr, data, ref = _reference("l2")
    with tempfile.TemporaryDirectory() as tmp:
        four_to_one = _interrupted_then_resumed(tr, data, pathlib.Path(tmp) / "a",
                                                dict(devices=4), dict(runs="vmap"))
        one_to_four = _interrupted_then_resumed(tr, data, pathlib.Path(tmp) / "b",
                                                dict(runs="vmap"),
                                                dict(mesh=shd.make_mesh(4, batch=2)))
    _close(_fields(four_to_one), _fields(ref), "4 devices → 1")
    _close(_fields(one_to_four), _fields(ref), "1 device → 4")
    for res in (four_to_one, one_to_four):
        assert res.accuracy.shape == (3, 3, 3)


def check_multihost():
    """Run by 2 processes of 2 host devices each (``--process I --port P``, ``jax.distributed``,
    gloo collectives): the runs sharded over the 4 global devices, the data put from every
    process (``make_array_from_callback``), the results gathered (``process_allgather``), a
    checkpoint written and resumed by both processes, and an estimator on a batch split over
    the two processes' devices — each equal to one device."""
    assert jax.process_count() == 2 and jax.local_device_count() == 2
    tr, data, ref = _reference("l2")                   # on this process's first device
    res = _run(tr, data, devices=None, steps_per_call=4)
    _close(_fields(res), _fields(ref), "runs over 2 processes")
    where = pathlib.Path(sys.argv[sys.argv.index("--dir") + 1])
    res = _interrupted_then_resumed(tr, data, where, dict(devices=None),
                                    dict(mesh=shd.make_mesh(None, batch=2)))
    _close(_fields(res), _fields(ref), "checkpoint over 2 processes")
    with jax.enable_x64(True):
        model, params, batch, sharded, w, mesh = _sharded_problem(1001)
        assert not sharded["x"].is_fully_addressable
        want = imp.empirical_fisher_diagonal(model.logits_fn, params, batch, chunk_size=300)
        got = jax.jit(lambda b: imp.empirical_fisher_diagonal(
            model.logits_fn, params, shd.unpad(b, 1001), chunk_size=300))(sharded)
        _close(shd.to_host(got), want, "estimator over 2 processes", rtol=1e-10, atol=1e-13)
        got = jax.jit(lambda b: imp.empirical_fisher_diagonal(
            model.logits_fn, params, shd.unpad(b, 1001), chunk_size=100,
            sharding=sharded["x"].sharding))(sharded)
        _close(shd.to_host(got), want, "chunks on each process's devices", rtol=1e-10,
               atol=1e-13)


CHECKS = {
    "runs_sharded": check_runs_sharded,
    "runs_sharded_all": check_runs_sharded_all,
    "batch_parallel": check_batch_parallel_si_and_evaluation,
    "host_pipeline_on_mesh": check_host_pipeline_on_mesh,
    "estimators": check_estimators_on_sharded_batch,
    "estimators_all": lambda: check_estimators_on_sharded_batch(full=True),
    "curvature": check_curvature_on_sharded_batch,
    "curvature_all": lambda: check_curvature_on_sharded_batch(full=True),
    "chunked_data_parallel": check_chunked_data_parallel,
    "chunked_data_parallel_all": lambda: check_chunked_data_parallel(full=True),
    "checkpoint": check_checkpoint_across_device_counts,
    "multihost": check_multihost,
}
SLOW = ("runs_sharded_all", "batch_parallel", "host_pipeline_on_mesh", "estimators_all",
        "curvature_all", "chunked_data_parallel_all")
DEFAULT = ("runs_sharded", "estimators", "curvature", "chunked_data_parallel", "checkpoint")


def main(names):
    if "--process" in names:     # one of several processes: jax.distributed first
        i = names.index("--process")
        port = names[names.index("--port") + 1]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                                   process_id=int(names[i + 1]))
        names = [n for n in names if n in CHECKS]
    if jax.device_count() != N_DEVICES:
        raise SystemExit(f"run with XLA_FLAGS=--xla_force_host_platform_device_count="
                         f"{N_DEVICES} (got {jax.device_count()} devices)")
    for name in names or DEFAULT:
        t0 = time.perf_counter()
        CHECKS[name]()
        print(f"OK {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print("ALL OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

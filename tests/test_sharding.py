"""cljax.sharding and run_stream's devices= / mesh=.

The multi-device checks run ``sharding_checks.py`` in a subprocess with 4 forced host CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX starts):
sharded runs (a 3-point L2 strength sweep padded to 4 runs) equal to the one-device vmapped runs, the
estimators and curvature tools on a padded batch split over the devices equal to one device,
chunked estimation and HVPs data parallel (no collective inside the chunk loop, no all-gather:
``sharding.collectives`` on the compiled program), and checkpoints written on 4 devices
resumed on 1 and the reverse. ``-m slow`` adds every mesh shape, data parallelism within a run
(SI, evaluation, boundaries; the step's HLO has exactly one collective, the gradient's
all-reduce; the boundary's and the evaluation's chunk loops none), the host pipeline on a mesh,
every estimator and curvature tool, and two processes of two devices joined by
``jax.distributed`` (several hosts, simulated, chunks on each process's devices).
The rest of this file runs on this process's single device.
"""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from helpers import tiny_split_stream

from cljax import cli
from cljax import sharding as shd
from cljax.data import make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream, runs_transform

HERE = pathlib.Path(__file__).resolve().parent


def _checks(*names, timeout=900):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(HERE / "sharding_checks.py"), *names], cwd=HERE,
                          env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, out[-6000:]
    return proc.stdout


def test_sharded_runs_estimators_curvature_and_checkpoints_on_four_devices():
    out = _checks()
    for name in ("runs_sharded", "estimators", "curvature", "chunked_data_parallel",
                 "checkpoint"):
        assert f"OK {name}" in out


@pytest.mark.slow
def test_every_mesh_batch_parallelism_host_pipeline_and_every_tool_on_four_devices():
    import sharding_checks
    _checks(*sharding_checks.SLOW, timeout=1800)


@pytest.mark.slow
def test_two_processes_of_two_devices_like_two_hosts(tmp_path):
    """Several hosts, simulated: 2 processes × 2 host devices joined by jax.distributed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, str(HERE / "sharding_checks.py"), "multihost",
                               "--process", str(i), "--port", port, "--dir",
                               str(tmp_path / "ckpt")], cwd=HERE, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "ALL OK" in out, out[-6000:]


def test_make_mesh_and_its_errors():
    mesh = shd.make_mesh()
    assert mesh.axis_names == shd.AXES and dict(mesh.shape) == {"runs": 1, "batch": 1}
    assert shd.make_mesh(1, batch=1).devices.shape == (1, 1)
    assert shd.make_mesh(jax.devices()).devices.size == jax.device_count()
    with pytest.raises(ValueError, match="there are 1 device"):
        shd.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="must divide"):
        shd.make_mesh(1, batch=2)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        shd.make_mesh(1, batch=0)
    with pytest.raises(TypeError, match="sequence of jax.Device"):
        shd.make_mesh(["cpu:0"])
    with pytest.raises(ValueError, match="axes"):
        shd.check_mesh(jax.make_mesh((1,), ("data",)))
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        shd.check_mesh("mesh")
    assert shd.runs_sharding(mesh).spec == jax.sharding.PartitionSpec("runs")
    assert shd.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("batch")
    assert shd.examples_sharding(mesh).spec == jax.sharding.PartitionSpec(("runs", "batch"))


def test_pad_mask_unpad_put_and_to_host():
    batch = {"x": np.arange(10.0).reshape(5, 2), "y": np.arange(5)}
    padded, w, n = shd.pad_batch(batch, 4)
    assert n == 5 and padded["x"].shape == (8, 2) and w.tolist() == [1] * 5 + [0] * 3
    np.testing.assert_array_equal(padded["x"][5:], 0)
    assert shd.padded_size(8, 4) == 8 and shd.padded_size(9, 4) == 12
    got = jax.jit(lambda b: jnp.mean(shd.unpad(b, n)["x"]))(padded)
    assert float(got) == 4.5                                    # the mean of the real rows only
    with pytest.raises(ValueError, match="rows"):
        shd.pad_batch({"x": np.zeros((3, 1)), "y": np.zeros(4)}, 2)
    keys = jax.random.split(jax.random.key(0), 3)
    tree = {"k": keys, "h": jnp.arange(3.0)}
    out = shd.pad_axis0(tree, 4, mode="first")
    np.testing.assert_array_equal(jax.random.key_data(out["k"][3]),
                                  jax.random.key_data(keys[0]))
    assert out["h"].tolist() == [0.0, 1.0, 2.0, 0.0]
    mesh = shd.make_mesh()
    placed = shd.put(out, shd.runs_sharding(mesh))
    assert placed["h"].sharding == shd.runs_sharding(mesh)
    back = shd.to_host(placed)
    assert isinstance(back["k"], np.ndarray) and back["k"].dtype == np.uint32
    np.testing.assert_array_equal(back["h"], out["h"])


def _setup():
    s = tiny_split_stream()
    sc = make_scenario(s, "class")
    tr = make_trainer(as_model(MLP((16,), sc.num_outputs)), get_method("l2"),
                      optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    return s, sc, tr


def test_mesh_arguments_are_checked():
    s, sc, tr = _setup()
    data = prepare_data(s, sc, eval_chunk=16)
    kw = dict(num_steps=6, keys=jax.random.split(jax.random.key(0), 2),
              hparams={"strength": np.array([1.0, 100.0])})
    with pytest.raises(ValueError, match="not both"):
        run_stream(tr, data, devices=1, mesh=shd.make_mesh(1), **kw)
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        run_stream(tr, data, mesh=jax.devices(), **kw)
    runs_transform("map", mesh=shd.make_mesh(1))              # one device on 'runs': allowed
    with pytest.raises(ValueError, match="runs must be one of"):
        runs_transform("pmap", mesh=shd.make_mesh(1))


@pytest.mark.slow
def test_a_one_device_mesh_runs_the_sharded_path_like_the_vmapped_one():
    s, sc, tr = _setup()
    data = prepare_data(s, sc, eval_chunk=16)
    kw = dict(num_steps=6, keys=jax.random.split(jax.random.key(0), 2),
              hparams={"strength": np.array([1.0, 100.0])})
    ref = run_stream(tr, data, runs="vmap", **kw)
    res = run_stream(tr, data, devices=1, **kw)
    assert res.timings["devices"] == {"runs": 1, "batch": 1, "padded_runs": 2}
    for a, b in zip([res.accuracy, res.train_loss, *jax.tree.leaves(res.final_state.params)],
                    [ref.accuracy, ref.train_loss, *jax.tree.leaves(ref.final_state.params)]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def _cli(args, tmp_path, name):
    cwd = os.getcwd()
    os.chdir(HERE.parent)
    try:
        with tfds.testing.mock_data(num_examples=100):
            return cli.main(["run", "split_mnist", "--steps", "2",
                             "--seeds", "1", "--scenarios", "task", "--no-progress", "--set",
                             "model.widths=[8]", "--set", "eval_chunk=64",
                             "--workdir", str(tmp_path / name), *args])
    finally:
        os.chdir(cwd)


def test_cli_devices_option_reaches_the_mesh(tmp_path, capsys):
    # more devices than there are: refused by the mesh, before any data is loaded
    assert _cli(["--devices", str(jax.device_count() + 1)], tmp_path, "a") == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("cljax: error: devices=") and "there are 1 device" in err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "c.py", "--devices", "0"])


@pytest.mark.slow
def test_cli_with_one_device_runs(tmp_path):
    assert _cli(["--devices", "1"], tmp_path, "b") == 0


_HLO = """HloModule jit_f

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(%a, %b)
}

%inner (p: f32[4]) -> f32[4] {
  %g = f32[16]{0} all-gather(%p), channel_id=2, dimensions={0}
  ROOT %r = f32[4] slice(%g), slice={[0:4]}
}

%body (param: (s32[], f32[4])) -> (s32[], f32[4]) {
  %x = f32[4] get-tuple-element(%param), index=1
  %f = f32[4] fusion(%x), kind=kLoop, calls=%inner
  %ar = f32[4] all-reduce(%f), channel_id=1, to_apply=%add
  ROOT %t = (s32[], f32[4]) tuple(%i, %ar)
}

%cond (param.1: (s32[], f32[4])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (p0: f32[4]) -> f32[4] {
  %start = f32[4] all-reduce-start(%p0), channel_id=3, to_apply=%add
  %done = f32[4] all-reduce-done(%start)
  %w = (s32[], f32[4]) while(%tuple), condition=%cond, body=%body
  ROOT %out = f32[4] collective-permute(%done), channel_id=4, source_target_pairs={{0,1}}
}
"""


def test_collectives_counts_by_kind_and_finds_those_inside_loops():
    """Oracle: a hand-written module — a while body with an all-reduce and, through a fusion it
    calls, an all-gather; outside the loop an async all-reduce (counted once) and a
    collective-permute."""
    got = shd.collectives(_HLO)
    assert got["total"] == {"all-reduce": 2, "all-gather": 1, "reduce-scatter": 0,
                            "all-to-all": 0, "collective-permute": 1}
    assert got["in_loops"] == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 0,
                               "all-to-all": 0, "collective-permute": 0}
    one_device = jax.jit(lambda x: jax.lax.scan(lambda c, r: (c + jnp.sum(r), None), 0.0, x)[0])
    hlo = one_device.lower(jnp.ones((3, 4))).compile().as_text()
    assert not any(shd.collectives(hlo)["total"].values())

"""cljax.training: the task loop's behaviour on the tiny stream (learning, calls, kept θ*_t, joint
training, divergence, arguments, run independence, determinism across processes). The contracts
every method shares (vmapped = separate runs, one compilation per stream, ...) are in
tests/test_contract.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset, tiny_split_stream

from cljax.data import make_scenario, split_tasks
from cljax.methods import Method, get_method, joint, none
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def _setup(scenario="task", method=none, optimizer=None):
    s = tiny_split_stream()
    sc = make_scenario(s, scenario)
    model = as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, method, optimizer=optimizer or optax.adam(1e-2), batch_size=8,
                      eval_chunk=16)
    return tr, prepare_data(s, sc, eval_chunk=16)


def test_training_learns_the_tiny_tasks():
    tr, data = _setup()
    res = run_stream(tr, data, num_steps=60, keys=jax.random.split(jax.random.key(0), 1))
    assert res.accuracy.shape == (1, 2, 2)
    assert res.accuracy[0, 0, 0] > 0.9 and res.accuracy[0, 1, 1] > 0.9
    assert res.train_loss.shape == (1, 2, 60)
    assert res.train_loss[0, 0, -10:].mean() < res.train_loss[0, 0, :10].mean()


def test_splitting_steps_into_calls_changes_nothing():
    tr, data = _setup()
    keys = jax.random.split(jax.random.key(2), 2)
    seen = []
    one = run_stream(tr, data, num_steps=24, keys=keys)
    split = run_stream(tr, data, num_steps=24, keys=keys, steps_per_call=8,
                       progress=lambda t, done, total: seen.append((t, done, total)))
    np.testing.assert_allclose(one.train_loss, split.train_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.accuracy, split.accuracy)
    assert seen == [(t, d, 24) for t in range(2) for d in (8, 16, 24)]


def test_keep_params_stacks_task_solutions():
    tr, data = _setup()
    res = run_stream(tr, data, num_steps=5, keys=jax.random.split(jax.random.key(0), 2),
                     keep_params=True)
    for kept, final in zip(jax.tree.leaves(res.task_params),
                           jax.tree.leaves(res.final_state.params)):
        assert kept.shape == (2, 2) + final.shape[1:]
        np.testing.assert_array_equal(kept[:, -1], final)


def test_joint_draws_from_every_task_seen():
    from cljax.methods import BatchContext, all_tasks_batch
    ctx = BatchContext(jax.random.key(0), jax.random.key(1), jnp.asarray(2), 3000, {}, None,
                       lambda k, tasks: {"task": tasks}, None, None, None)
    tasks = all_tasks_batch(ctx, ())["task"]
    counts = np.bincount(np.asarray(tasks), minlength=4)
    assert counts[3] == 0 and np.all(np.abs(counts[:3] / 3000 - 1 / 3) < 0.04)
    tr, data = _setup(scenario="class", method=joint)
    res = run_stream(tr, data, num_steps=80, keys=jax.random.split(jax.random.key(0), 1))
    assert res.accuracy[0, -1].min() > 0.8  # joint keeps task 0


def test_offline_joint_draws_from_the_whole_stream_from_the_first_task():
    from cljax.methods import BatchContext, StreamSpec, joint_offline, whole_stream_batch
    spec = StreamSpec((2,), jnp.float32, 4, 2, 2, 1, jnp.zeros((4, 2), jnp.int32), (9,) * 4)
    ctx = BatchContext(jax.random.key(0), jax.random.key(1), jnp.asarray(0), 4000, {}, spec,
                       lambda k, tasks: {"task": tasks}, None, None, None)
    counts = np.bincount(np.asarray(whole_stream_batch(ctx, ())["task"]), minlength=4)
    assert np.all(np.abs(counts / 4000 - 1 / 4) < 0.04)        # task 0 already sees all four
    tr, data = _setup(scenario="class", method=joint_offline)
    res = run_stream(tr, data, num_steps=80, keys=jax.random.split(jax.random.key(0), 1))
    assert res.accuracy[0, 0, 1] > 0.8       # the future task is learned during the first


def test_joint_example_draw_weighs_tasks_by_their_size():
    """``draw="example"`` under i.i.d. sampling: every example of the union of tasks 0..task
    equally likely, so a task's share is its size's; future tasks never; indices in range."""
    from cljax.methods import BatchContext, StreamSpec, get_method
    from cljax.methods.base import Clock
    counts = jnp.asarray([100, 300, 50, 999], jnp.int32)
    spec = StreamSpec((2,), jnp.float32, 4, 2, 2, 1, jnp.zeros((4, 2), jnp.int32), (9,) * 4)

    def ctx(task):
        return BatchContext(jax.random.key(0), jax.random.key(1), jnp.asarray(task), 9000, {},
                            spec, None, None, lambda t: counts[t], Clock(0, 0, 1),
                            lambda tasks, idx: {"task": tasks, "idx": idx})

    rows = get_method("joint", draw="example").batch(ctx(2), ())
    share = np.bincount(np.asarray(rows["task"]), minlength=4) / 9000
    np.testing.assert_allclose(share, [100 / 450, 300 / 450, 50 / 450, 0], atol=0.02)
    assert np.all(np.asarray(rows["idx"]) < np.asarray(counts)[np.asarray(rows["task"])])
    share = np.bincount(np.asarray(get_method("joint_offline", draw="example").batch(
        ctx(0), ())["task"]), minlength=4) / 9000
    np.testing.assert_allclose(share, np.asarray(counts) / counts.sum(), atol=0.02)
    with pytest.raises(ValueError, match="draw must be one of"):
        get_method("joint", draw="union")


def test_joint_stratified_draw_gives_every_task_its_share_of_each_batch():
    """``draw="stratified"`` (van de Ven's Task-IL offline replay): in every batch each task
    seen holds ⌊B/n⌋ or ⌈B/n⌉ examples, future tasks none (joint) or their share (offline),
    whatever the key; the examples within a task are drawn by ``ctx.draw``."""
    from cljax.methods import BatchContext, StreamSpec, get_method
    spec = StreamSpec((2,), jnp.float32, 4, 2, 2, 1, jnp.zeros((4, 2), jnp.int32), (9,) * 4)

    def counts(method, task, seed, batch=130):
        ctx = BatchContext(jax.random.key(seed), jax.random.key(seed + 1), jnp.asarray(task),
                           batch, {}, spec, lambda k, tasks: {"task": tasks}, None, None, None)
        rows = get_method(method, draw="stratified").batch(ctx, ())
        return np.bincount(np.asarray(rows["task"]), minlength=4)

    for seed in (0, 5):
        np.testing.assert_array_equal(counts("joint", 0, seed), [130, 0, 0, 0])
        np.testing.assert_array_equal(counts("joint", 2, seed), [44, 43, 43, 0])
        np.testing.assert_array_equal(counts("joint_offline", 0, seed), [33, 33, 32, 32])
    traced = jax.jit(lambda t: get_method("joint", draw="stratified").batch(
        BatchContext(jax.random.key(0), jax.random.key(1), t, 8, {}, spec,
                     lambda k, tasks: {"task": tasks}, None, None, None), ())["task"])
    np.testing.assert_array_equal(traced(jnp.int32(3)), [0, 1, 2, 3, 0, 1, 2, 3])
    from cljax.methods.baselines import stratified_batch
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        stratified_batch(None, 0)
    tr, data = _setup(scenario="class", method=get_method("joint", draw="stratified"))
    res = run_stream(tr, data, num_steps=80, keys=jax.random.split(jax.random.key(0), 1))
    assert res.accuracy[0, -1].min() > 0.8  # joint keeps task 0


@pytest.mark.parametrize("sampling", ["shuffled", "shuffled_drop_last"])
def test_joint_example_draw_passes_over_the_union(sampling):
    """Under a shuffled rule, ``joint(draw="example")`` passes over the union of the tasks
    seen (an epoch sees each of its examples once: a ``ConcatDataset`` loader), and
    ``joint_offline(draw="example")``'s passes over the whole stream run across the task
    boundaries: two tasks of half a pass each are one pass."""
    from cljax.methods.base import Clock
    from cljax.training import device_feed
    train = tiny_dataset(n=46, num_classes=4, seed=0)
    s = split_tasks(train, tiny_dataset(n=20, seed=1), tasks=[[0, 1], [2, 3]])
    data = prepare_data(s, make_scenario(s, "class"), eval_chunk=10)
    sizes = [int(n) for n in data.train.n]
    assert sizes[0] != sizes[1]
    stored = np.concatenate([np.asarray(data.train.x[t, :n]).reshape(n, -1)
                             for t, n in enumerate(sizes)])
    assert len(np.unique(stored, axis=0)) == len(stored)
    batch = 4

    def ids(method, steps):
        tr = make_trainer(as_model(MLP((4,), 4)), get_method(method, draw="example"),
                          optimizer=optax.sgd(0.1), batch_size=batch, sampling=sampling)
        state = tr.init(jax.random.key(0), {}, data)
        draw = jax.jit(lambda t, g, ts: tr.draw(state, data, t, Clock(g, ts, 99),
                                                device_feed(data)))
        out = []
        for t, g, ts in steps:
            xs = np.asarray(draw(jnp.int32(t), jnp.int32(g), jnp.int32(ts))["x"])
            out += [int(np.flatnonzero((stored == x).all(1))[0])
                    for x in xs.reshape(batch, -1)]
        return out

    def epochs(seen, n):
        per = (n // batch) * batch if sampling == "shuffled_drop_last" else n
        return [seen[e * per:(e + 1) * per] for e in range(len(seen) // per)]

    seen = ids("joint", [(0, ts, ts) for ts in range(sizes[0])])
    assert max(seen) < sizes[0]                                 # task 0 alone
    union = sum(sizes)
    seen = ids("joint", [(1, ts, ts) for ts in range(2 * union)])
    for epoch in epochs(seen, union):
        assert len(set(epoch)) == len(epoch)                   # each example once per epoch
        if sampling == "shuffled":
            assert sorted(epoch) == list(range(union))
    half = union // batch // 2
    steps = [(0, g, g) for g in range(half)] + [(1, g, g - half) for g in range(half, 2 * half)]
    seen = ids("joint_offline", steps)
    assert len(set(seen)) == len(seen) == 2 * half * batch    # one pass across the boundary
    assert max(seen) >= sizes[0] and min(seen) < sizes[0]     # task 0 already sees task 1


def test_non_finite_loss_stops_with_task_and_step():
    tr, data = _setup(optimizer=optax.scale(jnp.nan))
    with pytest.raises(FloatingPointError, match=r"task 0, step 1 "):
        run_stream(tr, data, num_steps=4, keys=jax.random.split(jax.random.key(0), 1))


def _boost_method():
    """SGD scaled by hparam ``boost``: a huge boost makes a run diverge, the others train."""
    return Method("boost", make_optimizer=lambda h, base: optax.chain(base, optax.scale(h["boost"])))


def test_marked_divergence_leaves_the_other_runs_untouched():
    tr, data = _setup(method=_boost_method(), optimizer=optax.sgd(0.5))
    keys = jax.random.split(jax.random.key(3), 3)
    boost = jnp.asarray([1.0, 1e30, 0.5])
    res = run_stream(tr, data, num_steps=6, keys=keys, hparams={"boost": boost},
                     on_nonfinite="mark")
    assert res.diverged.tolist() == [[-1, -1], [0, 1], [-1, -1]]
    assert np.all(np.isnan(res.accuracy[1])) and np.all(np.isnan(res.loss[1]))
    for r in (0, 2):
        alone = run_stream(tr, data, num_steps=6, keys=keys[r:r + 1],
                           hparams={"boost": boost[r:r + 1]})
        assert alone.diverged.tolist() == [[-1, -1]]
        np.testing.assert_allclose(res.accuracy[r], alone.accuracy[0], atol=1e-6)
        np.testing.assert_allclose(res.train_loss[r], alone.train_loss[0], rtol=1e-5)
    with pytest.raises(FloatingPointError, match=r"task 0, step 1 \(run 1\)"):
        run_stream(tr, data, num_steps=6, keys=keys, hparams={"boost": boost})
    with pytest.raises(ValueError, match="on_nonfinite"):
        run_stream(tr, data, num_steps=6, keys=keys, hparams={"boost": boost},
                   on_nonfinite="ignore")


def test_bad_arguments_raise():
    tr, data = _setup()
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="hparams\\['lam'\\] must be a scalar or have shape"):
        run_stream(tr, data, num_steps=2, keys=keys, hparams={"lam": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="keys must be"):
        run_stream(tr, data, num_steps=2, keys=jnp.zeros((2, 2), jnp.uint32))
    with pytest.raises(ValueError, match="num_steps"):
        run_stream(tr, data, num_steps=0, keys=keys)
    with pytest.raises(ValueError, match="batch_size"):
        make_trainer(as_model(MLP((4,), 2)), none, optimizer=optax.adam(1e-3), batch_size=0)
    with pytest.raises(TypeError, match="optimizer"):
        make_trainer(as_model(MLP((4,), 2)), none, optimizer="adam", batch_size=4)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("ewc++")
    s = tiny_split_stream()
    sc = make_scenario(s, "task")
    mismatched = make_trainer(as_model(MLP((4,), 2, num_heads=2)), none, batch_size=4,
                              optimizer=optax.adam(1e-3), eval_chunk=7)
    with pytest.raises(ValueError, match="same eval_chunk"):
        run_stream(mismatched, prepare_data(s, sc, eval_chunk=16), num_steps=2, keys=keys)


def test_a_run_does_not_depend_on_the_runs_beside_it():
    """Seed s's results are bit-identical whatever the number of runs in the program
    (``runs="map"``, the CPU default); vmapped runs match them to rounding."""
    tr, data = _setup(scenario="class")
    keys = jax.random.split(jax.random.key(4), 3)
    alone = run_stream(tr, data, num_steps=12, keys=keys[:1], runs="map")
    together = run_stream(tr, data, num_steps=12, keys=keys, runs="map")
    np.testing.assert_array_equal(together.train_loss[0], alone.train_loss[0])
    np.testing.assert_array_equal(together.loss[0], alone.loss[0])
    vmapped = run_stream(tr, data, num_steps=12, keys=keys, runs="vmap")
    np.testing.assert_allclose(vmapped.train_loss[0], alone.train_loss[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="runs must be"):
        run_stream(tr, data, num_steps=2, keys=keys, runs="pmap")


_TWO_PROCESS_SCRIPT = """
import sys, jax, numpy as np, optax
sys.path.insert(0, {tests!r})
from helpers import tiny_split_stream
from cljax.data import make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream
s = tiny_split_stream(); sc = make_scenario(s, "task")
m = get_method("ewc", num_examples=16, chunk_size=8)
tr = make_trainer(as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads)), m,
                  optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
res = run_stream(tr, prepare_data(s, sc, eval_chunk=16), num_steps=8,
                 keys=jax.random.split(jax.random.key(1), 2), hparams=m.default_hparams)
np.save({out!r}, np.concatenate([res.train_loss.ravel(), res.loss.ravel(), res.accuracy.ravel()]))
"""


def test_same_config_and_seed_are_bit_identical_across_processes(tmp_path):
    import pathlib
    import subprocess
    import sys
    tests = str(pathlib.Path(__file__).parent)
    outs = []
    for i in range(2):
        out = str(tmp_path / f"run{i}.npy")
        subprocess.run([sys.executable, "-c", _TWO_PROCESS_SCRIPT.format(tests=tests, out=out)],
                       check=True, capture_output=True)
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])

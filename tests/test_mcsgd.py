"""Tests particular to MC-SGD (cljax.methods.mcsgd): its objective against a brute-force loop over
the points of the two segments, its steps against SGD (with momentum) on that objective by
jax.grad of the loop, what the end of a task returns with no steps, with a zero learning rate
and at the first task, the ``train_from="continual"`` variant, and the options' errors. The
contracts every method shares (finite stream, mc_steps=0 is fine-tuning, one compilation, vmapped
= separate runs, resume, host) are in tests/test_contract.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.analysis.connectivity import path_point
from cljax.data import make_scenario, split_tasks
from cljax.memory import num_stored
from cljax.methods import PredictContext, get_method
from cljax.methods.mcsgd import line_points, mcsgd_objective
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, to_batch

HP = {"mc_lr": 0.2, "mc_momentum": 0.8, "init_position": 0.3}
WHOLE = {"per_class": 3, "num_points": 4, "mc_batch_size": None, "memory_batch_size": None}


def _build(scenario="class", **options):
    s = split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                    tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(s, scenario)
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    method = get_method("mcsgd", **options)
    tr = make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    return method, tr, prepare_data(s, sc, eval_chunk=16)


def _before_and_after(task=1, hp=HP, scenario="class", **options):
    """The state before the end of ``task`` (tasks trained 10 steps each, earlier boundaries
    run) and after it, with the trainer's jitted boundary."""
    method, tr, data = _build(scenario, **options)
    state = tr.init(jax.random.key(3), hp, data)
    end = jax.jit(tr.end_task)
    for t in range(task + 1):
        state, _ = tr.fit(state, data, jnp.asarray(t), 10)
        if t < task:
            state = end(state, data, jnp.asarray(t))
    return method, tr, data, state, end(state, data, jnp.asarray(task))


def _ce(logits, y):
    return -np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))[:, 0]


def _loop_objective(logits_fn, w, previous, continual, memory, current, alphas):
    """Brute force: each point's parameters built one by one as a + α(w − a) (the references'
    form, not path_point's), the mean cross-entropy of the rows given, summed in a Python loop."""
    total = 0.0
    for a in alphas:
        for start, batch in ((previous, memory), (continual, current)):
            theta = jax.tree.map(lambda s, e, a=a: s + a * (e - s), start, w)
            logits = logits_fn(theta, batch)
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1)[:, 0]
            total = total + jnp.mean(ce)
    return total


def _random_params(model, seed):
    x = {"x": jnp.zeros((1, 6, 6, 1)), "task": jnp.zeros((1,), jnp.int32)}
    return model.init(jax.random.key(seed), x)


def test_line_points_are_evenly_spaced_with_both_ends():
    np.testing.assert_array_equal(line_points(2), [0.0, 1.0])
    np.testing.assert_allclose(line_points(11), np.arange(0.0, 1.01, 0.1), atol=1e-7)
    with pytest.raises(ValueError, match="num_points"):
        line_points(1)


def test_objective_matches_a_loop_over_the_points():
    model = as_model(MLP((12,), 4))
    previous, continual, w = (_random_params(model, s) for s in range(3))
    rng = np.random.default_rng(0)

    def batch(n):
        return {"x": jnp.asarray(rng.normal(size=(n, 6, 6, 1)), jnp.float32),
                "y": jnp.asarray(rng.integers(0, 4, n), jnp.int32),
                "task": jnp.zeros((n,), jnp.int32)}

    memory, current = batch(7), batch(5)
    alphas = [0.0, 0.2, 0.5, 1.0]
    got = mcsgd_objective(model.logits_fn, w, previous, continual, memory, current,
                          jnp.asarray(alphas))
    want = _loop_objective(model.logits_fn, w, previous, continual, memory, current, alphas)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # masked rows leave their means: the masked objective is the loop's on the kept rows
    m_ok = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    c_ok = np.array([0, 1, 1, 1, 1], bool)
    got = mcsgd_objective(model.logits_fn, w, previous, continual, memory, current,
                          jnp.asarray(alphas), memory_ok=jnp.asarray(m_ok),
                          current_ok=jnp.asarray(c_ok))
    want = _loop_objective(model.logits_fn, w, previous, continual,
                           jax.tree.map(lambda a: a[m_ok], memory),
                           jax.tree.map(lambda a: a[c_ok], current), alphas)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a memory with no row ok adds nothing
    none_ok = mcsgd_objective(model.logits_fn, w, previous, continual, memory, current,
                              jnp.asarray(alphas), memory_ok=jnp.zeros(7, bool))
    only_current = sum(
        float(np.mean(_ce(model.logits_fn(jax.tree.map(lambda s, e, a=a: s + a * (e - s),
                                                       continual, w), current),
                          np.asarray(current["y"]))))
        for a in alphas)
    np.testing.assert_allclose(none_ok, only_current, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 2])
def test_the_phase_is_sgd_with_momentum_on_the_objective(steps):
    """End of task 2 with the whole memory and task every step (deterministic): the parameters
    returned are ``steps`` steps of SGD with momentum (v ← μv + g, w ← w − ηv) from
    θ_1 + α₀(θ̂_2 − θ_1), g the jax.grad of the brute-force loop over the memory rows of task 1
    and every training example of task 2."""
    method, tr, data, before, after = _before_and_after(mc_steps=steps, **WHOLE)
    logits_fn = tr.model_and_spec(data)[0].logits_fn
    anchor, theta_hat = before.mstate.anchor, before.params
    memory = after.mstate.memory
    keep = np.asarray(memory.valid) & (np.asarray(memory.task) < 1)
    assert keep.sum() == 2 * 3                                 # task 1: 2 classes × 3
    mem_batch = to_batch(data, {"x": memory.x[keep], "label": memory.label[keep],
                                "task": memory.task[keep]})
    n = int(data.train.n[1])
    cur_batch = to_batch(data, {"x": data.train.x[1, :n], "label": data.train.y[1, :n],
                                "task": jnp.ones((n,), jnp.int32)})
    alphas = np.linspace(0.0, 1.0, 4)
    lr, mu, a0 = HP["mc_lr"], HP["mc_momentum"], HP["init_position"]

    def oracle(w):
        return _loop_objective(logits_fn, w, anchor, theta_hat, mem_batch, cur_batch, alphas)

    w = jax.tree.map(lambda a, b: a + a0 * (b - a), anchor, theta_hat)
    v = jax.tree.map(jnp.zeros_like, w)
    for _ in range(steps):
        v = jax.tree.map(lambda v, g: mu * v + g, v, jax.grad(oracle)(w))
        w = jax.tree.map(lambda w, v: w - lr * v, w, v)
    for got, want, start in zip(jax.tree.leaves(after.params), jax.tree.leaves(w),
                                jax.tree.leaves(theta_hat)):
        assert not np.allclose(want, start)                    # the phase moved it
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(after.mstate.anchor), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, b)                   # θ_2 anchors the next phase


def test_no_steps_leave_the_continual_solution_and_store_the_memory():
    _, _, _, before, after = _before_and_after(mc_steps=0, per_class=3)
    for got, want in zip(jax.tree.leaves((after.params, after.mstate.anchor)),
                         jax.tree.leaves((before.params, before.params))):
        np.testing.assert_array_equal(got, want)
    assert int(num_stored(after.mstate.memory)) == 2 * 2 * 3  # tasks 1 and 2, 3 per class
    assert int(num_stored(before.mstate.memory)) == 2 * 3


def test_zero_learning_rate_returns_the_start_on_the_segment():
    """With η = 0 the steps leave w₀ = θ_1 + α₀(θ̂_2 − θ_1), a point of the segment: equal to
    path_point's to an ulp (the compiled boundary fuses the interpolation's multiply-adds, which
    round apart from the eager path_point's)."""
    hp = {**HP, "mc_lr": 0.0}
    _, _, _, before, after = _before_and_after(hp=hp, mc_steps=3, per_class=2, num_points=3,
                                               mc_batch_size=5, memory_batch_size=3)
    anchor, theta_hat = before.mstate.anchor, before.params
    start = path_point(anchor, theta_hat, hp["init_position"])
    for got, want, a, b in zip(*(jax.tree.leaves(t) for t in (after.params, start, anchor,
                                                                theta_hat))):
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-8)
        np.testing.assert_allclose(got - a, hp["init_position"] * (b - a), rtol=1e-5,
                                   atol=1e-7)


def test_the_first_task_has_no_phase():
    _, _, _, before, after = _before_and_after(task=0, mc_steps=4, per_class=2)
    for got, want in zip(jax.tree.leaves((after.params, after.mstate.anchor)),
                         jax.tree.leaves((before.params, before.params))):
        np.testing.assert_array_equal(got, want)


def test_train_from_continual_keeps_the_continual_solution_and_predicts_with_mc_sgds():
    _, _, _, _, mc = _before_and_after(mc_steps=2, **WHOLE)
    method, tr, data, before, after = _before_and_after(mc_steps=2, train_from="continual",
                                                        **WHOLE)
    for got, want in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
        np.testing.assert_array_equal(got, want)              # training goes on from θ̂_2
    for got, want in zip(jax.tree.leaves(after.mstate.anchor), jax.tree.leaves(mc.params)):
        np.testing.assert_array_equal(got, want)              # the same phase, kept aside
    net, spec = tr.model_and_spec(data)
    batch = to_batch(data, {"x": data.test.x[0, :8], "label": data.test.y[0, :8],
                            "task": jnp.zeros((8,), jnp.int32)})
    ctx = PredictContext(net, spec, jax.random.key(0), batch["task"])
    np.testing.assert_array_equal(method.predict(after.params, after.mstate, batch, ctx),
                                  net.logits_fn(after.mstate.anchor, batch))
    assert get_method("mcsgd").predict is None


def test_a_reservoir_memory_fills_while_training():
    method, tr, data = _build(memory="reservoir", capacity=12, mc_steps=2, num_points=3)
    state = tr.init(jax.random.key(0), HP, data)
    state, _ = tr.fit(state, data, jnp.asarray(0), 5)
    assert int(num_stored(state.mstate.memory)) == 12


def test_options_are_checked():
    with pytest.raises(ValueError, match="mc_steps"):
        get_method("mcsgd", mc_steps=-1)
    with pytest.raises(ValueError, match="num_points"):
        get_method("mcsgd", num_points=1)
    with pytest.raises(ValueError, match="train_from"):
        get_method("mcsgd", train_from="multitask")
    with pytest.raises(ValueError, match="mc_batch_size"):
        get_method("mcsgd", mc_batch_size=0)
    with pytest.raises(ValueError, match="needs a memory"):
        get_method("mcsgd", per_class=0)
    assert get_method("mcsgd", per_class=0, mc_steps=0).name == "mcsgd"

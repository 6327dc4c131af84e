"""cljax.importance.running_fisher: RWalk's running Fisher against a loop written from A-GEM's
training script, and the min–max normalisation against its formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import importance

SHAPES = {"w": (3, 2), "b": (2,)}


def _grads(key, n):
    """n steps of params-shaped gradients."""
    return [{name: jax.random.normal(jax.random.fold_in(key, 10 * i + j), shape)
             for j, (name, shape) in enumerate(SHAPES.items())} for i in range(n)]


def _agem_loop(task_grads, window, decay):
    """A-GEM's script (conv_split_cifar.py / model.py), in numpy: for each task, for iters in
    range(steps): if (iters + 1) % window == 0, running ← (1 − α)·running + α·tmp/window and
    tmp ← 0; then tmp += g². Neither is reset between tasks."""
    tmp = {n: np.zeros(s) for n, s in SHAPES.items()}
    running = {n: np.zeros(s) for n, s in SHAPES.items()}
    for grads in task_grads:
        for iters, g in enumerate(grads):
            if (iters + 1) % window == 0:
                running = {n: (1 - decay) * running[n] + decay * tmp[n] / window
                           for n in SHAPES}
                tmp = {n: np.zeros(s) for n, s in SHAPES.items()}
            tmp = {n: tmp[n] + np.asarray(g[n], np.float64) ** 2 for n in SHAPES}
    return tmp, running


@pytest.mark.parametrize("steps", [(7,), (12, 9), (5, 3, 11)])
def test_running_fisher_matches_the_loop_of_agem_code(steps):
    window, decay = 4, 0.9
    task_grads = [_grads(jax.random.key(len(steps) + t), n) for t, n in enumerate(steps)]
    params = {n: jnp.zeros(s) for n, s in SHAPES.items()}
    state = importance.init_running_fisher(params)
    for grads in task_grads:
        for i, g in enumerate(grads):
            state = importance.update_running_fisher(state, g, i, window=window, decay=decay)
    want_tmp, want_running = _agem_loop(task_grads, window, decay)
    for n in SHAPES:
        np.testing.assert_allclose(state.window_sum[n], want_tmp[n], rtol=1e-5)
        np.testing.assert_allclose(state.running[n], want_running[n], rtol=1e-5, atol=1e-12)
    # the fold happened whenever a task reached `window` steps
    assert any(float(jnp.abs(v).sum()) > 0 for v in state.running.values()) == \
        any(n >= window for n in steps)


def test_running_fisher_without_window_reset_folds_the_task_sum_so_far():
    """Their RWalk branch folds without emptying the window: each fold takes Σ g² since the
    task's start / window."""
    window, decay = 3, 0.9
    grads = _grads(jax.random.key(7), 8)
    state = importance.init_running_fisher({n: jnp.zeros(s) for n, s in SHAPES.items()})
    total = {n: np.zeros(s) for n, s in SHAPES.items()}
    running = {n: np.zeros(s) for n, s in SHAPES.items()}
    for i, g in enumerate(grads):
        if (i + 1) % window == 0:
            running = {n: (1 - decay) * running[n] + decay * total[n] / window for n in SHAPES}
        total = {n: total[n] + np.asarray(g[n], np.float64) ** 2 for n in SHAPES}
        state = importance.update_running_fisher(state, g, i, window=window, decay=decay,
                                                 reset_window=False)
    for n in SHAPES:
        np.testing.assert_allclose(state.window_sum[n], total[n], rtol=1e-5)
        np.testing.assert_allclose(state.running[n], running[n], rtol=1e-5, atol=1e-12)


def test_running_fisher_jit_with_a_traced_step_equals_eager():
    params = {n: jnp.zeros(s) for n, s in SHAPES.items()}
    grads = _grads(jax.random.key(3), 9)
    eager = jitted = importance.init_running_fisher(params)
    step = jax.jit(lambda s, g, i: importance.update_running_fisher(s, g, i, window=3,
                                                                    decay=0.5))
    for i, g in enumerate(grads):
        eager = importance.update_running_fisher(eager, g, i, window=3, decay=0.5)
        jitted = step(jitted, g, jnp.int32(i))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_running_fisher_keeps_the_state_dtypes():
    params = {"w": jnp.zeros((2, 2), jnp.bfloat16)}
    state = importance.init_running_fisher(params)
    new = importance.update_running_fisher(state, {"w": jnp.ones((2, 2), jnp.float32)}, 0,
                                           window=1, decay=1.0)
    assert new.window_sum["w"].dtype == jnp.bfloat16 and new.running["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 0}, "window must be a positive int"),
    ({"window": 2.0}, "window must be a positive int"),
    ({"decay": 0.0}, r"decay must lie in \(0, 1\]"),
    ({"decay": 1.5}, r"decay must lie in \(0, 1\]"),
])
def test_running_fisher_rejects_bad_options(kwargs, match):
    state = importance.init_running_fisher({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=match):
        importance.update_running_fisher(state, {"w": jnp.ones(2)}, 0, **kwargs)


def test_running_fisher_rejects_gradients_of_another_structure():
    state = importance.init_running_fisher({"w": jnp.zeros(2)})
    with pytest.raises((ValueError, TypeError), match="grads"):
        importance.update_running_fisher(state, {"v": jnp.ones(2)}, 0)


def test_running_fisher_functions_reject_another_state():
    tree = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"state must be a RunningFisherState \(init_running"):
        importance.update_running_fisher(tree, tree, 0)
    with pytest.raises(TypeError, match="state must be a RunningFisherState"):
        importance.restart_window(tree)


def test_minmax_normalize_is_the_formula_over_all_leaves():
    tree = {"a": jnp.array([[0.5, 2.0], [4.0, 1.0]]), "b": jnp.array([3.0, 0.25])}
    got = importance.minmax_normalize(tree)
    low, high = 0.25, 4.0
    for n in tree:
        np.testing.assert_allclose(got[n], (np.asarray(tree[n]) - low) / (high - low), rtol=1e-6)
    flat = np.concatenate([np.ravel(v) for v in jax.tree.leaves(got)])
    assert flat.min() == 0.0 and flat.max() == pytest.approx(1.0)


def test_minmax_normalize_of_a_constant_tree_is_zero_and_jits():
    tree = {"a": jnp.full((3,), 2.0), "b": jnp.full((2, 2), 2.0)}
    for out in (importance.minmax_normalize(tree), jax.jit(importance.minmax_normalize)(tree)):
        assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(out))


def test_minmax_normalize_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        importance.minmax_normalize({})
    with pytest.raises(FloatingPointError, match=r"importance\['a'\]"):
        importance.minmax_normalize({"a": jnp.array([1.0, jnp.nan])})


def test_is_fold_step_marks_the_steps_before_which_their_code_folds():
    steps = np.arange(12)
    got = np.asarray(importance.is_fold_step(steps, 4))
    np.testing.assert_array_equal(np.flatnonzero(got), [3, 7, 11])
    with pytest.raises(ValueError, match="window must be a positive int"):
        importance.is_fold_step(0, 0)


def test_restart_window_empties_the_window_and_keeps_the_average():
    state = importance.RunningFisherState({"w": jnp.full(3, 2.0)}, {"w": jnp.full(3, 5.0)})
    new = importance.restart_window(state)
    np.testing.assert_array_equal(new.window_sum["w"], 0.0)
    np.testing.assert_array_equal(new.running["w"], 5.0)


def test_minmax_normalize_keeps_float64_precision():
    with jax.enable_x64(True):
        tree = {"a": jnp.array([1.0, 1.0 + 1e-12, 1.0 + 2e-12], jnp.float64)}
        got = importance.minmax_normalize(tree)["a"]
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, [0.0, 0.5, 1.0], rtol=1e-3)


def test_a_shorter_window_weighs_less_after_minmax_because_its_maximum_is_noisier():
    """The same noisy gradients folded in windows of 10 average fewer squares than in windows of
    50, so min–max rescaling's maximum is a larger outlier and the rescaled Fisher weighs less
    in total (2.2× on A-GEM's permuted MNIST, RESULTS.md, where a λ larger by that factor does
    not close the windows' gap); the unrescaled averages agree."""
    rng = np.random.default_rng(0)
    steps, size = 1000, 20000
    scale = rng.uniform(0.5, 1.5, size).astype(np.float32)     # the true importance's spread
    grads = scale * rng.standard_normal((steps, size)).astype(np.float32)
    mass, raw = {}, {}
    for window in (10, 50):
        def step(s, xs, w=window):
            i, g = xs
            return importance.update_running_fisher(s, {"w": g}, i, window=w, decay=0.9), None

        state, _ = jax.lax.scan(step, importance.init_running_fisher({"w": jnp.zeros(size)}),
                                (jnp.arange(steps), jnp.asarray(grads)))
        raw[window] = float(jnp.sum(state.running["w"]))
        mass[window] = float(jnp.sum(importance.minmax_normalize(state.running)["w"]))
    assert raw[10] == pytest.approx(raw[50], rel=0.05)
    assert mass[10] < 0.8 * mass[50]

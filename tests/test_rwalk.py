"""cljax.importance.rwalk: RWalk's score against its formula, folded as A-GEM's code folds it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import importance

SHAPES = {"w": (3, 2), "b": (2,)}


def _tree(key, scale=1.0, positive=False):
    out = {n: scale * jax.random.normal(jax.random.fold_in(key, i), s)
           for i, (n, s) in enumerate(SHAPES.items())}
    return jax.tree.map(jnp.abs, out) if positive else out


def test_fold_rwalk_score_is_the_clipped_ratio_over_the_riemannian_length():
    k = jax.random.split(jax.random.key(0), 5)
    omega, score = _tree(k[0]), _tree(k[1], positive=True)
    fisher, start, now = _tree(k[2], positive=True), _tree(k[3]), _tree(k[4])
    state = importance.RWalkScoreState(omega, score, start)
    new = importance.fold_rwalk_score(state, fisher, now, xi=1e-3)
    for n in SHAPES:
        w, s, f = (np.asarray(t[n], np.float64) for t in (omega, score, fisher))
        d = np.asarray(now[n], np.float64) - np.asarray(start[n], np.float64)
        np.testing.assert_allclose(new.score[n], s + np.maximum(w / (1e-3 + f * d * d), 0),
                                   rtol=1e-5)
        np.testing.assert_array_equal(new.omega[n], 0)
        np.testing.assert_array_equal(new.fold_params[n], now[n])


@pytest.mark.parametrize("fold", ["agem_code", "average"])
@pytest.mark.parametrize("first", [True, False])
def test_fold_rwalk_importance_doubles_the_first_task_and_folds_as_named(fold, first):
    k = jax.random.split(jax.random.key(1), 2)
    kept, score = _tree(k[0], positive=True), _tree(k[1], positive=True)
    got = importance.fold_rwalk_importance(kept, score, jnp.asarray(first), fold=fold)
    for n in SHAPES:
        s, r = np.asarray(kept[n], np.float64), np.asarray(score[n], np.float64)
        r = 2 * r if first else r
        want = s + (s + r) / 2 if fold == "agem_code" else (s + r) / 2
        np.testing.assert_allclose(got[n], want, rtol=1e-6)


def test_first_task_from_zero_importance_gives_the_task_score_either_way():
    score = _tree(jax.random.key(2), positive=True)
    zero = jax.tree.map(jnp.zeros_like, score)
    for fold in importance.RWALK_IMPORTANCE_FOLDS:
        got = importance.fold_rwalk_importance(zero, score, True, fold=fold)
        for n in SHAPES:
            np.testing.assert_allclose(got[n], score[n], rtol=1e-6)


def test_fold_rwalk_score_jits_with_a_traced_xi():
    k = jax.random.split(jax.random.key(3), 3)
    state = importance.init_rwalk_score(_tree(k[0]))
    state = state._replace(omega=_tree(k[1]))
    fisher, now = _tree(k[2], positive=True), _tree(k[0], 2.0)
    eager = importance.fold_rwalk_score(state, fisher, now, xi=0.01)
    jitted = jax.jit(lambda s, f, p, x: importance.fold_rwalk_score(s, f, p, xi=x))(
        state, fisher, now, jnp.float32(0.01))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_rwalk_rejects_bad_inputs():
    state = importance.init_rwalk_score({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="xi must be > 0"):
        importance.fold_rwalk_score(state, {"w": jnp.ones(2)}, {"w": jnp.ones(2)}, xi=0.0)
    with pytest.raises((ValueError, TypeError), match="fisher"):
        importance.fold_rwalk_score(state, {"v": jnp.ones(2)}, {"w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"state must be a RWalkScoreState \(init_rwalk_score"):
        importance.fold_rwalk_score({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="fold must be one of"):
        importance.fold_rwalk_importance({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, True,
                                         fold="sum")

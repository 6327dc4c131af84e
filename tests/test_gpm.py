"""Tests for cljax.transforms.gpm (GPM)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.transforms import GPMState, gpm_consolidate, gpm_project, gpm_projection, init_gpm
from cljax.transforms.gpm import grow_basis


def _params(rows=7, out=3):
    return {"Dense_0": {"kernel": jnp.zeros((rows, out))}}


def _energy_kept(basis, size, rep):
    m = np.asarray(basis)[:, :int(size)]
    r = np.asarray(rep).T
    return np.sum((m @ (m.T @ r)) ** 2) / np.sum(r ** 2)


def test_basis_keeps_the_threshold_energy_and_is_orthonormal():
    rng = np.random.default_rng(0)
    state = init_gpm(_params())
    low_rank = lambda: rng.normal(size=(40, 3)) @ rng.normal(size=(3, 7)) + 0.05 * rng.normal(size=(40, 7))
    reps = [low_rank(), low_rank(), rng.normal(size=(40, 7))]
    for t, rep in enumerate(reps):
        state = gpm_consolidate(state, {"Dense_0": jnp.asarray(rep, jnp.float32)}, 0.97)
        basis, size = state.bases["Dense_0"], state.sizes["Dense_0"]
        m = np.asarray(basis)[:, :int(size)]
        np.testing.assert_allclose(m.T @ m, np.eye(int(size)), atol=1e-5)
        assert np.all(np.asarray(basis)[:, int(size):] == 0)
        for seen in reps[:t + 1]:        # every past task's energy is kept (the basis only grows)
            assert _energy_kept(basis, size, seen) >= 0.97 - 1e-4
        if t == 0:
            assert int(size) <= 4                                          # a low-rank task
    assert int(state.sizes["Dense_0"]) <= 7                                # never past capacity
    # the smallest basis: with one vector fewer the threshold is missed
    b0, s0 = grow_basis(jnp.zeros((7, 7)), jnp.asarray(0), jnp.asarray(reps[0], jnp.float32),
                        jnp.asarray(0.97))
    assert _energy_kept(b0, int(s0) - 1, reps[0]) < 0.97


def test_projected_gradient_is_orthogonal_to_the_basis():
    rng = np.random.default_rng(1)
    state = gpm_consolidate(init_gpm(_params()),
                            {"Dense_0": jnp.asarray(rng.normal(size=(20, 7)))}, 0.9)
    g = {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)}}
    out = gpm_project(g, state)["Dense_0"]["kernel"]
    m = np.asarray(state.bases["Dense_0"])[:, :int(state.sizes["Dense_0"])]
    rel = np.abs(m.T @ np.asarray(out)).max() / np.abs(np.asarray(g["Dense_0"]["kernel"])).max()
    assert rel < 1e-6
    tx = optax.chain(gpm_projection(), optax.sgd(1.0))
    u, _ = jax.jit(tx.update)(g, tx.init(g), None, gpm_state=state)
    np.testing.assert_allclose(-np.asarray(u["Dense_0"]["kernel"]), out, rtol=1e-6, atol=1e-7)


def test_gpm_bad_inputs():
    state = init_gpm(_params())
    rep = {"Dense_0": jnp.ones((4, 7))}
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="thresholds"):
            gpm_consolidate(state, rep, bad)
    with pytest.raises(ValueError, match="lacks layers"):
        gpm_consolidate(state, {}, 0.9)
    with pytest.raises(ValueError, match=r"\[m, 7\]"):
        gpm_consolidate(state, {"Dense_0": jnp.ones((4, 6))}, 0.9)
    with pytest.raises(TypeError, match="GPMState"):
        gpm_consolidate({}, rep, 0.9)
    with pytest.raises(ValueError, match="gpm_state"):
        gpm_projection().update(_params(), optax.EmptyState(), None)
    assert isinstance(state, GPMState)


def _their_update(activations, threshold, features, plus_one):
    """GPM's released ``update_GPM`` (main_pmnist.py) in numpy, the oracle of both first-task
    rules: ``activations`` ``[rows, m]``; ``plus_one`` un-comments the ``+1`` of eq. 5."""
    if not features:
        u, s, _ = np.linalg.svd(activations, full_matrices=False)
        ratio = s ** 2 / (s ** 2).sum()
        r = int(np.sum(np.cumsum(ratio) < threshold)) + int(plus_one)
        return [u[:, :r]]
    total = (np.linalg.svd(activations, compute_uv=False) ** 2).sum()
    m = features[0]
    hat = activations - m @ (m.T @ activations)
    u, s, _ = np.linalg.svd(hat, full_matrices=False)
    ratio = s ** 2 / total
    acc = (total - (s ** 2).sum()) / total
    r = 0
    for v in ratio:
        if acc < threshold:
            acc += v
            r += 1
        else:
            break
    return [np.hstack([m, u[:, :r]])[:, :m.shape[0]]] if r else features


@pytest.mark.parametrize("rule", ["eq5", "code"])
def test_first_task_rank_matches_their_code(rule):
    """The bases' spans equal the released update_GPM's over three tasks, with the ``+1`` of
    eq. 5 (``"eq5"``) or without it as shipped (``"code"``: one vector fewer after task 1)."""
    rng = np.random.default_rng(3)
    rows = 12
    state, features = init_gpm(_params(rows=rows)), []
    sizes = []
    for _ in range(3):
        rep = rng.normal(size=(30, 4)) @ rng.normal(size=(4, rows)) + 0.1 * rng.normal(
            size=(30, rows))
        state = gpm_consolidate(state, {"Dense_0": jnp.asarray(rep)}, 0.95, first_task_rank=rule)
        features = _their_update(rep.T, 0.95, features, plus_one=rule == "eq5")
        size = int(state.sizes["Dense_0"])
        assert size == features[0].shape[1]
        m = np.asarray(state.bases["Dense_0"])[:, :size]
        np.testing.assert_allclose(m @ m.T, features[0] @ features[0].T, atol=2e-4)
        sizes.append(size)
    assert sizes[0] >= 1


def test_first_task_rank_code_keeps_one_fewer_only_after_the_first_task():
    rng = np.random.default_rng(4)
    reps = [jnp.asarray(rng.normal(size=(25, 9))) for _ in range(2)]
    eq5 = code = init_gpm(_params(rows=9))
    for t, rep in enumerate(reps):
        eq5 = gpm_consolidate(eq5, {"Dense_0": rep}, 0.9)
        code_before = int(code.sizes["Dense_0"])
        code = gpm_consolidate(code, {"Dense_0": rep}, 0.9, first_task_rank="code")
        if t == 0:
            assert int(code.sizes["Dense_0"]) == int(eq5.sizes["Dense_0"]) - 1
    # the second task adds what eq. 9 asks of the (smaller) basis: no further offset
    m = np.asarray(code.bases["Dense_0"])
    assert int(code.sizes["Dense_0"]) > code_before
    assert _energy_kept(m, code.sizes["Dense_0"], reps[1]) >= 0.9 - 1e-4
    with pytest.raises(ValueError, match="first_task_rank"):
        gpm_consolidate(eq5, {"Dense_0": reps[0]}, 0.9, first_task_rank="paper")

"""Tests particular to the penalty and natural-gradient methods (cljax.methods.penalties,
cljax.methods.natural): what their boundaries store, checked against the estimators, and the
fused K-FAC NCL gradient against the transform path. The contracts every method shares
(finite stream, λ = 0 is fine-tuning, one compilation, vmapped = separate runs) are in
tests/test_contract.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax import curvature, importance, transforms
from cljax.data import make_scenario, split_tasks
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream

SMALL = {"num_examples": 16, "chunk_size": 8}
ESTIMATING_METHODS = ("ewc", "online_ewc", "mas", "kfac_ewc", "ncl", "ncl_kfac")


def _build(name, **options):
    ds = tiny_dataset(num_classes=6, n=90)
    s = split_tasks(ds, tiny_dataset(num_classes=6, n=45, seed=1), tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(s, "task")
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    if name in ESTIMATING_METHODS:   # small estimator runs for the methods that estimate
        options = {**SMALL, **options}
    method = get_method(name, **options)
    tr = make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    return method, tr, prepare_data(s, sc, eval_chunk=16)


def _boundary_batch(state, data, t, *, split):
    """The 16 examples of task ``t`` a boundary draws from ``state`` (its key folded as the
    trainer folds it; ``split``: the estimator's first half of it, as EWC's Fisher takes)."""
    from cljax.training import make_batch
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1 << 30)
    if split:
        key, _ = jax.random.split(key)
    idx = jax.random.randint(key, (16,), 0, data.train.n[t])
    return make_batch(data, data.train, jnp.full(16, t, jnp.int32), idx)


def _two_boundaries(name, estimate, *, split, **options):
    """Tasks 0 and 1 trained 10 steps each through their boundaries; ``estimate(params, batch)``
    rebuilt on each boundary's own sample (:func:`_boundary_batch`). Returns the two estimates,
    the state after the second boundary and the parameters at the second task's end."""
    method, tr, data = _build(name, **options)
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    estimates = []
    for t in (0, 1):
        state, _ = tr.fit(state, data, jnp.asarray(t), 10)
        estimates.append(estimate(state.params, _boundary_batch(state, data, t, split=split)))
        end = state.params
        state = tr.end_task(state, data, jnp.asarray(t))
    return estimates, state, end


def test_ewc_boundary_stores_the_fisher_of_the_finished_task():
    method, tr, data = _build("ewc")
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    state, _ = tr.fit(state, data, jnp.asarray(0), 15)
    after = tr.end_task(state, data, jnp.asarray(0))
    batch = _boundary_batch(state, data, 0, split=True)   # the boundary's sample, rebuilt
    model = as_model(MLP((12,), 2, num_heads=3))
    F = importance.exact_fisher_diagonal(model.logits_fn, state.params, batch, chunk_size=8)
    penalty = after.mstate
    assert isinstance(penalty, transforms.QuadraticPenaltyState)
    assert isinstance(penalty.curvature, curvature.Diagonal)
    for got, want in zip(jax.tree.leaves(penalty.curvature.values), jax.tree.leaves(F)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    # the penalty is zero at the anchor and positive away from it
    assert float(transforms.penalty_loss(penalty, state.params)) == pytest.approx(0.0)
    moved = jax.tree.map(lambda p: p + 0.1, state.params)
    assert float(transforms.penalty_loss(penalty, moved)) > 0


@pytest.mark.parametrize("accumulate", ["sum", "latest"])
def test_mas_folds_each_tasks_grouped_importance_as_asked(accumulate):
    """Ω after two boundaries: Ω_0 + Ω_1 (the paper) or Ω_1 alone (A-GEM's code), each Ω_t the
    grouped MAS importance of the boundary's own sample, rebuilt independently; the anchor is
    the second task's end."""
    model = as_model(MLP((12,), 2, num_heads=3))
    omegas, state, end = _two_boundaries(
        "mas", lambda params, batch: importance.mas_importance(model.logits_fn, params, batch,
                                                               group_size=4),
        split=False, group_size=4, accumulate=accumulate)
    want = omegas[1] if accumulate == "latest" else jax.tree.map(jnp.add, *omegas)
    penalty = state.mstate
    for got, w in zip(jax.tree.leaves(penalty.curvature.values), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-9)
    assert float(transforms.penalty_loss(penalty, end)) == pytest.approx(0.0, abs=1e-10)


def test_ewc_running_fisher_is_the_training_gradients_squared_and_replaced_each_task():
    """EWC as A-GEM's code runs it (fisher="running", accumulate="latest", normalize="minmax"):
    under plain SGD each step's gradient is (θ_k − θ_{k+1})/lr, so the running Fisher the method
    keeps is rebuilt from the parameters step by step (the module's own update, checked against
    A-GEM's loop in tests/test_running_fisher.py); at each boundary the penalty holds that
    Fisher min–max normalised, anchored at the task's end, the earlier task's replaced, and the
    window sum restarts (their reset_tmp_fisher) while the average is kept."""
    ds = tiny_dataset(num_classes=6, n=90)
    s = split_tasks(ds, tiny_dataset(num_classes=6, n=45, seed=1), tasks=[[0, 1], [2, 3], [4, 5]])
    sc = make_scenario(s, "task")
    model = as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    method = get_method("ewc", fisher="running", accumulate="latest", normalize="minmax",
                        fisher_window=3, fisher_decay=0.9)
    lr = 0.1
    tr = make_trainer(model, method, optimizer=optax.sgd(lr), batch_size=8, eval_chunk=16)
    data = prepare_data(s, sc, eval_chunk=16)
    # λ = 0: the penalty adds nothing to the gradient, so each update is −lr·g of the task loss
    state = tr.init(jax.random.key(0), {"strength": jnp.float32(0.0)}, data)
    want = importance.init_running_fisher(state.params)
    for t, steps in ((0, 7), (1, 5)):
        for i in range(steps):
            before = state.params
            state, _ = tr.fit(state, data, jnp.asarray(t), 1, task_steps=steps)
            grads = jax.tree.map(lambda a, b: (a - b) / lr, before, state.params)
            want = importance.update_running_fisher(want, grads, i, window=3, decay=0.9)
        for got, w in zip(jax.tree.leaves(state.mstate.fisher), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, w, rtol=2e-3, atol=1e-7)
        end = state.params
        state = tr.end_task(state, data, jnp.asarray(t))
        penalty = state.mstate.penalty
        normalized = importance.minmax_normalize(state.mstate.fisher.running)
        for got, w in zip(jax.tree.leaves(penalty.curvature.values), jax.tree.leaves(normalized)):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)
        values = np.concatenate([np.ravel(v) for v in jax.tree.leaves(penalty.curvature.values)])
        assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
        for a, p in zip(jax.tree.leaves(penalty.anchor), jax.tree.leaves(end)):
            np.testing.assert_array_equal(a, p)
        assert all(float(jnp.abs(v).max()) == 0
                   for v in jax.tree.leaves(state.mstate.fisher.window_sum))
        for a, b in zip(jax.tree.leaves(state.mstate.fisher.running),
                        jax.tree.leaves(want.running)):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-7)
        want = want._replace(window_sum=jax.tree.map(jnp.zeros_like, want.window_sum))


@pytest.mark.parametrize("accumulate,normalize", [("per_task", "minmax"), ("latest", "none")])
def test_ewc_estimated_fisher_is_normalised_and_kept_as_asked(accumulate, normalize):
    """The end-of-task Fisher under the other two options: Ω_0 then Ω_1 each min–max normalised
    (one penalty per task, so the folded curvature is their sum), or Ω_1 alone as estimated."""
    model = as_model(MLP((12,), 2, num_heads=3))

    def fisher(params, batch):
        F = importance.exact_fisher_diagonal(model.logits_fn, params, batch, chunk_size=8)
        return importance.minmax_normalize(F) if normalize == "minmax" else F

    fishers, state, _ = _two_boundaries("ewc", fisher, split=True, accumulate=accumulate,
                                        normalize=normalize)
    want = fishers[1] if accumulate == "latest" else jax.tree.map(jnp.add, *fishers)
    for got, w in zip(jax.tree.leaves(state.mstate.curvature.values), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("options,match", [
    ({"fisher": "running_mean"}, "fisher must be one of"),
    ({"accumulate": "sum"}, "accumulate must be one of"),
    ({"normalize": "max"}, "normalize must be one of"),
    ({"fisher": "running", "fisher_window": 0}, "fisher_window must be a positive int"),
    ({"fisher": "running", "fisher_decay": 0.0}, r"fisher_decay must lie in \(0, 1\]"),
])
def test_ewc_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        get_method("ewc", **options)


def _minmax(tree):
    flat = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])
    low, high = flat.min(), flat.max()
    return jax.tree.map(lambda v: (np.asarray(v, np.float64) - low) / (high - low + 1e-32), tree)


def test_rwalk_steps_follow_the_loop_of_agem_code():
    """after_step by hand against A-GEM's RWALK branch in numpy: every `window` steps, before
    the step, s += max(ω / (ξ + F (θ − θ_fold)²), 0), F ← 0.1 F + 0.9 Σg²/window (Σ since the
    task's start), θ_fold ← θ, ω ← 0; then Σg² += g², ω −= g·Δθ."""
    from cljax.methods import Clock, StepInfo

    window, xi, steps = 3, 1e-3, 8
    shape = {"w": (3, 2), "b": (2,)}
    k = jax.random.split(jax.random.key(4), 2)
    draw = lambda key, scale=1.0: {n: scale * jax.random.normal(jax.random.fold_in(key, i), s)
                                   for i, (n, s) in enumerate(shape.items())}
    theta = draw(k[0])
    method = get_method("rwalk", fisher_window=window)
    state = method.init(theta, None, {}, None)
    hp = {"strength": jnp.float32(2.0), "xi": jnp.float32(xi)}
    f64 = lambda t: {n: np.asarray(v, np.float64) for n, v in t.items()}
    zeros = {n: np.zeros(s) for n, s in shape.items()}
    tmp, F, omega, R, fold = dict(zeros), dict(zeros), dict(zeros), dict(zeros), f64(theta)
    for i in range(steps):
        g, u = draw(jax.random.fold_in(k[1], 2 * i)), draw(jax.random.fold_in(k[1], 2 * i + 1), 0.1)
        th = f64(theta)
        if (i + 1) % window == 0:
            R = {n: R[n] + np.maximum(omega[n] / (xi + F[n] * (th[n] - fold[n]) ** 2), 0)
                 for n in shape}
            F = {n: 0.1 * F[n] + 0.9 * tmp[n] / window for n in shape}
            fold, omega = th, dict(zeros)
        tmp = {n: tmp[n] + f64(g)[n] ** 2 for n in shape}
        omega = {n: omega[n] - f64(g)[n] * f64(u)[n] for n in shape}
        theta = jax.tree.map(jnp.add, theta, u)
        clock = Clock(jnp.int32(i), jnp.int32(i), jnp.int32(steps))
        info = StepInfo(None, None, None, g, u, theta, jnp.int32(0), k[0], hp, None, None, state,
                        clock)
        _, _, state = method.after_step(info)
    for got, want in ((state.fisher.window_sum, tmp), (state.fisher.running, F),
                      (state.score.omega, omega), (state.score.score, R),
                      (state.score.fold_params, fold)):
        for n in shape:
            np.testing.assert_allclose(got[n], want[n], rtol=2e-4, atol=1e-6)
    assert any(float(jnp.abs(v).max()) > 0 for v in state.score.score.values())


@pytest.mark.parametrize("fold", ["agem_code", "average"])
def test_rwalk_boundary_folds_the_score_and_replaces_the_rescaled_penalty(fold):
    """At each boundary: S from the task's score (doubled on the first task), Ω = minmax(F) +
    minmax(S) anchored at the task's end (replacing the last), the window and score restarted,
    the running Fisher and S kept."""
    method, tr, data = _build("rwalk", fisher_window=3, importance_fold=fold)
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    kept = None
    for t in (0, 1):
        state, _ = tr.fit(state, data, jnp.asarray(t), 7)
        pre, end = state.mstate, state.params
        state = tr.end_task(state, data, jnp.asarray(t))
        r = jax.tree.map(lambda v: np.asarray(v, np.float64) * (2 if t == 0 else 1),
                         pre.score.score)
        kept = jax.tree.map(np.zeros_like, r) if kept is None else kept
        kept = jax.tree.map(
            lambda s, x: s + (s + x) / 2 if fold == "agem_code" else (s + x) / 2, kept, r)
        after = state.mstate
        for got, want in zip(jax.tree.leaves(after.importance), jax.tree.leaves(kept)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        omega = jax.tree.map(np.add, _minmax(pre.fisher.running), _minmax(kept))
        for got, want in zip(jax.tree.leaves(after.penalty.curvature.values),
                             jax.tree.leaves(omega)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        for a, p in zip(jax.tree.leaves(after.penalty.anchor), jax.tree.leaves(end)):
            np.testing.assert_array_equal(a, p)
        assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(
            (after.score.omega, after.score.score, after.fisher.window_sum)))
        for a, b in zip(jax.tree.leaves(after.fisher.running), jax.tree.leaves(pre.fisher.running)):
            np.testing.assert_array_equal(a, b)
        for a, p in zip(jax.tree.leaves(after.score.fold_params), jax.tree.leaves(end)):
            np.testing.assert_array_equal(a, p)


@pytest.mark.parametrize("options,match", [
    ({"fisher_window": 0}, "fisher_window must be a positive int"),
    ({"fisher_decay": 1.5}, r"fisher_decay must lie in \(0, 1\]"),
    ({"importance_fold": "sum"}, "importance_fold must be one of"),
])
def test_rwalk_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        get_method("rwalk", **options)


def test_si_importance_is_nonnegative_and_path_integral_resets():
    method, tr, data = _build("si")
    state = tr.init(jax.random.key(0), method.default_hparams, data)
    state, _ = tr.fit(state, data, jnp.asarray(0), 15)
    assert any(float(jnp.abs(w).sum()) > 0 for w in jax.tree.leaves(state.mstate.omega))
    after = tr.end_task(state, data, jnp.asarray(0))
    assert all(float(jnp.abs(w).sum()) == 0 for w in jax.tree.leaves(after.mstate.omega))
    for a, b in zip(jax.tree.leaves(after.mstate.start), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    leaves = jax.tree.leaves(after.mstate.penalty.curvature.values)
    assert all(float(l.min()) >= 0 for l in leaves) and any(float(l.max()) > 0 for l in leaves)


@pytest.mark.parametrize("path_gradient", ["task", "total"])
def test_si_path_integral_takes_the_task_or_the_total_gradient(path_gradient):
    """One after_step by hand: ω ← ω − g·Δθ with g the task gradient, or (van de Ven's code) the
    task gradient plus λ Ω ⊙ (θ_before − θ*), θ_before = θ_after − Δθ."""
    from cljax.methods import StepInfo
    from cljax.methods.penalties import SIState

    k = jax.random.split(jax.random.key(9), 6)
    shape = {"w": (3, 2), "b": (2,)}
    draw = lambda key, scale=1.0: {n: scale * jax.random.normal(jax.random.fold_in(key, i), s)
                                   for i, (n, s) in enumerate(shape.items())}
    anchor, params, grads, updates, omega0 = draw(k[0]), draw(k[1]), draw(k[2]), draw(k[3], 0.1), \
        draw(k[4])
    Omega = jax.tree.map(jnp.abs, draw(k[5]))
    penalty = transforms.consolidate(transforms.init_penalty(anchor), anchor, Omega,
                                     mode="online")
    method = get_method("si", path_gradient=path_gradient)
    state = SIState(penalty, importance.PathIntegralState(omega0), anchor)
    info = StepInfo(None, None, None, grads, updates, params, jnp.int32(1), k[0],
                    {"strength": jnp.float32(0.7), "xi": 0.1}, None, None, state, None)
    _, _, after = method.after_step(info)
    for n in shape:
        g = np.asarray(grads[n], np.float64)
        if path_gradient == "total":
            before = np.asarray(params[n], np.float64) - np.asarray(updates[n], np.float64)
            g = g + 0.7 * np.asarray(Omega[n]) * (before - np.asarray(anchor[n]))
        want = np.asarray(omega0[n]) - g * np.asarray(updates[n])
        np.testing.assert_allclose(after.omega[n], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="path_gradient must be one of"):
        get_method("si", path_gradient="regularised")


def test_kfac_ewc_modes_combine_the_tasks_factors_as_documented():
    def two_tasks(**options):
        method, tr, data = _build("kfac_ewc", **options)
        state = tr.init(jax.random.key(0), {"strength": 10.0, "decay": 1.0}, data)
        for t in range(2):
            state, _ = tr.fit(state, data, jnp.asarray(t), 6)
            state = tr.end_task(state, data, jnp.asarray(t))
        return state.mstate

    per_task = two_tasks(mode="multi_task", num_slots=3)
    summed = two_tasks(mode="sum")
    online = two_tasks()
    assert int(per_task.count) == 2
    for state in (per_task, summed, online):
        assert isinstance(state.curvature, curvature.KroneckerFactored)
    # multi_task keeps one slot per task (a leading axis of 3); sum and online keep one product
    for name, f in per_task.curvature.factors.items():
        assert float(jnp.abs(f.A[2]).max()) == 0.0 and float(jnp.abs(f.A[1]).max()) > 0
        summed_f, online_f = summed.curvature.factors[name], online.curvature.factors[name]
        # task 1 trained under the same penalty in both modes, so the factors agree
        np.testing.assert_allclose(summed_f.A, f.A[0] + f.A[1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(summed_f.G, f.G[0] + f.G[1], rtol=1e-5, atol=1e-7)
        x, y = curvature.nearest_kronecker_sum(f.A[0], f.G[0], f.A[1], f.G[1])
        np.testing.assert_allclose(jnp.kron(online_f.A, online_f.G), jnp.kron(x, y), rtol=1e-4,
                                   atol=1e-7)
    with pytest.raises(ValueError, match="num_slots must be a positive int"):
        get_method("kfac_ewc", mode="multi_task")
    with pytest.raises(ValueError, match="num_slots must be None or 1"):
        get_method("kfac_ewc", mode="sum", num_slots=3)
    with pytest.raises(ValueError, match="mode must be"):
        get_method("kfac_ewc", mode="replace")


def test_ncl_kfac_fused_gradient_matches_the_transform_path():
    keys = jax.random.split(jax.random.key(2), 2)
    runs = {}
    for fused in (True, False):
        method, tr, data = _build("ncl_kfac", fused_gradient=fused)
        assert (method.value_and_grad is not None) == fused
        hparams = {**method.default_hparams, "strength": np.array([1.0, 30.0])}
        runs[fused] = run_stream(tr, data, num_steps=8, keys=keys, hparams=hparams)
    np.testing.assert_allclose(runs[True].train_loss, runs[False].train_loss, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(runs[True].accuracy, runs[False].accuracy, atol=1e-6)


def test_method_errors():
    with pytest.raises(ValueError, match="fisher"):
        get_method("ewc", fisher="sampled")
    with pytest.raises(ValueError, match="accumulate must be one of"):
        get_method("mas", accumulate="max")
    with pytest.raises(ValueError, match=r"num_examples \(1024\) must be a multiple of "
                                         r"group_size \(10\)"):
        get_method("mas", group_size=10)
    with pytest.raises(ValueError, match="group_size"):
        get_method("mas", group_size=0)
    with pytest.raises(TypeError, match="bad options"):
        get_method("ewc", lam=1.0)
    method, tr, data = _build("ewc")
    with pytest.raises(KeyError, match="strength"):
        run_stream(tr, data, num_steps=2, keys=jax.random.split(jax.random.key(0), 1))

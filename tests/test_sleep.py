"""Sleep Replay Consolidation (``cljax.methods.sleep``): the spiking pass and STDP against a
hand-written loop of the authors' ``sleepnn_old.m``, the scale factors against a hand computation
of their ``normalize_nn_data.m``, the statistics and the input window against numpy, then the
method's properties (only kernels change, finite, zero steps is the identity, refusals). The
contracts (finite, one compilation, vmap, resume, host, switched off) are rows ``src`` and
``src_current`` of ``tests/test_contract.py``."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.methods import get_method
from cljax.methods.sleep import (
    DT,
    GAIN_WIDTH,
    input_spike_rates,
    layer_activations,
    scale_factors,
    sleep_lengths,
    spiking_sleep,
    stdp_gain,
    task_statistics,
)
from cljax.nn import CNN, MLP, as_model
from cljax.training import make_trainer, prepare_data

# ----------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------


def _numpy_sleep(kernels, spikes_in, scales, betas, decay, inc, dec, weight_dependent):
    """``sleepnn_old.m``'s loop, one synapse at a time, in float64: for each step and layer the
    impulse from the layer below's spikes of this step, decay, threshold, STDP on the weights
    into the units that spiked, reset. Returns the kernels, spike counts and the smallest gap
    |v − β| met (to tell a comparison from a near tie)."""
    W = [np.asarray(k, np.float64).copy() for k in kernels]
    v = [np.zeros(w.shape[1]) for w in W]
    counts = np.zeros(len(W), np.int64)
    gap = np.inf
    for t in range(spikes_in.shape[0]):
        pre = spikes_in[t].astype(bool)
        for layer, w in enumerate(W):
            impulse = scales[layer] * (pre.astype(np.float64) @ w)
            v[layer] = decay * v[layer] + impulse
            gap = min(gap, np.min(np.abs(v[layer] - betas[layer])))
            post = v[layer] >= betas[layer]
            for j in np.flatnonzero(post):
                for i in range(w.shape[0]):
                    g = (2.0 * (1.0 - 1.0 / (1.0 + np.exp(-w[i, j] / 0.001)))
                         if weight_dependent else 1.0)
                    w[i, j] += inc * g if pre[i] else -dec * g
            v[layer][post] = 0.0
            counts[layer] += post.sum()
            pre = post
    return W, counts, gap


def _numpy_factors(weight_max, activation_max):
    """``normalize_nn_data.m``: previous = 1; applied = max(w, a) / previous; factor = 1 /
    applied; previous = applied."""
    previous, out = 1.0, []
    for w, a in zip(weight_max, activation_max):
        applied = max(w, a) / previous
        out.append(1.0 / applied)
        previous = applied
    return np.asarray(out)


@pytest.mark.parametrize("weight_dependent", [True, False])
def test_spiking_sleep_matches_the_authors_loop(weight_dependent):
    """A 4-3-2 network, 10 steps of a fixed input spike train: the kernels and spike counts of
    the jitted loop equal the hand-written loop's (float32 against float64); both layers spike,
    units integrate over several steps (the decay matters), and the weights move."""
    rng = np.random.default_rng(0)
    kernels = [rng.normal(0.0, 0.004, (4, 3)).astype(np.float32) + 0.002,
               rng.normal(0.0, 0.004, (3, 2)).astype(np.float32) + 0.002]
    spikes = rng.random((10, 4)) < 0.6
    scales, betas = np.asarray([60.0, 600.0]), np.asarray([0.95, 1.1])
    hp = dict(decay=0.9, inc=0.003, dec=0.001)
    want, counts, gap = _numpy_sleep(kernels, spikes, scales, betas,
                                     weight_dependent=weight_dependent, **hp)
    assert gap > 1e-3 and counts.min() > 0, (gap, counts)   # no near tie; both layers spike

    run = jax.jit(functools.partial(spiking_sleep, weight_dependent=weight_dependent),
                  static_argnums=(1, 2))
    got, got_counts = run([jnp.asarray(k) for k in kernels], lambda t: jnp.asarray(spikes)[t], 10,
                          scales=scales, thresholds=betas, **hp)
    np.testing.assert_array_equal(np.asarray(got_counts), counts)
    for g, w, k in zip(got, want, kernels):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-7)
        assert np.abs(w - k).max() > 1e-4


def test_zero_steps_leave_the_kernels_bit_for_bit():
    """0 steps (static, or a traced count) return the kernels as they were, spike counts 0."""
    kernels = (jnp.asarray([[-0.0, 1.5], [2.0, -3.0]]), jnp.asarray([[0.25], [-0.5]]))
    fire = lambda t: jnp.ones((2,), bool)
    kw = dict(scales=jnp.ones(2), thresholds=jnp.full(2, 1e-3), decay=1.0, inc=1.0, dec=1.0)
    for steps in (0, jnp.int32(0)):
        got, counts = jax.jit(lambda k, n: spiking_sleep(k, fire, n, **kw))(kernels, steps)
        for g, k in zip(got, kernels):
            np.testing.assert_array_equal(np.asarray(g).view(np.uint32),
                                          np.asarray(k).view(np.uint32))
        assert np.asarray(counts).tolist() == [0, 0]


def test_scale_factors_match_the_hand_computation():
    """s = max(weight max, activation max) per layer; λ_1 = s_1, λ_l = s_l / λ_{l-1}; factor
    1/λ: (2, 4, 0.5) → 1/2, 1/2, 4; a layer with s = 0 counts as 1."""
    np.testing.assert_allclose(scale_factors(jnp.asarray([2.0, 1.0, 0.5]),
                                             jnp.asarray([0.5, 4.0, 0.1])), [0.5, 0.5, 4.0])
    np.testing.assert_allclose(scale_factors(jnp.asarray([3.0, 0.0]), jnp.asarray([1.0, 0.0])),
                               [1 / 3, 3.0])
    w, a = np.asarray([0.3, 0.2, 0.7]), np.asarray([1.7, 9.0, 4.0])
    np.testing.assert_allclose(scale_factors(w, a), _numpy_factors(w, a), rtol=1e-6)


def test_stdp_gain_is_the_authors_sigmoid():
    w = np.asarray([-0.01, -0.001, 0.0, 0.001, 0.01], np.float32)
    np.testing.assert_allclose(stdp_gain(jnp.asarray(w)),
                               2 * (1 - 1 / (1 + np.exp(-w.astype(np.float64) / GAIN_WIDTH))),
                               rtol=1e-5)


def test_input_spike_rates_keep_one_window_of_the_mean_input():
    """Every draw keeps exactly one patch × patch window of the mean input, scaled by
    2·dt·rate and clipped to 1; over many draws every window position occurs."""
    mean_x = jnp.asarray(np.random.default_rng(0).random((6, 5, 2)), jnp.float32) + 0.1
    scale = 2 * DT * 300.0
    draws = jax.jit(jax.vmap(lambda k: input_spike_rates(mean_x, k, input_rate=300.0,
                                                          patch=3)))(
        jax.random.split(jax.random.key(0), 200))
    corners = set()
    for r in np.asarray(draws).reshape(200, 6, 5, 2):
        rows, cols = np.nonzero(r.any(axis=2))
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
        window = (slice(rows.min(), rows.min() + 3), slice(cols.min(), cols.min() + 3))
        np.testing.assert_allclose(r[window], np.minimum(np.asarray(mean_x)[window] * scale, 1.0),
                                   rtol=1e-6)
        assert np.count_nonzero(r) == 18
        corners.add((rows.min(), cols.min()))
    assert corners == {(i, j) for i in range(4) for j in range(3)}
    full = input_spike_rates(mean_x, jax.random.key(0), input_rate=1e4, patch=None)
    np.testing.assert_array_equal(full, np.ones(60))                       # clipped to 1


def test_task_statistics_match_numpy():
    """Mean input and per-layer largest activation over the first ``count`` rows, in chunks that
    do not divide the rows (the padding and rows past ``count`` excluded)."""
    rng = np.random.default_rng(1)
    params = {"Dense_0": {"kernel": rng.normal(size=(12, 5)).astype(np.float32),
                          "bias": rng.normal(size=5).astype(np.float32)},
              "Dense_1": {"kernel": rng.normal(size=(5, 3)).astype(np.float32)}}
    rows = {"x": rng.integers(0, 256, (11, 3, 4)).astype(np.uint8),
            "label": np.zeros(11, np.int32), "task": np.zeros(11, np.int32)}
    rows["x"][9:] = 255                                    # beyond count: must not count

    def to_b(r):
        return {"x": r["x"].astype(jnp.float32) / 255.0}

    total, count, maxima = jax.jit(
        lambda p, r: task_statistics(p, r, jnp.int32(9), to_b, chunk_size=4))(params, rows)
    x = rows["x"][:9].astype(np.float64) / 255.0
    h = np.maximum(x.reshape(9, -1) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0)
    out = np.maximum(h @ params["Dense_1"]["kernel"], 0)
    assert float(count) == 9
    np.testing.assert_allclose(total, x.sum(0), rtol=1e-5)
    np.testing.assert_allclose(maxima, [h.max(), out.max()], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The method on a tiny stream
# ----------------------------------------------------------------------------------------------

@functools.cache
def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                       tasks=[[0, 1], [2, 3], [4, 5]])


def _trainer(method, widths=(12,), scenario="class"):
    s = _stream()
    sc = make_scenario(s, scenario)
    model = as_model(MLP(widths, sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=15)
    return tr, prepare_data(s, sc, eval_chunk=15)


TINY = dict(thresholds=(14.548273, 38.046326), patch=3, sleep_steps=40)


@functools.cache
def _trained(statistics="seen", **options):
    """Tasks 0 and 1 trained (8 steps each, a sleep after task 0): the state before task 1's
    sleep, and the trainer."""
    method = get_method("src", **{**TINY, "statistics": statistics, **options})
    tr, data = _trainer(method)
    state = jax.jit(tr.init)(jax.random.key(0), dict(method.default_hparams), data)
    fit = jax.jit(lambda st, t: tr.fit(st, data, t, 8)[0])
    end = jax.jit(tr.end_task)
    state = fit(end(fit(state, jnp.int32(0)), data, jnp.int32(0)), jnp.int32(1))
    return method, tr, data, state, end


@pytest.mark.parametrize("statistics", ["seen", "current"])
def test_the_sleeps_scale_factors_come_from_the_datas_activations(statistics):
    """The factors of task 1's sleep: alpha_scale × the hand computation from the largest
    positive weight of each layer and the largest ReLU activation (numpy forward, biases
    included) over the training data of tasks 0-1 ("seen") or task 1 ("current")."""
    method, tr, data, state, end = _trained(statistics)
    tasks = [0, 1] if statistics == "seen" else [1]
    x = np.concatenate([np.asarray(data.train.x[t, :int(data.train.n[t])]) for t in tasks])
    h = x.reshape(len(x), -1).astype(np.float64) / 255.0
    act_max, w_max = [], []
    for name in ("Dense_0", "Dense_1"):
        k, b = (np.asarray(state.params[name][p], np.float64) for p in ("kernel", "bias"))
        h = np.maximum(h @ k + b, 0.0)
        act_max.append(h.max())
        w_max.append(max(k.max(), 0.0))
    want = method.default_hparams["alpha_scale"] * _numpy_factors(w_max, act_max)
    after = end(state, data, jnp.int32(1))
    np.testing.assert_allclose(after.mstate.scales, want, rtol=1e-5)
    assert int(after.mstate.steps) == round(40 * (1 + 1 / 3))


def test_a_sleep_changes_the_kernels_only_and_keeps_them_finite():
    """With the authors' MNIST hyperparameters: units spike in every layer, kernels move and stay
    finite; biases, the optimizer state and the step counter are untouched, bit for bit."""
    _, tr, data, state, end = _trained()
    after = end(state, data, jnp.int32(1))
    assert np.asarray(after.mstate.spikes).min() > 0, after.mstate
    for name in ("Dense_0", "Dense_1"):
        k0, k1 = (np.asarray(s.params[name]["kernel"]) for s in (state, after))
        assert np.all(np.isfinite(k1)) and np.abs(k1 - k0).max() > 0, name
        np.testing.assert_array_equal(after.params[name]["bias"], state.params[name]["bias"])
    for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == int(state.step)


def test_zero_sleep_steps_is_fine_tuning_at_the_boundary():
    """``sleep_steps=0``: the boundary returns the parameters bit for bit."""
    _, tr, data, state, end = _trained(sleep_steps=0)
    after = end(state, data, jnp.int32(1))
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    assert int(after.mstate.steps) == 0 and np.asarray(after.mstate.spikes).sum() == 0


def test_the_sleep_is_driven_by_the_boundary_key():
    """Another run key draws another input spike train, so another sleep."""
    _, tr, data, state, end = _trained()
    a = end(state, data, jnp.int32(1))
    b = end(state._replace(key=jax.random.key(9)), data, jnp.int32(1))
    assert not np.array_equal(a.params["Dense_0"]["kernel"], b.params["Dense_0"]["kernel"])


def test_sleep_lengths_follow_the_authors_schedule():
    np.testing.assert_array_equal(sleep_lengths(15000, 1 / 3, 5),
                                  [15000, 20000, 25000, 30000, 35000])
    np.testing.assert_array_equal(sleep_lengths(0, 1 / 3, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="sleep_steps"):
        sleep_lengths(-1, 0.0, 2)


def test_defaults_are_the_authors_mnist_values():
    m = get_method("src")
    assert dict(m.default_hparams) == {
        "inc": 0.032064, "dec": 0.003344, "decay": 0.999, "input_rate": 239.515363,
        "alpha_scale": 55.882454, "beta_0": 14.548273, "beta_1": 44.560317,
        "beta_2": 38.046326}


@pytest.mark.parametrize("options, match", [
    ({"thresholds": ()}, "thresholds"), ({"thresholds": (1.0, -2.0)}, "thresholds"),
    ({"patch": 0}, "patch"), ({"statistics": "all"}, "statistics"),
    ({"sleep_steps": 1.5}, "sleep_steps"), ({"steps_growth": -1.0}, "steps_growth"),
    ({"chunk_size": 0}, "chunk_size")])
def test_bad_options_are_refused(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        get_method("src", **options)


def test_the_model_hook_refuses_networks_it_cannot_sleep():
    """Before anything is traced: a CNN, an MLP with RGO's feature encoding, a depth that does
    not match the thresholds, a patch larger than the images."""
    s = _stream()
    sc = make_scenario(s, "class")
    data = prepare_data(s, sc, eval_chunk=15)
    cases = [(as_model(CNN(num_outputs=sc.num_outputs)), TINY, "cljax.nn.MLP"),
             (as_model(MLP((12,), sc.num_outputs, feature_encoding=3)), TINY, "feature encoding"),
             (as_model(MLP((12, 12), sc.num_outputs)), TINY, "one threshold per layer"),
             (as_model(MLP((12,), sc.num_outputs)), {**TINY, "patch": 7}, "patch")]
    for model, options, match in cases:
        tr = make_trainer(model, get_method("src", **options), optimizer=optax.sgd(0.1),
                          batch_size=8)
        with pytest.raises(ValueError, match=match):
            tr.model(data)


def test_layer_activations_are_the_models():
    """The statistics' forward pass is the MLP's: its last hidden layer is ``features_fn``, its
    output the ReLU of the logits."""
    model = as_model(MLP((7, 5), 4))
    x = jnp.asarray(np.random.default_rng(2).random((6, 3, 3, 1)), jnp.float32)
    params = model.init(jax.random.key(1), {"x": x})
    acts = layer_activations(params, x)
    np.testing.assert_allclose(acts[1], model.features_fn(params, {"x": x}), rtol=1e-6)
    np.testing.assert_allclose(acts[2], jax.nn.relu(model.logits_fn(params, {"x": x})),
                               rtol=1e-6, atol=1e-7)

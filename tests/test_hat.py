"""Tests for cljax.methods.hat: HAT (Serrà et al. 2018) against oracles built by hand — masked
gradients from numpy loops, the paper's formulas written out, networks written with jax.lax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.methods import Clock, LossContext, PredictContext, StreamSpec, get_method
from cljax.methods.hat import (
    EMBEDDINGS,
    SCALE,
    TASK,
    HATState,
    annealed_scale,
    attention_regulariser,
    batches_per_epoch,
    conditioning_scales,
    embedding_compensation,
    gate_plan,
    gated_model,
    hat,
)
from cljax.nn import CNN, MLP, AlexNet, as_model
from cljax.training import make_trainer, prepare_data, run_stream, to_batch

HP = {"c": 0.75, "s_max": 400.0}


def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                       tasks=[[0, 1], [2, 3], [4, 5]])


def _spec(num_tasks=3, heads=3, counts=(30, 30, 30)):
    return StreamSpec((6, 6, 1), np.uint8, num_tasks, 2, 2, heads,
                      jnp.tile(jnp.arange(2, dtype=jnp.int32), (num_tasks, 1)), counts)


def _tiny_mlp(widths=(5, 4), seed=0):
    model = gated_model(as_model(MLP(widths, 2, num_heads=3)), 3)
    params = jax.jit(model.init)(jax.random.key(seed), {"x": jnp.zeros((1, 6, 6, 1)),
                                                        "task": jnp.zeros((1,), jnp.int32)})
    return model, params


def _batch(n=8, task=None, seed=0):
    rng = np.random.default_rng(seed)
    tasks = rng.integers(0, 3, n) if task is None else np.full(n, task)
    return {"x": jnp.asarray(rng.normal(size=(n, 6, 6, 1)), jnp.float32),
            "y": jnp.asarray(rng.integers(0, 2, n), jnp.int32),
            "task": jnp.asarray(tasks, jnp.int32)}


def _ctx(model, task=1, task_step=3, task_steps=20, spec=None, hparams=HP):
    return LossContext(model, jax.random.key(5), hparams, jnp.int32(task), spec or _spec(), None,
                       Clock(jnp.int32(100), jnp.int32(task_step), jnp.int32(task_steps)))


def _paper_s(b, B, s_max):
    """The paper's schedule for batch b = 1..B of an epoch."""
    return 1 / s_max + (s_max - 1 / s_max) * (b - 1) / (B - 1)


def _paper_compensation(e, s, s_max, bound=50.0):
    return s_max * (np.cosh(np.clip(s * e, -bound, bound)) + 1) / (s * (np.cosh(e) + 1))


# --------------------------------------------------------------------------------------------
# Gradient conditioning and embedding compensation
# --------------------------------------------------------------------------------------------

def test_conditioning_equals_an_explicitly_masked_gradient():
    """The update the optimizer chain makes of the loss's gradient (SGD, lr 1) equals the raw
    gradient masked by hand: kernel entry (i, j) × (1 − min(a_i, a_j)) from numpy loops (the
    first layer × (1 − a_j)), biases × (1 − a_j), the heads untouched, embeddings × the paper's
    q'."""
    model, params = _tiny_mlp()
    a0 = np.array([0.0, 1.0, 0.3, 1.0, 0.0], np.float32)
    a1 = np.array([1.0, 0.0, 0.6, 0.0], np.float32)
    mstate = HATState({"Dense_0": jnp.asarray(a0), "Dense_1": jnp.asarray(a1)})
    method = hat(mask_updates=False, clip_norm=None)
    batch, ctx = _batch(task=1), _ctx(model, task_step=1, task_steps=100,
                                   spec=_spec(counts=(300, 300, 300)))
    tx = method.make_optimizer(HP, optax.sgd(1.0))

    @jax.jit
    def gradient_and_update(params):
        grads = jax.grad(lambda p: method.loss(p, batch, mstate, ctx)[0])(params)
        return grads, tx.update(grads, tx.init(params), params,
                                **method.optimizer_args(params, batch, mstate, ctx))[0]

    grads, updates = gradient_and_update(params)
    g = jax.tree.map(np.asarray, grads)

    def masked(kernel, a_in, a_out):
        out = np.array(kernel)
        for i in range(kernel.shape[0]):
            for j in range(kernel.shape[1]):
                out[i, j] *= 1 - (a_out[j] if a_in is None else min(a_in[i], a_out[j]))
        return out

    B = -(-300 // 8)
    s = _paper_s(2, B, 400.0)
    want = {
        "Dense_0": {"kernel": masked(g["Dense_0"]["kernel"], None, a0),
                    "bias": g["Dense_0"]["bias"] * (1 - a0)},
        "Dense_1": {"kernel": masked(g["Dense_1"]["kernel"], a0, a1),
                    "bias": g["Dense_1"]["bias"] * (1 - a1)},
        "Dense_2": g["Dense_2"],
        EMBEDDINGS: {k: g[EMBEDDINGS][k] * _paper_compensation(np.asarray(params[EMBEDDINGS][k]),
                                                                 s, 400.0)
                     for k in ("Dense_0", "Dense_1")}}
    got = jax.tree.map(lambda u: -np.asarray(u), updates)
    for path, w in jax.tree_util.tree_leaves_with_path(want):
        np.testing.assert_allclose(_leaf(got, path), w, rtol=2e-6, atol=1e-9,
                                   err_msg=jax.tree_util.keystr(path))
    assert np.any(g["Dense_1"]["kernel"] != 0) and np.any(g[EMBEDDINGS]["Dense_0"] != 0)


def _leaf(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_update_masking_changes_nothing_under_sgd_with_binary_masks():
    """``mask_updates`` multiplies the SGD update by factors that are 0 or 1 wherever the gradient
    was already scaled by them (and by the current task's one-hot where the gradient is 0)."""
    model, params = _tiny_mlp()
    mstate = HATState({"Dense_0": jnp.asarray([0.0, 1.0, 1.0, 0.0, 0.0]),
                       "Dense_1": jnp.asarray([1.0, 0.0, 1.0, 0.0])})
    batch, ctx = _batch(task=2), _ctx(model, task=2)
    steps = []
    for mask_updates in (False, True):
        method = hat(mask_updates=mask_updates)
        tx = method.make_optimizer(HP, optax.sgd(0.1))

        @jax.jit
        def update(params):
            grads = jax.grad(lambda p: method.loss(p, batch, mstate, ctx)[0])(params)
            return tx.update(grads, tx.init(params), params,
                             **method.optimizer_args(params, batch, mstate, ctx))[0]

        steps.append(update(params))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), *steps)


def test_alexnet_conditioning_tiles_the_last_conv_over_the_flattened_positions():
    """AlexNet: conv kernels (kh, kw, cin, cout) × (1 − min(a_cin, a_cout)), BN scale and bias ×
    (1 − a), the first fc's input row r = (h, w, c) takes channel c = r mod C of the last conv."""
    net = AlexNet(num_outputs=2, num_heads=2, channels=(2, 3, 4), hidden=(5, 6))
    model = gated_model(as_model(net), 2)
    params = jax.eval_shape(model.init, jax.random.key(0), {
        "x": jnp.zeros((1, 32, 32, 3)), "task": jnp.zeros((1,), jnp.int32)})
    params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)
    rng = np.random.default_rng(0)
    a = {f"BatchStatNorm_{k}": rng.choice([0.0, 0.4, 1.0], u).astype(np.float32)
         for k, u in enumerate((2, 3, 4, 5, 6))}
    scales = jax.jit(lambda p, c: conditioning_scales(p, c, gate_plan(net)))(
        params, {k: jnp.asarray(v) for k, v in a.items()})
    c1 = np.broadcast_to(scales["Conv_1"]["kernel"], params["Conv_1"]["kernel"].shape)
    assert c1.shape == (3, 3, 2, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(c1[:, :, i, j], 1 - min(a["BatchStatNorm_0"][i],
                                                                  a["BatchStatNorm_1"][j]))
    fc1 = np.broadcast_to(np.asarray(scales["Dense_0"]["kernel"]), (16, 5))
    for r in range(16):
        for j in range(5):
            assert fc1[r, j] == 1 - min(a["BatchStatNorm_2"][r % 4], a["BatchStatNorm_3"][j])
    np.testing.assert_array_equal(np.broadcast_to(scales["Conv_0"]["kernel"], (4, 4, 3, 2)),
                                  np.broadcast_to(1 - a["BatchStatNorm_0"], (4, 4, 3, 2)))
    for leaf in ("scale", "bias"):
        np.testing.assert_array_equal(scales["BatchStatNorm_4"][leaf], 1 - a["BatchStatNorm_4"])
    assert np.all(np.asarray(scales["Dense_2"]["kernel"]) == 1)


def test_annealing_schedule_over_a_task_and_the_scale_the_model_sees():
    """s over a task's steps: the paper's 1/s_max + (s_max − 1/s_max)(b − 1)/(B − 1), b the
    batch within its epoch of B = ⌈count / batch size⌉ — 1/s_max at every epoch's first batch,
    s_max at its last — as computed, and as the loss hook hands it to the model."""
    count, bs, steps, s_max = 300, 64, 12, 400.0
    B = -(-count // bs)
    want = [_paper_s(k % B + 1, B, s_max) for k in range(steps)]
    got = [float(annealed_scale(k, batches_per_epoch(count, bs, steps), s_max))
           for k in range(steps)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(1 / s_max) and got[B - 1] == pytest.approx(s_max)
    assert got[B] == pytest.approx(1 / s_max)
    assert int(batches_per_epoch(count, bs, 3)) == 3          # a task shorter than an epoch
    assert float(annealed_scale(0, 1, s_max)) == s_max

    model, params = _tiny_mlp()
    seen = []

    def recording(p, batch, key):
        seen.append(float(batch[SCALE]))
        return jnp.zeros((batch["x"].shape[0], 2))

    rec = model._replace(train_logits_fn=recording)
    method, mstate = hat(), HATState({"Dense_0": jnp.zeros(5), "Dense_1": jnp.zeros(4)})
    spec = _spec(counts=(count, 10, 10))
    for k in range(steps):
        method.loss(params, _batch(n=bs, task=0), mstate,
                    _ctx(rec, task=0, task_step=k, task_steps=steps, spec=spec))
    np.testing.assert_allclose(seen, want, rtol=1e-6)


def test_embedding_compensation_is_the_papers_and_undoes_the_annealing():
    """q'/q = s_max(cosh(s·e) + 1) / (s(cosh e + 1)) (s·e clamped at ±50), and it turns the
    gradient of σ(s·e) into s_max·σ'(e) at every s: the compensated gradient does not depend on
    the annealing."""
    e = jnp.linspace(-6.0, 6.0, 41)
    for s in (1 / 400, 0.7, 12.0, 400.0):
        got = np.asarray(embedding_compensation({"l": e}, s, 400.0)["l"])
        np.testing.assert_allclose(got, _paper_compensation(np.asarray(e, np.float64), s, 400.0),
                                   rtol=1e-5)
        if s < 12:   # no clamp: exact identity
            grad = jax.vmap(jax.grad(lambda v: jax.nn.sigmoid(s * v)))(e)
            sig = jax.nn.sigmoid(e)
            np.testing.assert_allclose(grad * got, 400.0 * sig * (1 - sig), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Regulariser and forward pass
# --------------------------------------------------------------------------------------------

def test_regulariser_against_a_hand_computation_and_in_the_loss():
    rng = np.random.default_rng(3)
    masks = {"a": rng.uniform(size=7), "b": rng.uniform(size=3)}
    prev = {"a": rng.choice([0.0, 0.5, 1.0], 7), "b": rng.choice([0.0, 1.0], 3)}
    num = den = 0.0
    for k in masks:
        for i in range(len(masks[k])):
            num += masks[k][i] * (1 - prev[k][i])
            den += 1 - prev[k][i]
    got = attention_regulariser({k: jnp.asarray(v, jnp.float32) for k, v in masks.items()},
                                {k: jnp.asarray(v, jnp.float32) for k, v in prev.items()})
    np.testing.assert_allclose(float(got), num / den, rtol=1e-6)
    full = {k: jnp.ones_like(jnp.asarray(v, jnp.float32)) for k, v in prev.items()}
    assert float(attention_regulariser({k: jnp.asarray(v) for k, v in masks.items()}, full)) == 0

    model, params = _tiny_mlp()
    a0, a1 = rng.choice([0.0, 1.0], 5), rng.choice([0.0, 1.0], 4)
    mstate = HATState({"Dense_0": jnp.asarray(a0, jnp.float32),
                       "Dense_1": jnp.asarray(a1, jnp.float32)})
    ctx, batch = _ctx(model, task=2, task_step=1), _batch(task=2)
    s = _paper_s(2, 4, 400.0)
    e = {k: np.asarray(v[2], np.float64) for k, v in params[EMBEDDINGS].items()}
    at = {k: 1 / (1 + np.exp(-s * v)) for k, v in e.items()}
    reg = (np.sum(at["Dense_0"] * (1 - a0)) + np.sum(at["Dense_1"] * (1 - a1))) / (
        np.sum(1 - a0) + np.sum(1 - a1))
    method = hat()
    with_c = float(method.loss(params, batch, mstate, ctx)[0])
    without = float(method.loss(params, batch, mstate, ctx._replace(hparams={**HP, "c": 0.0}))[0])
    np.testing.assert_allclose(with_c - without, 0.75 * reg, rtol=1e-4)


def _hand_mlp(params, x, tasks, gate):
    """The gated MLP written out: h = relu(x W + b) · gate(e[task]) per hidden layer, then each
    example's head."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for i in range(2):
        h = np.maximum(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"], 0)
        h = h * gate(p[EMBEDDINGS][f"Dense_{i}"][tasks])
    logits = (h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]).reshape(len(x), 3, 2)
    return logits[np.arange(len(x)), tasks]


def test_gated_forward_equals_a_hand_written_mlp():
    model, params = _tiny_mlp(seed=2)
    batch = _batch(n=12, seed=4)
    tasks = np.asarray(batch["task"])
    s = 3.7
    sig = _hand_mlp(params, batch["x"], tasks, lambda e: 1 / (1 + np.exp(-s * e)))
    np.testing.assert_allclose(model.logits_fn(params, {**batch, SCALE: jnp.float32(s)}), sig,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.train_logits_fn(params, {**batch, SCALE: jnp.float32(s)},
                                                     jax.random.key(0)), sig, rtol=1e-5, atol=1e-6)
    binary = _hand_mlp(params, batch["x"], tasks, lambda e: (e > 0).astype(np.float64))
    np.testing.assert_allclose(model.logits_fn(params, batch), binary, rtol=1e-5, atol=1e-6)
    one = {**batch, "task": jnp.full(12, 2, jnp.int32), SCALE: jnp.float32(s)}
    np.testing.assert_allclose(       # training's one-task batches: batch[TASK], one row of e
        model.logits_fn(params, {**one, TASK: jnp.int32(2)}),
        _hand_mlp(params, batch["x"], np.full(12, 2), lambda e: 1 / (1 + np.exp(-s * e))),
        rtol=1e-5, atol=1e-6)


def test_gated_alexnet_equals_a_hand_written_one_with_the_gate_after_batchnorm():
    """Conv → BN (batch statistics, scale, bias) → gate → ReLU → max-pool, fc → BN → gate →
    ReLU, heads; written with jax.lax (eval mode: no dropout)."""
    net = AlexNet(num_outputs=2, num_heads=2, channels=(2, 3, 4), hidden=(5, 6))
    model = gated_model(as_model(net), 2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 32, 32, 3)), jnp.float32)
    tasks = jnp.asarray([0, 1, 1, 0, 1, 0], jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), {"x": x[:1], "task": tasks[:1]})
    rng = np.random.default_rng(0)
    params = {**params, **{name: {"scale": jnp.asarray(1 + 0.1 * rng.normal(size=v["scale"].shape),
                                                       jnp.float32),
                                  "bias": jnp.asarray(0.1 * rng.normal(size=v["bias"].shape),
                                                      jnp.float32)}
                           for name, v in params.items() if name.startswith("BatchStatNorm")}}
    s = 2.5

    def bn_gate(h, k):
        axes = tuple(range(h.ndim - 1))
        mu, var = h.mean(axes), ((h - h.mean(axes)) ** 2).mean(axes)
        p = params[f"BatchStatNorm_{k}"]
        h = (h - mu) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]
        g = jax.nn.sigmoid(s * params[EMBEDDINGS][f"BatchStatNorm_{k}"][tasks])
        return jnp.maximum(h * g.reshape(g.shape[:1] + (1,) * (h.ndim - 2) + g.shape[1:]), 0)

    @jax.jit
    def by_hand(x):
        h = x
        for k in range(3):
            h = jax.lax.conv_general_dilated(h, params[f"Conv_{k}"]["kernel"], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = bn_gate(h, k)
            H, W = h.shape[1] // 2, h.shape[2] // 2
            h = h[:, :2 * H, :2 * W].reshape(h.shape[0], H, 2, W, 2, h.shape[-1]).max((2, 4))
        h = h.reshape(h.shape[0], -1)
        for k in range(2):
            h = bn_gate(h @ params[f"Dense_{k}"]["kernel"], 3 + k)
        return (h @ params["Dense_2"]["kernel"]).reshape(6, 2, 2)[jnp.arange(6), tasks]

    want = by_hand(x)
    logits = jax.jit(model.logits_fn)
    got = logits(params, {"x": x, "task": tasks, SCALE: jnp.float32(s)})
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    ones = jnp.ones(6, jnp.int32)    # one task for the batch, as training gives it (batch[TASK])
    np.testing.assert_allclose(logits(params, {"x": x, "task": ones, SCALE: jnp.float32(s),
                                               TASK: jnp.int32(1)}),
                               logits(params, {"x": x, "task": ones, SCALE: jnp.float32(s)}),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Protection of earlier tasks, prediction, runs
# --------------------------------------------------------------------------------------------

def _trainer(method, widths=(8, 6), optimizer=None, placement="device"):
    s = _stream()
    sc = make_scenario(s, "task")
    model = as_model(MLP(widths, sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, method, optimizer=optimizer or optax.adam(1e-2), batch_size=8,
                      eval_chunk=15)
    return tr, prepare_data(s, sc, eval_chunk=15, placement=placement)


def _owned(units, mine):
    e = np.full(units, -6.0, np.float32)
    e[list(mine)] = 6.0
    return e


def _owning_state(tr, data, overlap):
    """The trainer's initial state with binary masks (e = ±6): task 0 owns units 0–3 of the first
    layer and 0–2 of the second; task 1 the others (or, with ``overlap``, every unit); task 2
    every unit."""
    state = jax.jit(tr.init)(jax.random.key(0), HP, data)
    emb = {name: jnp.asarray(np.stack([_owned(n, range(n // 2)),
                                       _owned(n, range(n) if overlap else range(n // 2, n)),
                                       _owned(n, range(n))]))
           for name, n in (("Dense_0", 8), ("Dense_1", 6))}
    return state._replace(params={**state.params, EMBEDDINGS: emb})


@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "reused"])
def test_a_later_task_leaves_the_earlier_tasks_units_unchanged(overlap):
    """Task 0 owns units 0–3 / 0–2 (:func:`_owning_state`); task 1 trains (Adam, whose momentum
    from task 0 is still alive) on the other units, or — reused — on every unit: task 0's
    predictions and its units' activations stay bit for bit. Then a batch mixing the three tasks
    predicts each row as the per-task batches do."""
    tr, data = _trainer(hat())
    state = _owning_state(tr, data, overlap)
    fit = jax.jit(lambda st, t: tr.fit(st, data, t, 12)[0])
    end = jax.jit(tr.end_task)
    model = tr.model(data)

    @jax.jit
    def predict(params, mstate, rows):
        b = to_batch(data, rows)
        return tr.method.predict(params, mstate, b,
                                 PredictContext(model, None, jax.random.key(0), b["task"]))

    rows = {"x": data.test.x[0, :15], "label": data.test.y[0, :15],
            "task": jnp.zeros(15, jnp.int32)}
    features = jax.jit(lambda p: model.features_fn(p, to_batch(data, rows))[:, :3])

    def outputs(st):
        return np.asarray(predict(st.params, st.mstate, rows)), np.asarray(features(st.params))

    state = end(fit(state, jnp.int32(0)), data, jnp.int32(0))
    np.testing.assert_array_equal(state.mstate.cumulative["Dense_0"], _owned(8, range(4)) > 0)
    before = outputs(state)
    after_1 = fit(state, jnp.int32(1))
    moved = np.abs(np.asarray(after_1.params["Dense_1"]["kernel"])
                   - np.asarray(state.params["Dense_1"]["kernel"]))
    assert moved.max() > 1e-3                                  # task 1 did train
    for got, want in zip(outputs(after_1), before):
        np.testing.assert_array_equal(got, want)

    state = end(after_1, data, jnp.int32(1))
    state = end(fit(state, jnp.int32(2)), data, jnp.int32(2))
    tasks = np.repeat(np.arange(3), 5)
    order = np.random.default_rng(0).permutation(15)
    mixed_rows = {"x": data.test.x[tasks, np.tile(np.arange(5), 3)],
                  "label": data.test.y[tasks, np.tile(np.arange(5), 3)],
                  "task": jnp.asarray(tasks, jnp.int32)}

    def rows_of(sel):
        return {k: v[sel] for k, v in mixed_rows.items()}

    mixed = np.asarray(predict(state.params, state.mstate, rows_of(order)))
    for t in range(3):
        alone = predict(state.params, state.mstate, rows_of(np.flatnonzero(tasks == t)))
        np.testing.assert_allclose(mixed[np.argsort(order)[tasks == t]], alone, rtol=1e-6,
                                   atol=1e-7)


def test_without_update_masking_adams_momentum_moves_the_earlier_tasks_outputs():
    """Why ``mask_updates`` exists: with the paper's gradient rule alone, Adam's momentum from
    task 0 keeps moving task 0's weights and head while task 1 trains (their gradient is 0)."""
    tr, data = _trainer(hat(mask_updates=False))
    state = _owning_state(tr, data, overlap=False)
    fit = jax.jit(lambda st, t: tr.fit(st, data, t, 12)[0])
    state = jax.jit(tr.end_task)(fit(state, jnp.int32(0)), data, jnp.int32(0))
    after = fit(state, jnp.int32(1))
    head = np.asarray(after.params["Dense_2"]["kernel"] - state.params["Dense_2"]["kernel"])
    assert np.abs(head[:, :2]).max() > 1e-4                    # task 0's head moved
    assert np.abs(np.asarray(after.params["Dense_0"]["kernel"]
                             - state.params["Dense_0"]["kernel"])[:, :4]).max() > 1e-4


def _runs(placement="device"):
    method = get_method("hat")
    tr, data = _trainer(method, widths=(8,), placement=placement)
    return lambda keys, **kw: run_stream(tr, data, keys=keys, num_steps=6,
                                         hparams=method.default_hparams, **kw)


KEYS = jax.random.split(jax.random.key(3), 2)


@pytest.mark.slow   # the contract suite (tests/test_contract.py) checks this by default
def test_vmapped_seeds_equal_separate_runs():
    run = _runs()
    both = run(KEYS, runs="vmap")
    for r in range(2):
        alone = run(KEYS[r:r + 1])
        np.testing.assert_allclose(both.train_loss[r], alone.train_loss[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.accuracy[r], alone.accuracy[0], atol=1e-6)


@pytest.mark.slow
def test_host_pipeline_equals_device():
    device = _runs()(KEYS, runs="vmap")
    host = _runs("host")(KEYS, runs="vmap")
    assert host.timings["data"]["placement"] == "host"
    np.testing.assert_array_equal(host.train_loss, device.train_loss)
    np.testing.assert_array_equal(host.accuracy, device.accuracy)
    jax.tree.map(np.testing.assert_array_equal, host.final_state.mstate,
                 device.final_state.mstate)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_clear_errors():
    with pytest.raises(TypeError, match="MLP and cljax.nn.AlexNet; got a CNN"):
        gate_plan(CNN(num_outputs=2))
    with pytest.raises(ValueError, match="feature encoding"):
        gate_plan(MLP((4,), 2, feature_encoding=3))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        gate_plan(MLP((), 2))
    with pytest.raises(ValueError, match="num_tasks"):
        gated_model(as_model(MLP((4,), 2)), 0)
    with pytest.raises(TypeError, match="mask_updates"):
        hat(mask_updates=1)
    with pytest.raises(ValueError, match="clip_norm"):
        hat(clip_norm=0.0)
    model, params = _tiny_mlp()
    with pytest.raises(ValueError, match=r"batch\['task'\]"):
        model.logits_fn(params, {"x": jnp.zeros((2, 6, 6, 1))})
    s = _stream()
    sc = make_scenario(s, "domain")
    method = hat()
    tr = make_trainer(as_model(MLP((8,), sc.num_outputs)), method, optimizer=optax.adam(1e-2),
                      batch_size=8, eval_chunk=15)
    with pytest.raises(ValueError, match="single-head|scenario"):
        run_stream(tr, prepare_data(s, sc, eval_chunk=15), num_steps=2,
                   keys=jax.random.split(jax.random.key(0), 1), hparams=method.default_hparams)

"""Tests particular to the rehearsal methods (cljax.methods.rehearsal: ER, A-GEM, GEM, LwF, DER,
DER++, iCaRL): herding and exemplar means against brute force, iCaRL's nearest-mean prediction,
the losses of ER, DER, LwF and iCaRL against hand computations, what the memories store, and the
options' errors. The contracts every method shares (finite stream, switched off = fine-tuning,
one compilation, vmapped = separate runs, resume, host) are in tests/test_contract.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.methods import get_method
from cljax.methods.base import Clock, LossContext
from cljax.methods.rehearsal import exemplar_means, herding_order, normalise, task_reference_grads
from cljax.nn import MLP, as_model
from cljax.training import device_feed, make_trainer, prepare_data, run_stream, to_batch

KEYS = jax.random.split(jax.random.key(5), 2)


def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                       tasks=[[0, 1], [2, 3], [4, 5]])


def _build(name, scenario="class", model=None, **options):
    s = _stream()
    sc = make_scenario(s, scenario)
    model = model or as_model(MLP((12,), sc.num_outputs, num_heads=sc.num_heads))
    method = get_method(name, **options)
    tr = make_trainer(model, method, optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    return method, tr, prepare_data(s, sc, eval_chunk=16)


def test_herding_selects_the_running_mean_closest_to_the_class_mean():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.normal(size=(9, 3)), jnp.float32)
    members = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    order, ok = herding_order(f, members, 4)
    fn = np.asarray(normalise(f))
    idx = np.flatnonzero(np.asarray(members))
    mu = fn[idx].mean(0)
    mu /= np.linalg.norm(mu)
    chosen = []
    for k in range(4):   # brute force: try every remaining member
        dists = {i: np.sum((((fn[chosen].sum(0) if chosen else 0) + fn[i]) / (k + 1) - mu) ** 2)
                 for i in idx if i not in chosen}
        chosen.append(min(dists, key=dists.get))
    assert np.asarray(order).tolist() == chosen and bool(ok.all())
    # more picks than members: the tail is marked, nothing is chosen twice
    order, ok = herding_order(f, members, 9)
    assert np.asarray(ok).tolist() == [True] * 7 + [False] * 2
    assert len(set(np.asarray(order)[:7].tolist())) == 7


def test_exemplar_means_oracle():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(7, 4)).astype(np.float32)
    classes = np.array([0, 2, 2, 0, 1, 2, 1])
    valid = np.array([1, 1, 1, 0, 1, 1, 0], bool)
    means, has = exemplar_means(jnp.asarray(f), jnp.asarray(classes), jnp.asarray(valid), 4)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    for c in range(4):
        sel = valid & (classes == c)
        assert bool(has[c]) == sel.any()
        if sel.any():
            m = fn[sel].mean(0)
            np.testing.assert_allclose(means[c], m / np.linalg.norm(m), rtol=1e-5, atol=1e-6)


def test_icarl_predicts_by_the_nearest_exemplar_mean():
    method, tr, data = _build("icarl", per_class=4)
    res = run_stream(tr, data, num_steps=8, keys=KEYS[:1], hparams=method.default_hparams)
    s = res.final_state.mstate
    state = jax.tree.map(lambda x: x[0], res.final_state)
    model = as_model(MLP((12,), 6))
    from cljax.training import make_batch
    batch = make_batch(data, data.test, jnp.zeros(16, jnp.int32), jnp.arange(16))
    f = normalise(model.features_fn(state.params, batch))
    d2 = jnp.sum((f[:, None] - s.means[0][None]) ** 2, -1)
    np.testing.assert_array_equal(jnp.argmin(d2, -1), jnp.argmax(method.predict(
        state.params, state.mstate, batch, type("C", (), {"model": model})()), -1))
    assert int(s.memory.valid[0].sum()) == 4 * 6 and bool(s.has_mean[0].all())
    assert np.all(np.isfinite(res.loss))


def test_er_memory_stores_the_budget_and_agem_projects():
    method, tr, data = _build("er", per_class=4)
    res = run_stream(tr, data, num_steps=4, keys=KEYS[:1])
    m = jax.tree.map(lambda x: x[0], res.final_state.mstate)
    cls = np.asarray(m.task * 2 + m.label)[np.asarray(m.valid)]
    assert np.bincount(cls, minlength=6).tolist() == [4] * 6
    # A-GEM's reference gradient comes from the memory batch and is handed to the projection
    method, tr, data = _build("agem", per_class=4)
    state = tr.init(KEYS[0], {}, data)
    for t in range(2):
        state, _ = tr.fit(state, data, jnp.asarray(t), 3)
        state = tr.end_task(state, data, jnp.asarray(t))
    assert int(state.mstate.valid.sum()) == 2 * 2 * 4


def _gem_state_in_task(memory_options, task=2, steps=6):
    """GEM trained through ``task`` tasks (their ends included) and ``steps`` steps of the next,
    with the loss context its step builds."""
    method, tr, data = _build("gem", **memory_options)
    state = tr.init(KEYS[0], method.default_hparams, data)
    for t in range(task + 1):
        state, _ = tr.fit(state, data, jnp.asarray(t), steps)
        if t < task:
            state = tr.end_task(state, data, jnp.asarray(t))
    net, spec = tr.model_and_spec(data)
    ctx = LossContext(net, jax.random.key(3), state.hparams, jnp.int32(task), spec,
                      lambda r: to_batch(data, r),
                      Clock(jnp.int32(0), jnp.int32(0), jnp.int32(steps)))
    return method, state, ctx


def test_rehearsing_gem_draws_memory_rows_beside_the_current_batch():
    """``gem(rehearse=True)`` at task 2: the step's rows hold ``memory_batch_size`` memory rows
    of the previous tasks beside the current batch; plain GEM's hold none."""
    for rehearse in (False, True):
        options = {"rehearse": True, "memory_batch_size": 5} if rehearse else {}
        method, state, ctx = _gem_state_in_task({"per_class": 2, **options})
        _, tr, data = _build("gem", per_class=2, **options)
        rows = tr.draw(state, data, jnp.int32(2), Clock(jnp.int32(0), jnp.int32(0),
                                                         jnp.int32(6)), device_feed(data))
        assert ("memory" in rows) is rehearse
        if rehearse:
            assert rows["memory"]["task"].shape == (5,) and bool(rows["memory_ok"].all())
            assert set(np.asarray(rows["memory"]["task"]).tolist()) <= {0, 1}   # past tasks


def test_gem_reference_gradients_from_a_reservoir_memory_group_it_by_task():
    """Per past task, the gradient of the mean loss over that task's stored examples, from a
    reservoir memory holding tasks in any order: against a loop of per-example gradients."""
    method, state, ctx = _gem_state_in_task({"memory": "reservoir", "per_class": None,
                                             "capacity": 12})
    m = state.mstate
    stored = np.asarray(m.task)[np.asarray(m.valid)]
    assert set(stored.tolist()) >= {0, 1, 2}       # the reservoir mixes the tasks seen
    args = method.optimizer_args(state.params, None, m, ctx)
    grads, mask = args["reference_grads"], args["reference_mask"]

    def example_grad(i):
        row = {k: getattr(m, k)[i:i + 1] for k in ("x", "label", "task")}
        b = ctx.to_batch(row)
        return jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            ctx.model.train_logits_fn(p, b, ctx.key), b["y"])[0])(state.params)

    for t in range(3):
        idx = np.flatnonzero(np.asarray(m.valid) & (np.asarray(m.task) == t))
        assert bool(mask[t]) == (t < 2 and len(idx) > 0)
        want = jax.tree.map(lambda *g: sum(g) / len(idx), *[example_grad(i) for i in idx])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[t], b, rtol=2e-5, atol=1e-6),
                     grads, want)


def test_gem_reference_gradients_of_any_memory_equal_the_per_class_blocks():
    """On GEM's own per-class memory (slots grouped by task), the grouping by stored task gives
    the gradients of the block path."""
    method, state, ctx = _gem_state_in_task({"per_class": 3})
    blocks = method.optimizer_args(state.params, None, state.mstate, ctx)
    grads, mask = task_reference_grads(state.params, state.mstate, ctx)
    np.testing.assert_array_equal(mask, blocks["reference_mask"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 grads, blocks["reference_grads"])


def test_gem_finished_task_blocks_alone_equal_every_block_vmapped():
    """``reference_grads="seen"`` (only the finished tasks' blocks, looped) gives the
    gradients of ``"all"`` (every block vmapped): the finished tasks' to rounding, the others
    exactly zero (the contract suite's ``gem`` and ``gem_all_blocks`` rows run both paths)."""
    out = {}
    for how in ("seen", "all"):
        method, state, ctx = _gem_state_in_task({"per_class": 3, "reference_grads": how})
        out[how] = method.optimizer_args(state.params, None, state.mstate, ctx)
    seen, every = out["seen"], out["all"]
    np.testing.assert_array_equal(seen["reference_mask"], every["reference_mask"])
    assert np.asarray(seen["reference_mask"]).tolist()[:3] == [True, True, False]
    for a, b in zip(jax.tree.leaves(seen["reference_grads"]),
                    jax.tree.leaves(every["reference_grads"])):
        np.testing.assert_allclose(a[:2], b[:2], rtol=2e-5, atol=1e-7)
        assert np.abs(np.asarray(a[:2])).max() > 0
        np.testing.assert_array_equal(a[2:], 0.0)
        np.testing.assert_array_equal(b[2:], 0.0)


def test_rehearsal_bad_inputs():
    with pytest.raises(ValueError, match="memory must be"):
        get_method("er", memory="fifo")
    with pytest.raises(ValueError, match="reference_grads must be one of"):
        get_method("gem", reference_grads="some")
    with pytest.raises(ValueError, match="per_class"):
        get_method("er", per_class=-1)
    with pytest.raises(ValueError, match="class_balanced' needs capacity"):
        get_method("er", memory="class_balanced", per_class=None)
    with pytest.raises(ValueError, match="reservoir"):
        get_method("derpp", memory="per_class")
    method, tr, data = _build("er", memory="class_balanced", per_class=None, capacity=5)
    with pytest.raises(ValueError, match="capacity 5 cannot hold one example of each of the "
                                         "stream's 6 classes"):
        run_stream(tr, data, num_steps=2, keys=KEYS[:1])
    method, tr, data = _build("er", per_class=1000)
    with pytest.raises(ValueError, match="larger than the stream"):
        run_stream(tr, data, num_steps=2, keys=KEYS[:1])
    method, tr, data = _build("lwf")
    with pytest.raises(ValueError, match="temperature.*> 0"):
        run_stream(tr, data, num_steps=2, keys=KEYS[:1], hparams={"strength": 1.0,
                                                                   "temperature": 0.0})
    plain = as_model(MLP((4,), 6))._replace(features_fn=None)
    with pytest.raises(ValueError, match="icarl.*features_fn"):
        _build("icarl", model=plain)
    method, tr, data = _build("icarl", scenario="task")
    with pytest.raises(ValueError, match="does not support the .task. scenario"):
        run_stream(tr, data, num_steps=2, keys=KEYS[:1], hparams=method.default_hparams)


def test_der_loss_is_the_current_loss_plus_alpha_times_the_stored_logits_mse():
    from cljax.methods import Clock, LossContext

    model = as_model(MLP((12,), 6))
    k = jax.random.split(jax.random.key(3), 5)
    x, xm = jax.random.normal(k[0], (4, 5)), jax.random.normal(k[1], (4, 5))
    stored = jax.random.normal(k[2], (4, 6))
    batch = {"x": x, "y": jnp.array([0, 1, 2, 3]), "task": jnp.zeros(4, jnp.int32),
             "memory": {"x": xm, "y": jnp.array([4, 5, 0, 1]), "task": jnp.zeros(4, jnp.int32),
                        "logits": stored},
             "memory_ok": jnp.array([True, True, True, False])}   # the last slot is empty
    params = model.init(k[3], batch)
    method = get_method("der", capacity=8)
    ctx = LossContext(model, k[4], {"alpha": jnp.float32(0.3)}, jnp.int32(1), None,
                      lambda rows: rows, Clock(jnp.int32(0), jnp.int32(0), jnp.int32(5)))
    total, _ = jax.jit(lambda p: method.loss(p, batch, None, ctx))(params)

    def ce(logits, y):
        logits = np.asarray(logits, np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -logp[np.arange(len(y)), np.asarray(y)]

    current = ce(model.logits_fn(params, batch), batch["y"]).mean()
    z = np.asarray(model.logits_fn(params, batch["memory"]), np.float64)
    mse = ((z - np.asarray(stored, np.float64)) ** 2).mean(-1)[:3].mean()   # filled slots only
    np.testing.assert_allclose(total, current + 0.3 * mse, rtol=1e-5)
    assert method.default_hparams == {"alpha": 0.5}
    assert "beta" not in method.default_hparams      # no label term, unlike DER++
    derpp_ctx = ctx._replace(hparams={"alpha": jnp.float32(0.3), "beta": jnp.float32(0.0)})
    with pytest.raises(KeyError, match="memory2"):   # DER++ reads its second draw; DER has none
        get_method("derpp", capacity=8).loss(params, batch, None, derpp_ctx)


def test_er_losses_against_a_hand_computation():
    from cljax.methods import Clock, LossContext

    model = as_model(MLP((12,), 6))
    k = jax.random.split(jax.random.key(4), 4)
    x, xm = jax.random.normal(k[0], (4, 5)), jax.random.normal(k[1], (3, 5))
    batch = {"x": x, "y": jnp.array([0, 1, 2, 3]), "task": jnp.zeros(4, jnp.int32),
             "memory": {"x": xm, "y": jnp.array([4, 5, 0]), "task": jnp.zeros(3, jnp.int32)},
             "memory_ok": jnp.array([True, True, False])}     # 2 of 3 memory rows valid
    params = model.init(k[2], batch)
    ctx = LossContext(model, k[3], {}, jnp.int32(2), None, lambda rows: rows,
                      Clock(jnp.int32(0), jnp.int32(0), jnp.int32(5)))

    def ce(rows):
        z = np.asarray(model.logits_fn(params, rows), np.float64)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -logp[np.arange(len(rows["y"])), np.asarray(rows["y"])]

    cur, memory = ce(batch), ce(batch["memory"])[:2]
    concat, _ = get_method("er", per_class=2, loss="concat").loss(params, batch, None, ctx)
    np.testing.assert_allclose(concat, np.concatenate([cur, memory]).mean(), rtol=1e-5)
    weighted, _ = get_method("er", per_class=2).loss(params, batch, None, ctx)
    np.testing.assert_allclose(weighted, cur.mean() / 3 + 2 / 3 * memory.mean(), rtol=1e-5)
    # GEM projects the gradient of the current batch alone, or with rehearse=True (Hsu et al.'s
    # code) that of the current and memory rows together, ER's concatenated loss
    gem_loss, _ = get_method("gem", per_class=2).loss(params, batch, None, ctx)
    np.testing.assert_allclose(gem_loss, cur.mean(), rtol=1e-5)
    gem_loss, _ = get_method("gem", per_class=2, rehearse=True).loss(params, batch, None, ctx)
    np.testing.assert_allclose(gem_loss, np.concatenate([cur, memory]).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="need rehearse=True"):
        get_method("gem", memory_batch_size=4)
    with pytest.raises(TypeError, match="rehearse must be a bool"):
        get_method("gem", rehearse=1)
    with pytest.raises(ValueError, match="loss must be one of"):
        get_method("er", loss="sum")
    with pytest.raises(TypeError, match="memory_replace must be a bool"):
        get_method("agem", memory_replace="no")


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighting", ["per_task", "replay"])
@pytest.mark.parametrize("outputs", ["all", "seen"])
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lwf_loss_against_a_hand_computation(scenario, weighting, outputs, reduction):
    """LwF's loss at task 2 (two previous tasks) in each scenario, both weightings (van de Ven's
    current and 2019 code), both output sets and both reductions over classes, against numpy:
    Class-IL's "seen" softmaxes run over the classes of tasks ≤ 2 for the model, < 2 for its
    targets (zero elsewhere); "mean" divides each softmax's distillation by its classes."""
    from cljax.methods import Clock, LossContext, StreamSpec

    T, K, T_kd, lam, task = 4, 2, 2.0, 0.7, 2
    heads, width = {"task": (T, K), "domain": (1, K), "class": (1, T * K)}[scenario]
    table = jnp.array([[5, 2], [7, 0], [1, 6], [3, 4]], jnp.int32)   # a permuted class order
    spec = StreamSpec((5,), jnp.float32, T, K, width, heads,
                      table if scenario == "class" else jnp.tile(jnp.arange(K), (T, 1)))
    model = as_model(MLP((12,), width, num_heads=heads))
    k = jax.random.split(jax.random.key(6), 4)
    x = jax.random.normal(k[0], (6, 5))
    y = jnp.array([1, 6, 6, 1, 1, 6]) if scenario == "class" else jnp.array([0, 1, 1, 0, 0, 1])
    batch = {"x": x, "y": y, "task": jnp.full(6, task, jnp.int32)}
    params, old_params = model.init(k[1], batch), model.init(k[2], batch)
    method = get_method("lwf", weighting=weighting, outputs=outputs,
                        distill_reduction=reduction)
    ctx = LossContext(model, k[3], {"strength": jnp.float32(lam), "temperature": T_kd},
                      jnp.int32(task), spec, lambda rows: rows,
                      Clock(jnp.int32(task), jnp.int32(0), jnp.int32(5)))
    prev = method.init(old_params, k[3], {}, spec)._replace(count=jnp.int32(task))
    total, _ = jax.jit(lambda p: method.loss(p, batch, prev, ctx))(params)

    z = np.asarray(model.apply_fn(params, batch, output="all_heads"), np.float64)   # [B, H, C]
    z_old = np.asarray(model.apply_fn(old_params, batch, output="all_heads"), np.float64)
    classes = width
    if scenario == "class" and outputs == "seen":
        owner = np.empty(T * K, int)
        for t, row in enumerate(np.asarray(table)):
            owner[row] = t
        z = np.where(owner <= task, z, -np.inf)
        z_old = np.where(owner < task, z_old, -np.inf)
        classes = (task + 1) * K
    own = z[:, task] if heads > 1 else z[:, 0]
    ce = -_np_log_softmax(own)[np.arange(6), np.asarray(y)].mean()

    def kd(h):   # −Σ_c softmax(old/T)_c log softmax(new/T)_c, the batch mean
        target = np.exp(_np_log_softmax(z_old[:, h] / T_kd))
        new = np.where(target > 0, _np_log_softmax(z[:, h] / T_kd), 0.0)
        return -(target * new).sum(-1).mean() / (classes if reduction == "mean" else 1)

    if scenario == "task":
        distill = kd(0) + kd(1)
        distill = distill / 2 if weighting == "replay" else distill
    elif scenario == "domain" and weighting == "per_task":
        distill = 2 * kd(0)
    else:
        distill = kd(0)
    want = (ce + lam * 2 * distill) / 3 if weighting == "replay" else ce + lam * distill
    np.testing.assert_allclose(total, want, rtol=2e-5)


@pytest.mark.parametrize("task", [0, 2])
def test_icarl_loss_against_a_hand_computation(task):
    """iCaRL's loss (Rebuffi et al. 2017, Algorithm 3; van de Ven's Class-IL code) against numpy:
    the batch mean of Σ over the classes seen so far of the binary cross-entropy, whose targets
    are sigmoid(old model's logits / T) on the previous tasks' classes and the one-hot label on
    the current task's; classes of later tasks contribute nothing. A permuted class order, so
    "seen" is read from label_table, not from the output's index."""
    from cljax.methods import Clock, LossContext, StreamSpec
    from cljax.methods.rehearsal import PreviousModel

    T, K, T_kd = 4, 2, 2.0
    table = jnp.array([[5, 2], [7, 0], [1, 6], [3, 4]], jnp.int32)
    model = as_model(MLP((12,), T * K))
    spec = StreamSpec((5,), jnp.float32, T, K, T * K, 1, table, feature_dim=12)
    k = jax.random.split(jax.random.key(8), 4)
    y = np.asarray(table)[task][np.array([0, 1, 1, 0, 1, 0])]
    batch = {"x": jax.random.normal(k[0], (6, 5)), "y": jnp.asarray(y),
             "task": jnp.full(6, task, jnp.int32)}
    params, old_params = model.init(k[1], batch), model.init(k[2], batch)
    method = get_method("icarl", per_class=2)
    state = method.init(old_params, k[3], {}, spec)
    state = state._replace(previous=PreviousModel(old_params, jnp.int32(task)))
    ctx = LossContext(model, k[3], {"temperature": jnp.float32(T_kd)}, jnp.int32(task), spec,
                      lambda rows: rows, Clock(jnp.int32(task), jnp.int32(0), jnp.int32(5)))
    total, _ = jax.jit(lambda p: method.loss(p, batch, state, ctx))(params)

    z = np.asarray(model.logits_fn(params, batch), np.float64)
    z_old = np.asarray(model.logits_fn(old_params, batch), np.float64)
    owner = np.empty(T * K, int)
    for t, row in enumerate(np.asarray(table)):
        owner[row] = t
    target = np.eye(T * K)[y]
    target[:, owner < task] = 1 / (1 + np.exp(-z_old[:, owner < task] / T_kd))
    p = 1 / (1 + np.exp(-z))
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    want = bce[:, owner <= task].sum(-1).mean()
    np.testing.assert_allclose(total, want, rtol=2e-5)


def test_seen_class_masks_and_softmax_widths():
    """Class-IL over the classes seen: the tasks ≤ count keep their logits (< count for the
    previous model's), every other output is MASKED_LOGIT; the softmax widths of each head
    layout; which layouts are Class-IL."""
    from cljax.methods import StreamSpec
    from cljax.methods.rehearsal import (
        is_class_incremental,
        num_seen_classes,
        seen_class_logits,
        softmax_width,
    )
    from cljax.nn import MASKED_LOGIT

    table = jnp.array([[3, 0], [5, 1], [2, 4]], jnp.int32)      # owners: 0 1 2 0 2 1
    spec = StreamSpec((2,), jnp.float32, 3, 2, 6, 1, table)
    z = jnp.arange(12, dtype=jnp.float32).reshape(2, 6)
    m = MASKED_LOGIT
    np.testing.assert_array_equal(seen_class_logits(z, spec, jnp.int32(1)),
                                  [[0, 1, m, 3, m, 5], [6, 7, m, 9, m, 11]])
    np.testing.assert_array_equal(seen_class_logits(z, spec, jnp.int32(1), previous=True),
                                  [[0, m, m, 3, m, m], [6, m, m, 9, m, m]])
    assert [float(num_seen_classes(spec, jnp.int32(c))) for c in range(3)] == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="6 outputs on their last axis"):
        seen_class_logits(z[:, :4], spec, jnp.int32(1))
    one_head = jnp.zeros((2, 1, 6))
    assert is_class_incremental(spec, one_head)
    assert float(softmax_width(spec, one_head)) == 6.0
    masked = spec._replace(task_masked=True)
    assert not is_class_incremental(masked, one_head)
    assert float(softmax_width(masked, one_head)) == 2.0            # the task's classes
    domain = StreamSpec((2,), jnp.float32, 3, 2, 2, 1, jnp.tile(jnp.arange(2), (3, 1)))
    assert not is_class_incremental(domain, jnp.zeros((2, 1, 2)))
    per_task = StreamSpec((2,), jnp.float32, 3, 2, 2, 3, jnp.tile(jnp.arange(2), (3, 1)))
    assert not is_class_incremental(per_task, jnp.zeros((2, 3, 2)))


def test_class_tasks_names_each_outputs_task():
    from cljax.methods import StreamSpec
    from cljax.methods.rehearsal import check_distill_options, class_tasks

    table = jnp.array([[3, 0], [5, 1]], jnp.int32)
    spec = StreamSpec((2,), jnp.float32, 2, 2, 7, 1, table)   # output 2, 4 and 6: no task's
    assert np.asarray(class_tasks(spec)).tolist() == [0, 1, 2, 0, 2, 1, 2]
    shared = StreamSpec((2,), jnp.float32, 3, 2, 2, 1, jnp.tile(jnp.arange(2), (3, 1)))
    assert np.asarray(class_tasks(shared)).tolist() == [0, 0]   # the first task naming each
    with pytest.raises(ValueError, match="label_table must be int"):
        class_tasks(spec._replace(num_tasks=3))
    with pytest.raises(ValueError, match="weighting must be one of"):
        get_method("lwf", weighting="1/t")
    with pytest.raises(ValueError, match="outputs must be one of"):
        check_distill_options("active", "sum")
    with pytest.raises(ValueError, match="distill_reduction must be one of"):
        check_distill_options("seen", "batchmean")
    with pytest.raises(ValueError, match="outputs must be one of"):
        get_method("lwf", outputs="active")
    with pytest.raises(ValueError, match="distill_reduction must be one of"):
        get_method("lwf", distill_reduction="batchmean")


def test_der_trains_on_one_memory_draw_and_stores_logits():
    method, tr, data = _build("der", capacity=8)
    res = run_stream(tr, data, num_steps=6, keys=KEYS[:1], hparams=method.default_hparams)
    assert np.isfinite(np.asarray(res.accuracy)).all()
    memory = res.final_state.mstate
    assert np.asarray(memory.valid).all() and np.abs(np.asarray(memory.logits)).sum() > 0

"""REMIND (cljax.methods.remind): its memory rule, replay of decoded codes, frozen lower network,
latent augmentation, against numpy oracles. The method contracts (finite, switched off, one
compilation, vmap, resume, host) are its rows in tests/test_contract.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.memory import init_memory
from cljax.methods import get_method
from cljax.methods.base import Clock, LossContext
from cljax.methods.remind import (
    balanced_insert,
    bytes_per_example,
    class_counts,
    code_shape,
    first_layer_split,
    lower_latents,
    mixup_lambda,
    random_resized_crop,
    remind,
    remind_loss,
    resize_crop,
)
from cljax.nn import CNN, MLP, as_model
from cljax.training import device_feed, make_trainer, prepare_data, run_stream, to_batch

KEY = jax.random.key(5)
TINY = dict(num_subvectors=3, num_codes=8, kmeans_iters=3, capacity=12, replay_samples=1)


def _stream():
    return split_tasks(tiny_dataset(num_classes=6, n=90), tiny_dataset(num_classes=6, n=45, seed=1),
                       tasks=[[0, 1], [2, 3], [4, 5]])


def _build(optimizer=None, **options):
    s = _stream()
    sc = make_scenario(s, "class")
    method = get_method("remind", **{**TINY, **options})
    model = as_model(MLP((12,), sc.num_outputs))
    trainer = make_trainer(model, method, optimizer=optimizer or optax.adam(1e-2), batch_size=8,
                           eval_chunk=16)
    return method, trainer, prepare_data(s, sc, eval_chunk=16)


@functools.cache
def _run():
    """REMIND split after the MLP's first layer, 3 tasks of 6 steps, 12 memory slots."""
    method, trainer, data = _build()
    res = run_stream(trainer, data, keys=KEY[None], hparams=method.default_hparams, num_steps=6,
                     keep_params=True)
    return method, trainer, data, res


def _np_encode(x, codebooks):
    m, _, d = codebooks.shape
    return np.stack([((x[..., None, s * d:(s + 1) * d] - codebooks[s]) ** 2).sum(-1).argmin(-1)
                     for s in range(m)], -1)


def _np_decode(codes, codebooks):
    return np.concatenate([codebooks[s][codes[..., s]] for s in range(codebooks.shape[0])], -1)


def _np_ce(logits, y):
    z = logits - logits.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]


# --------------------------------------------------------------------------------------------
# The memory
# --------------------------------------------------------------------------------------------

def _np_balanced_counts(counts, stored, capacity, classes):
    """The paper's rule on class counts alone: add, and when over capacity remove one of the
    class holding the most (lowest id on ties)."""
    counts = list(counts)
    for c in classes:
        counts[c] += 1
        if stored < capacity:
            stored += 1
        else:
            counts[int(np.argmax(counts))] -= 1
    return counts


def test_balanced_insert_follows_the_papers_replacement_rule():
    memory = init_memory(5, (1, 2), jnp.uint8)
    rows = lambda ids, tasks, labels: {
        "x": jnp.asarray(np.stack([ids, ids], -1)[:, None], jnp.uint8),
        "task": jnp.asarray(tasks, jnp.int32), "label": jnp.asarray(labels, jnp.int32)}
    # three rows into an empty memory: the first free slots, in order
    memory = balanced_insert(memory, rows([1, 2, 3], [0, 0, 0], [0, 1, 0]),
                             jnp.ones(3, bool), KEY, classes_per_task=2, num_classes=4)
    np.testing.assert_array_equal(memory.x[:3, 0, 0], [1, 2, 3])
    assert memory.valid.tolist() == [True] * 3 + [False] * 2 and int(memory.seen) == 3
    ids = np.arange(10, 24)
    tasks = np.array([1] * 14)
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    ok = np.ones(14, bool)
    ok[[3, 8]] = False
    for seed in range(3):
        got = balanced_insert(memory, rows(ids, tasks, labels), jnp.asarray(ok),
                              jax.random.key(seed), classes_per_task=2, num_classes=4)
        want = _np_balanced_counts([2, 1, 0, 0], 3, 5, (tasks * 2 + labels)[ok])
        assert class_counts(got, classes_per_task=2, num_classes=4).tolist() == want
        held = np.asarray(got.x[:, 0, 0])
        assert bool(got.valid.all()) and len(set(held.tolist())) == 5      # no duplicates
        offered = dict(zip(ids[ok].tolist(), (tasks * 2 + labels)[ok].tolist()))
        offered.update({1: 0, 2: 1, 3: 0})
        assert all(offered[i] == t * 2 + lab for i, t, lab in
                   zip(held.tolist(), got.task.tolist(), got.label.tolist()))
        assert int(got.seen) == 3 + ok.sum()
        # a run of one class: it grows to the largest class's size, then replaces its own
        again = balanced_insert(got, rows(np.arange(30, 36), [0] * 6, [1] * 6), jnp.ones(6, bool),
                                jax.random.key(seed), classes_per_task=2, num_classes=4)
        assert class_counts(again, classes_per_task=2, num_classes=4).tolist() == \
            _np_balanced_counts(want, 5, 5, [1] * 6) == [1, 1, 1, 2]


def test_the_memory_stays_within_capacity_and_holds_the_examples_codes():
    _, trainer, data, res = _run()
    st = jax.tree.map(lambda a: a[0], res.final_state)
    mem, cb = st.mstate.memory, np.asarray(st.mstate.codebooks)
    assert mem.capacity == 12 and bool(mem.valid.all()) and int(mem.seen) == 90
    assert mem.x.dtype == jnp.uint8 and int(mem.x.max()) < 8
    # balanced: two examples of each of the six classes
    assert class_counts(mem, classes_per_task=2, num_classes=6).tolist() == [2] * 6
    # each stored row is the codes (numpy: G then a brute-force nearest codeword) of a training
    # example of its task and label
    w0, b0 = (np.asarray(st.params["Dense_0"][k]) for k in ("kernel", "bias"))
    stored = {(int(t), int(lab), tuple(np.asarray(c).ravel())) for t, lab, c in
              zip(mem.task, mem.label, mem.x)}
    train = set()
    for t in range(3):
        n = int(data.train.n[t])
        x = (np.asarray(data.train.x[t, :n], np.float32).reshape(n, -1) / 255.0
             - np.asarray(data.mean)) / np.asarray(data.std)
        codes = _np_encode(np.maximum(x @ w0 + b0, 0), cb)
        train |= {(t, int(lab), tuple(c)) for lab, c in zip(np.asarray(data.train.y[t, :n]),
                                                            codes)}
    assert stored <= train


def test_the_lower_network_is_bitwise_frozen_after_the_base_task():
    _, _, _, res = _run()
    tp = res.task_params
    for leaf in ("kernel", "bias"):
        base = np.asarray(tp["Dense_0"][leaf][0, 0])
        for t in (1, 2):
            np.testing.assert_array_equal(np.asarray(tp["Dense_0"][leaf][0, t]), base)
    assert not np.array_equal(tp["Dense_1"]["kernel"][0, 0], tp["Dense_1"]["kernel"][0, 2])
    assert bool(res.final_state.mstate.fitted[0])


def test_a_step_after_the_base_task_takes_no_gradient_into_the_frozen_lower_network():
    """From task 1 on the loss's gradient into G (Dense_0) is exactly zero (its latents enter
    through ``lower_latents``' frozen branch) and F's gradient is the one of the same loss with
    G's latents as constant inputs; in the base task, before the codebooks exist, G trains."""
    _, trainer, data, res = _run()
    st = jax.tree.map(lambda a: a[0], res.final_state)
    model, spec = trainer.model_and_spec(data)
    parts = first_layer_split()
    rows = jax.jit(lambda st: trainer.draw(st, data, jnp.asarray(1),
                                           Clock(st.step, jnp.asarray(0), jnp.asarray(6)),
                                           device_feed(data)))(st)
    batch = to_batch(data, rows)

    def grads(task, lower, mstate=st.mstate):
        ctx = LossContext(model, jax.random.key(3), {"mixup_alpha": jnp.asarray(0.5)},
                          jnp.asarray(task), spec, lambda r: to_batch(data, r),
                          Clock(st.step, jnp.asarray(0), jnp.asarray(6)))
        return jax.jit(jax.grad(lambda p: remind_loss(
            p, batch, mstate, ctx, parts=lower, locations=1, grid=None,
            quantize_inputs=True, crops=False, replay_samples=1, mixup=True)))(st.params)

    plain = parts._replace(lower=lambda m, p, b: jax.lax.stop_gradient(parts.lower(m, p, b)))
    frozen, want = grads(1, parts), grads(1, plain)
    assert not np.any(np.asarray(frozen["Dense_0"]["kernel"]))
    for leaf in ("kernel", "bias"):               # F: the layer above G (the MLP's output)
        np.testing.assert_allclose(np.asarray(frozen["Dense_1"][leaf]),
                                   np.asarray(want["Dense_1"][leaf]), rtol=1e-6, atol=1e-8)
    base = grads(0, parts, st.mstate._replace(fitted=jnp.asarray(False)))   # before the codes
    z = jax.jit(lambda p: lower_latents(parts, model, p, batch, frozen=jnp.asarray(False)))
    np.testing.assert_array_equal(np.asarray(z(st.params)),
                                  np.asarray(parts.lower(model, st.params, batch)))
    assert np.any(np.asarray(base["Dense_0"]["kernel"]))


def test_replayed_features_are_the_decoded_codes_of_stored_examples():
    """The loss of a task-2 step (mixup α = 0: λ = 1) equals the numpy loss over the current
    examples through G, a brute-force PQ and F, and the drawn memory rows decoded by numpy."""
    method, trainer, data, res = _run()
    st = jax.tree.map(lambda a: a[0], res.final_state)
    task = jnp.asarray(2)
    clock = Clock(st.step, jnp.asarray(0), jnp.asarray(6))
    rows = jax.jit(lambda st: trainer.draw(st, data, task, clock, device_feed(data)))(st)
    mem = st.mstate.memory
    stored = {tuple(np.asarray(c).ravel()) + (int(t), int(lab))
              for c, t, lab in zip(mem.x, mem.task, mem.label)}
    drawn = rows["memory"]
    assert drawn["x"].shape == (16, 1, 3) and bool(rows["memory_ok"].all())
    assert all(tuple(np.asarray(c).ravel()) + (int(t), int(lab)) in stored
               for c, t, lab in zip(drawn["x"], drawn["task"], drawn["label"]))
    batch = to_batch(data, rows)
    model, spec = trainer.model_and_spec(data)
    hp = {"mixup_alpha": jnp.asarray(0.0)}
    ctx = LossContext(model, jax.random.key(9), hp, task, spec, lambda r: to_batch(data, r),
                      clock)
    got = float(jax.jit(lambda p, b, m: method.loss(p, b, m, ctx)[0])(st.params, batch,
                                                                       st.mstate))
    cb = np.asarray(st.mstate.codebooks)
    w0, b0, w1, b1 = (np.asarray(st.params[n][k]) for n in ("Dense_0", "Dense_1")
                      for k in ("kernel", "bias"))
    z = np.maximum(np.asarray(batch["x"]).reshape(8, -1) @ w0 + b0, 0)
    zq = _np_decode(_np_encode(z, cb), cb)
    ce_cur = _np_ce(zq @ w1 + b1, np.asarray(batch["y"]))
    za = _np_decode(np.asarray(drawn["x"][:8, 0]).astype(int), cb)
    ya = np.asarray(spec.label_table)[np.asarray(drawn["task"][:8]), np.asarray(drawn["label"][:8])]
    want = (ce_cur.sum() + _np_ce(za @ w1 + b1, ya).sum()) / 16
    np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("task_heads", ["class", "masked"])
def test_mixed_pairs_score_both_labels_under_each_examples_task(task_heads):
    """Manifold mixup (α = 1): a task-2 step's loss equals numpy's λ·CE(y_a) + (1 − λ)·CE(y_b)
    of each mixed pair — in Class-IL its one head scores the pair once (``shared_head``), under
    masked Task-IL each example's task masks the logits it is scored with."""
    s = _stream()
    sc = (make_scenario(s, "class") if task_heads == "class" else
          make_scenario(s, "task", task_heads="masked"))
    method = get_method("remind", **TINY)
    trainer = make_trainer(as_model(MLP((12,), sc.num_outputs)), method,
                           optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    data = prepare_data(s, sc, eval_chunk=16)
    res = run_stream(trainer, data, keys=KEY[None], hparams=method.default_hparams, num_steps=6)
    st = jax.tree.map(lambda a: a[0], res.final_state)
    task, clock = jnp.asarray(2), Clock(st.step, jnp.asarray(0), jnp.asarray(6))
    rows = jax.jit(lambda st: trainer.draw(st, data, task, clock, device_feed(data)))(st)
    batch = to_batch(data, rows)
    model, spec = trainer.model_and_spec(data)
    assert spec.task_masked == (task_heads == "masked") and spec.num_heads == 1
    assert spec.task_dependent_logits == (task_heads == "masked")
    key, hp = jax.random.key(9), {"mixup_alpha": jnp.asarray(1.0)}
    ctx = LossContext(model, key, hp, task, spec, lambda r: to_batch(data, r), clock)
    got = float(jax.jit(lambda p, b, m: method.loss(p, b, m, ctx)[0])(st.params, batch,
                                                                       st.mstate))
    lam = float(mixup_lambda(jax.random.split(jax.random.split(key)[1], 4)[2], 1.0))
    assert 0.0 < lam < 1.0
    cb = np.asarray(st.mstate.codebooks)
    w0, b0, w1, b1 = (np.asarray(st.params[n][k]) for n in ("Dense_0", "Dense_1")
                      for k in ("kernel", "bias"))
    mask = (np.ones((3, sc.num_outputs), bool) if sc.logit_mask is None
            else np.asarray(sc.logit_mask))

    def scored(z, tasks, y):
        logits = np.where(mask[tasks], z @ w1 + b1, -1e9)
        return _np_ce(logits, y)

    table = np.asarray(spec.label_table)
    z = np.maximum(np.asarray(batch["x"]).reshape(8, -1) @ w0 + b0, 0)
    ce_cur = scored(_np_decode(_np_encode(z, cb), cb), np.asarray(batch["task"]),
                    np.asarray(batch["y"]))
    drawn = rows["memory"]
    zr = _np_decode(np.asarray(drawn["x"][:, 0]).astype(int), cb)
    tr, yr = np.asarray(drawn["task"]), table[np.asarray(drawn["task"]), np.asarray(drawn["label"])]
    mixed = lam * zr[:8] + (1 - lam) * zr[8:]
    ce_mix = lam * scored(mixed, tr[:8], yr[:8]) + (1 - lam) * scored(mixed, tr[8:], yr[8:])
    np.testing.assert_allclose(got, (ce_cur.sum() + ce_mix.sum()) / 16, rtol=2e-5)


@pytest.mark.slow
def test_without_replay_it_is_fine_tuning_of_the_upper_network():
    """``replay_samples=0, quantize_inputs=False``: the run equals fine-tuning (``none``) whose
    optimizer zeroes the first layer's updates from task 1 on, bit for bit."""
    method, trainer, data = _build(replay_samples=0, quantize_inputs=False)
    res = run_stream(trainer, data, keys=KEY[None], hparams=method.default_hparams, num_steps=6)

    def freeze(updates, state, params=None, *, task, **extra):
        del params, extra
        out = dict(updates)
        out["Dense_0"] = jax.tree.map(lambda u: jnp.where(task > 0, -0.0, u), updates["Dense_0"])
        return out, state

    opt = optax.chain(optax.with_extra_args_support(optax.adam(1e-2)),
                      optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), freeze))
    s = _stream()
    sc = make_scenario(s, "class")
    ft = make_trainer(as_model(MLP((12,), sc.num_outputs)), get_method("none"), optimizer=opt,
                      batch_size=8, eval_chunk=16)
    want = run_stream(ft, data, keys=KEY[None], num_steps=6)
    for a, b in ((res.train_loss, want.train_loss), (res.accuracy, want.accuracy),
                 *zip(jax.tree.leaves(res.final_state.params),
                      jax.tree.leaves(want.final_state.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# Latent augmentation
# --------------------------------------------------------------------------------------------

def _np_resize_crop(m, top, left, h, w):
    """PyTorch's bilinear interpolate (align_corners=False) of the crop, written out."""
    H, W, C = m.shape
    crop = m[top:top + h, left:left + w]
    out = np.zeros((H, W, C))
    for y in range(H):
        sy = max((y + 0.5) * h / H - 0.5, 0.0)
        y0 = int(sy)
        y1 = min(y0 + 1, h - 1)
        for x in range(W):
            sx = max((x + 0.5) * w / W - 0.5, 0.0)
            x0 = int(sx)
            x1 = min(x0 + 1, w - 1)
            ly, lx = sy - y0, sx - x0
            out[y, x] = ((1 - ly) * ((1 - lx) * crop[y0, x0] + lx * crop[y0, x1])
                         + ly * ((1 - lx) * crop[y1, x0] + lx * crop[y1, x1]))
    return out


def test_resized_crops_interpolate_bilinearly_as_torch():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 7, 7, 2)).astype(np.float32)
    top, left, h, w = np.array([0, 2, 1]), np.array([0, 1, 3]), np.array([7, 3, 5]), \
        np.array([7, 5, 2])
    got = resize_crop(jnp.asarray(maps), *(jnp.asarray(a, jnp.int32) for a in (top, left, h, w)))
    np.testing.assert_array_equal(got[0], maps[0])                   # the whole map: itself
    for i in (1, 2):
        np.testing.assert_allclose(got[i], _np_resize_crop(maps[i], top[i], left[i], h[i], w[i]),
                                   rtol=1e-5, atol=1e-6)
    out = random_resized_crop(jnp.asarray(maps), KEY)
    assert out.shape == maps.shape
    assert np.all(out >= maps.min((1, 2), keepdims=True) - 1e-6)
    assert np.all(out <= maps.max((1, 2), keepdims=True) + 1e-6)
    np.testing.assert_array_equal(random_resized_crop(jnp.asarray(maps), KEY, scale=(1.0, 1.0),
                                                      ratio=(1.0, 1.0)), maps)


def test_mixup_lambda_is_one_at_alpha_zero_and_beta_distributed_otherwise():
    keys = jax.random.split(KEY, 2000)
    assert bool(jnp.all(jax.vmap(lambda k: mixup_lambda(k, 0.0))(keys) == 1.0))
    lam = np.asarray(jax.vmap(lambda k: mixup_lambda(k, 0.1))(keys))
    assert np.all((lam >= 0) & (lam <= 1)) and abs(lam.mean() - 0.5) < 0.05
    assert np.mean((lam > 0.1) & (lam < 0.9)) < 0.3                  # Beta(0.1, 0.1): U-shaped


# --------------------------------------------------------------------------------------------
# Sizes and validation
# --------------------------------------------------------------------------------------------

def test_bytes_per_example_of_raw_examples_and_of_codes():
    assert bytes_per_example((1024,), np.float32) == 4097             # ER on the CIFAR features
    assert bytes_per_example((28, 28, 1), np.uint8) == 785            # ER on MNIST pixels
    assert bytes_per_example(code_shape(1024, locations=4, num_subvectors=32), np.uint8) == 129
    assert bytes_per_example(code_shape(7 * 7 * 512, locations=49, num_subvectors=32),
                             np.uint8, label_bytes=0) == 1568         # the paper's ImageNet codes
    with pytest.raises(ValueError, match="num_subvectors .* must divide"):
        code_shape(1024, locations=4, num_subvectors=3)
    with pytest.raises(ValueError, match="locations .* must divide"):
        code_shape(1024, locations=3, num_subvectors=1)
    with pytest.raises(ValueError, match="label_bytes"):
        bytes_per_example((3,), np.uint8, label_bytes=-1)


def test_options_and_models_are_validated():
    for bad, match in [({"split": "middle"}, "split must be one of"),
                       ({"num_codes": 300}, "num_codes must be <= 256"),
                       ({"locations": 4, "grid": (3, 3)}, "has 9 locations"),
                       ({"replay_samples": -1}, "replay_samples"),
                       ({"capacity": 0}, "capacity"),
                       ({"kmeans_init": "farthest"}, "kmeans_init"),
                       ({"mixup": 1}, "mixup must be a bool")]:
        with pytest.raises((ValueError, TypeError), match=match):
            remind(**bad)
    cnn = as_model(CNN(6, channels=(4,), hidden=8))
    with pytest.raises(ValueError, match="first hidden layer of a plain cljax.nn.MLP"):
        remind().model(cnn, None)
    method, trainer, data = _build(num_subvectors=5)
    with pytest.raises(ValueError, match="num_subvectors .* must divide"):
        jax.eval_shape(lambda: trainer.init(KEY, method.default_hparams, data))


def test_latent_helpers_check_their_shapes():
    from cljax.methods.remind import crop_latents, replay_terms

    with pytest.raises(ValueError, match="multiple of the grid"):
        crop_latents(jnp.zeros((2, 10)), KEY, (3, 3))
    rows = {"task": jnp.zeros(3, jnp.int32), "label": jnp.zeros(3, jnp.int32)}
    with pytest.raises(ValueError, match="even number of rows"):
        replay_terms(jnp.zeros((3, 4)), rows, jnp.ones(3, bool), jnp.zeros((1, 2), jnp.int32),
                     jnp.asarray(0.5), num_outputs=2)
    with pytest.raises(ValueError, match=r"ok \[M\]"):
        replay_terms(jnp.zeros((3, 4)), rows, jnp.ones(2, bool), jnp.zeros((1, 2), jnp.int32),
                     None, num_outputs=2)

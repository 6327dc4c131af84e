"""cljax.methods.generative_replay (DGR, DGR + distill): the replay loss against per-head loops,
the loss's composition (current vs replayed share, the replayed batch from the *previous*
generator, labelled by the *previous* classifier) computed by hand, van de Ven's 2019 Class-IL
form (classes seen, the distillation averaged and × T²) by hand, the generator's step equal to
one Adam step on the documented objective, the task boundary, replay weight 0 = the current
loss, the hyperparameter domains and option errors. (The protocol's contracts — replay weight 0
trains as fine-tuning, one compilation per stream, vmapped runs = separate runs, resume, host
feed — are rows of ``tests/test_contract.py``.)"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

from cljax.methods import BoundaryContext, Clock, LossContext, StepInfo, StreamSpec, get_method
from cljax.methods.base import check_hparam
from cljax.methods.generative_replay import GeneratorState, replay_loss, replay_share
from cljax.methods.vae import generate, init_vae, make_vae, negative_elbo
from cljax.nn import MLP, as_model

SHAPE = (6, 6, 1)
OPTIONS = {"widths": (8,), "latent": 3, "sample_count": 2, "replay_batch_size": 5}


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def _soft_ce(logits, teacher, T):
    def log_softmax(a):
        a = np.asarray(a, np.float64) / T
        a = a - a.max(-1, keepdims=True)
        return a - np.log(np.exp(a).sum(-1, keepdims=True))
    return float(-np.mean(np.sum(np.exp(log_softmax(teacher)) * log_softmax(logits), -1)))


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_replay_loss_against_a_loop_over_previous_heads(targets):
    rng = np.random.default_rng(0)
    new = rng.normal(size=(7, 4, 3)).astype(np.float32)
    old = rng.normal(size=(7, 4, 3)).astype(np.float32)
    T = 2.0

    def one(h):
        if targets == "hard":
            return _ce(new[:, h], np.argmax(old[:, h], -1))
        return _soft_ce(new[:, h], old[:, h], T)

    for count in (1, 2, 3):     # Task-IL: the mean over the previous heads only
        want = np.mean([one(h) for h in range(count)])
        got = replay_loss(jnp.asarray(new), jnp.asarray(old), jnp.int32(count), targets=targets,
                          temperature=jnp.float32(T))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # one head (Domain-, Class-IL): that head, whatever the count
    got = replay_loss(jnp.asarray(new[:, :1]), jnp.asarray(old[:, :1]), jnp.int32(3),
                      targets=targets, temperature=jnp.float32(T))
    np.testing.assert_allclose(got, one(0), rtol=1e-5)


def test_replay_share_is_one_minus_one_over_t_times_the_weight():
    for count, w in ((0, 1.0), (1, 1.0), (4, 1.0), (3, 0.5), (3, 0.0)):
        np.testing.assert_allclose(replay_share({"replay_weight": jnp.float32(w)},
                                                jnp.int32(count), "dgr"),
                                   w * (1 - 1 / (count + 1)), rtol=1e-6)


def _setup(heads, distill=False):
    outputs = 2 if heads > 1 else 6
    model = as_model(MLP(widths=(16,), num_outputs=outputs, num_heads=heads))
    spec = StreamSpec(SHAPE, jnp.float32, 3, 2, outputs, heads,
                      jnp.arange(6, dtype=jnp.int32).reshape(3, 2) % outputs, (40, 40, 40))
    method = get_method("dgr_distill" if distill else "dgr", **OPTIONS)
    x = jax.random.uniform(jax.random.key(1), (4,) + SHAPE)
    batch = {"x": x, "y": jnp.array([0, 1, 1, 0]), "task": jnp.full((4,), 2, jnp.int32)}
    params = model.init(jax.random.key(2), batch)
    state = method.init(params, jax.random.key(3), {}, spec)
    # a state two tasks in: the previous generator and classifier differ from the current ones
    state = state._replace(
        previous_generator=init_vae(make_vae(SHAPE, (8,), 3), jax.random.key(4)),
        previous_params=model.init(jax.random.key(5), batch), count=jnp.int32(2))
    hparams = {k: jnp.float32(v) for k, v in method.default_hparams.items()}
    return model, spec, method, batch, params, state, hparams


def _loss_ctx(model, spec, hparams, key):
    clock = Clock(jnp.int32(0), jnp.int32(0), jnp.int32(10))
    return LossContext(model, key, hparams, jnp.int32(2), spec, None, clock)


@pytest.mark.parametrize("heads,distill", [(1, False), (3, False), (3, True), (1, True)])
def test_loss_is_the_documented_mix_of_current_and_generated_replay(heads, distill):
    model, spec, method, batch, params, state, hparams = _setup(heads, distill)
    key = jax.random.key(9)
    total, aux = jax.jit(lambda p, s: method.loss(p, batch, s, _loss_ctx(model, spec, hparams,
                                                                          key)))(params, state)
    k_cur, k_gen, _ = jax.random.split(key, 3)
    # the replayed inputs: replay_batch_size draws of the *previous* generator
    vae = make_vae(SHAPE, (8,), 3)
    x_rep = generate(vae, state.previous_generator, k_gen, 5).reshape((5,) + SHAPE)
    np.testing.assert_allclose(aux["replay_x"], x_rep, rtol=1e-6)
    assert not np.allclose(x_rep, generate(vae, state.generator, k_gen, 5).reshape(x_rep.shape))
    # labelled by the *previous* classifier, head by head over the 2 previous tasks
    rb = {"x": x_rep, "task": jnp.zeros((5,), jnp.int32)}
    new = np.asarray(model.apply_fn(params, rb, output="all_heads"))
    old = np.asarray(model.apply_fn(state.previous_params, rb, output="all_heads"))
    per_head = [(_soft_ce(new[:, h], old[:, h], 2.0) if distill
                 else _ce(new[:, h], np.argmax(old[:, h], -1))) for h in range(min(heads, 2))]
    rep = np.mean(per_head)
    ce = _ce(model.logits_fn(params, batch), np.asarray(batch["y"]))
    r = 1 - 1 / 3                       # t = 3 tasks seen, replay weight 1
    np.testing.assert_allclose(aux["replay_loss"], rep, rtol=1e-5)
    np.testing.assert_allclose(total, (1 - r) * ce + r * rep, rtol=1e-5)
    # replay weight 0: the current loss alone
    off = {**hparams, "replay_weight": jnp.float32(0.0)}
    only, _ = method.loss(params, batch, state, _loss_ctx(model, spec, off, key))
    np.testing.assert_allclose(only, ce, rtol=1e-6)


@pytest.mark.parametrize("distill", [False, True])
def test_the_2019_class_il_form_against_a_hand_computation(distill):
    """outputs="seen" (and, for the soft targets, distill_reduction="mean", t_squared=True):
    van de Ven's code of April 2019 in Class-IL, at task 2 of 4 under a permuted class order —
    the current and replayed losses over the 6 classes seen, the previous classifier's labels or
    targets over the 4 previous classes, the soft loss averaged over the 6 and × T²."""
    table = jnp.array([[4, 1], [0, 5], [3, 7], [2, 6]], jnp.int32)
    model = as_model(MLP(widths=(16,), num_outputs=8))
    spec = StreamSpec(SHAPE, jnp.float32, 4, 2, 8, 1, table, (40, 40, 40, 40))
    extra = {"distill_reduction": "mean", "t_squared": True} if distill else {}
    method = get_method("dgr_distill" if distill else "dgr", outputs="seen", **OPTIONS, **extra)
    x = jax.random.uniform(jax.random.key(1), (4,) + SHAPE)
    batch = {"x": x, "y": jnp.array([3, 7, 7, 3]), "task": jnp.full((4,), 2, jnp.int32)}
    params = model.init(jax.random.key(2), batch)
    state = method.init(params, jax.random.key(3), {}, spec)._replace(
        previous_generator=init_vae(make_vae(SHAPE, (8,), 3), jax.random.key(4)),
        previous_params=model.init(jax.random.key(5), batch), count=jnp.int32(2))
    hparams = {k: jnp.float32(v) for k, v in method.default_hparams.items()}
    key = jax.random.key(9)
    total, aux = jax.jit(lambda p: method.loss(p, batch, state,
                                               _loss_ctx(model, spec, hparams, key)))(params)

    seen = np.isin(np.arange(8), [4, 1, 0, 5, 3, 7])
    previous = np.isin(np.arange(8), [4, 1, 0, 5])
    rb = {"x": aux["replay_x"], "task": jnp.zeros((5,), jnp.int32)}
    new = np.asarray(model.logits_fn(params, rb), np.float64)[:, seen]        # 6 columns
    old = np.asarray(model.logits_fn(state.previous_params, rb), np.float64)
    old = np.where(previous, old, -np.inf)[:, seen]
    if distill:
        rep = _soft_ce(new, old, 2.0) / 6 * 2.0 ** 2
    else:
        rep = _ce(new, np.argmax(old, -1))
    ce = _ce(np.asarray(model.logits_fn(params, batch))[:, seen],
             np.searchsorted(np.flatnonzero(seen), np.asarray(batch["y"])))
    np.testing.assert_allclose(aux["replay_loss"], rep, rtol=1e-5)
    np.testing.assert_allclose(total, (1 / 3) * ce + (2 / 3) * rep, rtol=1e-5)


def test_generator_step_is_one_adam_step_on_the_documented_objective():
    model, spec, method, batch, params, state, hparams = _setup(1)
    x_rep = jax.random.uniform(jax.random.key(11), (5,) + SHAPE)
    # the generator's Adam state after one earlier step, so that the step uses its moments
    vae = make_vae(SHAPE, (8,), 3)
    tx = optax.adam(1e-3, b1=0.9, b2=0.999)
    g0 = jax.grad(lambda g: jnp.mean(negative_elbo(vae, g, batch["x"], jax.random.key(0))))(
        state.generator)
    _, opt = tx.update(g0, state.generator_opt, state.generator)
    state = state._replace(generator_opt=opt)
    key = jax.random.key(12)
    info = StepInfo({}, batch, {"replay_x": x_rep}, None, None, params, jnp.int32(2), key,
                    hparams, spec, (), state, Clock(jnp.int32(3), jnp.int32(3),
                                                       jnp.int32(10)))
    new_params, new_opt, new_state = jax.jit(
        lambda p, b, a, s: method.after_step(info._replace(params=p, batch=b, aux=a, mstate=s)))(
        params, batch, info.aux, state)
    assert_trees_close(new_params, params, rtol=0)        # the classifier's step is kept
    assert new_opt == ()
    k_cur, k_rep = jax.random.split(key)
    r = 2 / 3

    def objective(g):
        return ((1 - r) * jnp.mean(negative_elbo(vae, g, batch["x"], k_cur))
                + r * jnp.mean(negative_elbo(vae, g, x_rep, k_rep)))

    updates, want_opt = tx.update(jax.grad(objective)(state.generator), opt, state.generator)
    assert_trees_close(new_state.generator, optax.apply_updates(state.generator, updates),
                       rtol=1e-6, atol=1e-7)
    assert_trees_close(new_state.generator_opt, want_opt, rtol=1e-6, atol=1e-7)
    for field in ("previous_generator", "previous_params", "count", "samples"):
        assert_trees_close(getattr(new_state, field), getattr(state, field), rtol=0)


def test_task_end_freezes_both_models_and_keeps_the_generators_samples():
    model, spec, method, batch, params, state, hparams = _setup(1)
    trained = jax.tree.map(lambda p: p + 1.0, params)
    ctx = BoundaryContext(trained, "opt", state, hparams, jnp.int32(1), jax.random.key(0),
                          model, spec, None, None, None, None,
                          Clock(jnp.int32(9), jnp.int32(9), jnp.int32(9)))
    _, opt, s = method.end_task(ctx)
    assert opt == "opt" and isinstance(s, GeneratorState)
    assert_trees_close(s.previous_params, trained, rtol=0)
    assert_trees_close(s.previous_generator, state.generator, rtol=0)
    assert int(s.count) == 3
    want = generate(make_vae(SHAPE, (8,), 3), state.generator, jax.random.key(0), 2)
    np.testing.assert_allclose(s.samples[1], want.reshape((2,) + SHAPE), rtol=1e-6)
    np.testing.assert_array_equal(s.samples[0], state.samples[0])     # other tasks untouched
    assert s.samples.shape == (3, 2) + SHAPE


def test_hyperparameter_domains_and_option_errors():
    dgr = get_method("dgr")
    assert dgr.default_hparams == {"replay_weight": 1.0}
    assert get_method("dgr_distill").default_hparams == {"replay_weight": 1.0,
                                                         "temperature": 2.0}
    check_hparam(dgr, "replay_weight", 0.0)
    check_hparam(dgr, "replay_weight", 1.0)
    with pytest.raises(ValueError, match=r"replay_weight.*\[0, 1\]"):
        check_hparam(dgr, "replay_weight", 1.5)
    with pytest.raises(ValueError, match="temperature"):
        check_hparam(get_method("dgr_distill"), "temperature", 0.0)
    for bad, match in (({"likelihood": "poisson"}, "likelihood"),
                       ({"replay_batch_size": 0}, "replay_batch_size"),
                       ({"latent": 0}, "latent"), ({"widths": ()}, "widths"),
                       ({"learning_rate": -1.0}, "learning_rate"), ({"b2": 1.0}, "b2"),
                       ({"sample_count": 0}, "sample_count"),
                       ({"outputs": "active"}, "outputs must be one of"),
                       ({"distill_reduction": "mean"}, "need distill=True"),
                       ({"t_squared": True}, "need distill=True")):
        with pytest.raises(ValueError, match=match):
            get_method("dgr", **bad)
    with pytest.raises(ValueError, match="distill_reduction must be one of"):
        get_method("dgr_distill", distill_reduction="batchmean")
    with pytest.raises(TypeError, match="t_squared must be a bool"):
        get_method("dgr_distill", t_squared=1)

"""cljax.methods.rtf: the whole loss of replay through feedback — the VAE terms (Bernoulli
reconstruction, analytic KL to N(0, I), both / D), the current cross-entropy over the classes
seen, the replayed inputs decoded by the frozen copy and their distillation (averaged over the
classes seen and × T², the mean over the previous heads in Task-IL), the 1/t mix — against a
numpy computation written out per example; the generator and the task boundary; the network
(no prior modes, a log-variance bias); option errors. (The protocol's contracts are the "rtf"
row of ``tests/test_contract.py``.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import frozen_copy_method_setup

from cljax.methods import BoundaryContext, Clock, LossContext, StreamSpec, get_method
from cljax.methods.rtf import RtFState, generated_inputs, vae_pass
from cljax.nn import CNN, MLP, as_model

SHAPE = (5,)
T, K = 4, 2
LAYOUT = {"task": (4, 2), "domain": (1, 2), "class": (1, 8)}     # (heads, outputs)
OPTIONS = {"latent": 3, "replay_batch_size": 7, "sample_count": 2}


def _setup(scenario, **options):
    return frozen_copy_method_setup("rtf", {**OPTIONS, **options}, scenario, LAYOUT, T,
                                    jax.random.uniform(jax.random.key(1), (4,) + SHAPE))


def _log_softmax(a):
    a = np.asarray(a, np.float64)
    a = a - a.max()
    return a - np.log(np.exp(a).sum())


def _pieces(module, params, x, key):
    """Logits ``[B, H, C]``, μ, log σ², and the decoder's logits at z = μ + σ ε (ε from
    ``key``), as float64."""
    flat = jnp.asarray(np.asarray(x).reshape(x.shape[0], -1), jnp.float32)

    @jax.jit
    def parts(params, flat, key):
        logits, mean, log_var = module.apply({"params": params}, flat, method="encode")
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
        return logits, mean, log_var, module.apply({"params": params}, z, None, method="decode")

    logits, mu, lv, out = (np.asarray(a, np.float64) for a in parts(params, flat, key))
    return (np.asarray(flat, np.float64), logits.reshape(x.shape[0], module.num_heads, -1),
            mu, lv, out)


def _negative_elbo(x, mu, lv, out):
    """Per example: [Σ_d BCE(x_d, σ(out_d)) + KL(N(μ, σ²) ‖ N(0, I))] / D."""
    p = 1 / (1 + np.exp(-out))
    bce = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)
    kl = 0.5 * np.sum(np.exp(lv) + mu ** 2 - 1 - lv, axis=1)
    return (bce + kl) / x.shape[1]


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_loss_equals_a_per_example_computation(scenario):
    spec, method, model, batch, params, state, hparams = _setup(scenario)
    module = model.module
    key = jax.random.key(9)
    ctx = LossContext(model, key, hparams, jnp.int32(2), spec, None,
                      Clock(jnp.int32(0), jnp.int32(0), jnp.int32(10)))
    total, aux = jax.jit(lambda p, b, s: method.loss(p, b, s, ctx))(params, batch, state)
    k_cur, k_gen, k_rep = jax.random.split(key, 3)
    seen, previous = 6, 4                   # Class-IL: the classes of tasks 0–2, of tasks 0–1
    # current data: the VAE terms and the cross-entropy of each example's head
    x, logits, mu, lv, out = _pieces(module, params, batch["x"], k_cur)
    ce = []
    for i in range(4):
        if scenario == "task":
            row = logits[i, int(batch["task"][i])]
        elif scenario == "class":
            row = logits[i, 0, :seen]
        else:
            row = logits[i, 0]
        ce.append(-_log_softmax(row)[int(batch["y"][i])])
    current = np.mean(_negative_elbo(x, mu, lv, out)) + np.mean(ce)
    np.testing.assert_allclose(aux["current_loss"], current, rtol=2e-5)
    # replayed data: the frozen copy's decoded means, labelled by its soft targets
    z = np.asarray(jax.random.normal(k_gen, (7, 3)), np.float64)
    xr = np.asarray(generated_inputs(module, state.previous_params, k_gen, 7, spec))
    decoded = module.apply({"params": state.previous_params}, jnp.asarray(z, jnp.float32), None,
                           method="decode")
    np.testing.assert_allclose(xr, jax.nn.sigmoid(decoded), rtol=1e-6)
    _, teacher, *_ = _pieces(module, state.previous_params, xr, jax.random.key(0))
    x, student, mu, lv, out = _pieces(module, params, xr, k_rep)

    def kd(s_row, t_row, width):             # × T², averaged over the softmax's classes
        target = np.exp(_log_softmax(t_row / 2.0))
        return -np.sum(target * _log_softmax(s_row / 2.0)) / width * 4.0

    if scenario == "task":                   # the mean over the 2 previous heads
        distill = np.mean([np.mean([kd(student[i, h], teacher[i, h], 2) for i in range(7)])
                           for h in range(2)])
    elif scenario == "class":                # the teacher's softmax over the previous classes,
        distill = np.mean([kd(student[i, 0, :seen],                        # zero on the rest
                              np.concatenate([teacher[i, 0, :previous],
                                              np.full(seen - previous, -np.inf)]), seen)
                           for i in range(7)])
    else:
        distill = np.mean([kd(student[i, 0], teacher[i, 0], 2) for i in range(7)])
    replay = np.mean(_negative_elbo(x, mu, lv, out)) + distill
    np.testing.assert_allclose(aux["replay_loss"], replay, rtol=2e-5)
    r = 1 - 1 / 3
    np.testing.assert_allclose(total, (1 - r) * current + r * replay, rtol=2e-5)


def test_first_task_and_zero_replay_weight_are_the_current_loss():
    spec, method, model, batch, params, state, hparams = _setup("class")
    for count, weight in ((0, 1.0), (2, 0.0)):
        ctx = LossContext(model, jax.random.key(9), {**hparams,
                                                     "replay_weight": jnp.float32(weight)},
                          jnp.int32(count), spec, None,
                          Clock(jnp.int32(0), jnp.int32(0), jnp.int32(10)))
        total, aux = method.loss(params, batch, state._replace(count=jnp.int32(count)), ctx)
        assert np.isfinite(float(aux["replay_loss"]))
        np.testing.assert_allclose(total, aux["current_loss"], rtol=1e-6)


def test_the_task_boundary_freezes_the_network_and_keeps_its_samples():
    spec, method, model, batch, params, state, hparams = _setup("class")
    trained = jax.tree.map(lambda p: p + 1.0, params)
    ctx = BoundaryContext(trained, "opt", state, hparams, jnp.int32(2), jax.random.key(0), model,
                          spec, None, None, None, None,
                          Clock(jnp.int32(9), jnp.int32(9), jnp.int32(9)))
    _, opt, s = method.end_task(ctx)
    assert opt == "opt" and isinstance(s, RtFState) and int(s.count) == 3
    jax.tree.map(np.testing.assert_array_equal, s.previous_params, trained)
    want = generated_inputs(model.module, trained, jax.random.key(0), 2, spec)
    np.testing.assert_allclose(s.samples[2], want, rtol=1e-6)
    assert np.all((want >= 0) & (want <= 1))
    np.testing.assert_array_equal(s.samples[0], state.samples[0])


def test_the_network_defaults_and_errors():
    spec, method, model, batch, params, *_ = _setup("task")
    assert model.module.num_modes == 0 and model.module.gate_rows == 0
    assert "mode_means" not in params and "bias" in params["to_log_var"]
    assert get_method("rtf").default_hparams == {"replay_weight": 1.0, "temperature": 2.0}
    for bad in ({"latent": 0}, {"replay_batch_size": 0}, {"sample_count": 0},
                {"outputs": "some"}, {"distill_reduction": "max"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            get_method("rtf", **bad)
    with pytest.raises(ValueError, match="features per example"):
        vae_pass(model.module, params, jnp.ones((2, 7)), jax.random.key(0))
    with pytest.raises(ValueError, match="n must"):
        generated_inputs(model.module, params, jax.random.key(0), 0, spec)
    with pytest.raises(TypeError, match="t_squared"):
        get_method("rtf", t_squared=1)
    conv_spec = StreamSpec((8, 8, 1), jnp.float32, 2, 2, 4, 1, jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="configured MLP"):
        get_method("rtf").model(as_model(CNN(num_outputs=4)), conv_spec)
    masked = spec._replace(num_heads=1, num_outputs=8, task_masked=True)
    single = method.model(as_model(MLP((8,), 8)), masked)
    p = single.init(jax.random.key(0), batch)
    ctx = LossContext(single, jax.random.key(1), {"replay_weight": 1.0, "temperature": 2.0},
                      jnp.int32(0), masked, None, Clock(jnp.int32(0), jnp.int32(0),
                                                        jnp.int32(1)))
    with pytest.raises(ValueError, match="masked single head"):
        method.loss(p, batch, method.init(p, jax.random.key(0), {}, masked), ctx)

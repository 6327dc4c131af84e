"""cljax.methods.bir: the generated inputs of each scenario (which classes, which gate, which
generator), the whole loss — current terms, replay terms with the mixture prior and the soft
gate, the per-task mean of Task-IL, the 1/t mix — against a numpy computation written out per
example, the task boundary, the network built per scenario, and option errors. (The protocol's
contracts — finite, one compilation per stream, vmapped runs = separate runs, resume, host feed
— are the "bir" row of ``tests/test_contract.py``.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import frozen_copy_method_setup

from cljax.methods import BoundaryContext, Clock, LossContext, StreamSpec, get_method
from cljax.methods.bir import GATE_PROP_CIFAR100, BIRState, generated_inputs
from cljax.nn import CNN, MLP, as_model

SHAPE = (5,)
T, K = 3, 2
LAYOUT = {"task": (3, 2), "domain": (1, 2), "class": (1, 6)}     # (heads, outputs)
OPTIONS = {"latent": 3, "replay_batch_size": 7, "sample_count": 2,
           "gate_prop": {"task": 0.0, "domain": 0.5, "class": 0.5}}


def _setup(scenario):
    return frozen_copy_method_setup("bir", OPTIONS, scenario, LAYOUT, T,
                                    jax.random.normal(jax.random.key(1), (4,) + SHAPE))


def _log_normal(z, m, v):
    return float(np.sum(-0.5 * (np.log(2 * np.pi) + v + (z - m) ** 2 / np.exp(v))))


def _log_softmax(a):
    a = np.asarray(a, np.float64)
    a = a - a.max()
    return a - np.log(np.exp(a).sum())


def _pieces(module, params, x, key, gate):
    """The network's parts on ``x`` with ε from ``key`` (one jitted call: fewer compilations)."""
    flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)

    @jax.jit
    def parts(params, flat, key, gate):
        logits, mean, log_var = module.apply({"params": params}, flat, method="encode")
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
        recon = module.apply({"params": params}, z, gate, method="decode")
        means, log_vars = module.apply({"params": params}, method="modes")
        return logits, recon, z, mean, log_var, means, log_vars

    out = [np.asarray(a, np.float64) for a in parts(params, jnp.asarray(flat, jnp.float32), key,
                                                      gate)]
    out[0] = out[0].reshape(x.shape[0], module.num_heads, module.num_outputs)
    return (flat, *out)


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_loss_equals_a_per_example_computation(scenario):
    spec, method, model, batch, params, state, hparams = _setup(scenario)
    module = model.module
    key = jax.random.key(9)
    ctx = LossContext(model, key, hparams, jnp.int32(2), spec, None,
                      Clock(jnp.int32(0), jnp.int32(0), jnp.int32(10)))
    total, aux = jax.jit(lambda p, b, s: method.loss(p, b, s, ctx))(params, batch, state)
    k_cur, k_rep = jax.random.split(key)
    H, C, D = module.num_heads, module.num_outputs, 5
    gated = scenario != "task"
    # current data: gate by the true class (Class-IL) or the task (Domain-IL)
    mode = np.asarray(batch["task"] * C + batch["y"] if H > 1 else batch["y"])
    rows = T if scenario == "domain" else H * C
    gate = (jax.nn.one_hot(batch["task"] if scenario == "domain" else mode, rows)
            if gated else None)
    x, logits, recon, z, mu, lv, means, log_vars = _pieces(module, params, batch["x"], k_cur,
                                                            gate)
    per = []
    for i in range(4):
        head = int(batch["task"][i]) if H > 1 else 0
        kl = _log_normal(z[i], mu[i], lv[i]) - _log_normal(z[i], means[mode[i]],
                                                           log_vars[mode[i]])
        ce = -_log_softmax(logits[i, head])[int(batch["y"][i])]
        per.append((0.5 * np.sum((x[i] - recon[i]) ** 2) + kl) / D + ce)
    current = np.mean(per)
    np.testing.assert_allclose(aux["current_loss"], current, rtol=2e-5)
    # replayed data: the previous network's inputs and soft targets, the soft gate / its task
    k_gen, k_pass = jax.random.split(k_rep)
    xr, _, task = generated_inputs(module, state.previous_params, k_gen, 7, jnp.int32(2), spec)
    teacher = np.asarray(module.apply({"params": state.previous_params}, xr.reshape(7, -1),
                                      method="encode")[0], np.float64).reshape(7, H, C)
    heads = np.asarray(task) if H > 1 else np.zeros(7, int)
    soft = np.stack([np.exp(_log_softmax(teacher[i, heads[i]] / 2.0)) for i in range(7)])
    weights = np.zeros((7, H * C))
    for i in range(7):
        weights[i, heads[i] * C:(heads[i] + 1) * C] = soft[i]
    gate = None
    if scenario == "class":
        gate = jnp.asarray(weights, jnp.float32)
    elif scenario == "domain":
        gate = jax.nn.one_hot(task, T)
    x, logits, recon, z, mu, lv, means, log_vars = _pieces(module, params, xr, k_pass, gate)
    per = []
    for i in range(7):
        mix = sum(weights[i, c] * np.exp(_log_normal(z[i], means[c], log_vars[c]))
                  for c in range(H * C))
        kl = _log_normal(z[i], mu[i], lv[i]) - np.log(mix)
        kd = -np.sum(soft[i] * _log_softmax(logits[i, heads[i]] / 2.0))
        per.append((0.5 * np.sum((x[i] - recon[i]) ** 2) + kl) / D + kd)
    if H > 1:      # the mean over the previous tasks of each one's mean
        replay = np.mean([np.mean([p for p, h in zip(per, heads) if h == t]) for t in range(2)])
        assert set(heads) == {0, 1}
    else:
        replay = np.mean(per)
    np.testing.assert_allclose(aux["replay_loss"], replay, rtol=2e-5)
    r = 1 - 1 / 3
    np.testing.assert_allclose(total, (1 - r) * current + r * replay, rtol=2e-5)


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_generated_inputs_come_from_the_previous_classes_and_their_gates(scenario):
    spec, method, model, batch, params, state, hparams = _setup(scenario)
    module = model.module
    key = jax.random.key(5)
    x, mode, task = generated_inputs(module, params, key, 40, jnp.int32(2), spec)
    mode, task = np.asarray(mode), np.asarray(task)
    if scenario == "class":        # uniform over the 4 classes of the 2 tasks learned
        assert set(mode) == {0, 1, 2, 3} and set(task) == {0}
    elif scenario == "task":       # spread over the 2 tasks, each task's own classes
        np.testing.assert_array_equal(task, np.arange(40) % 2)
        assert np.all(mode // 2 == task) and set(mode) == {0, 1, 2, 3}
    else:                          # the shared labels, a previous task for the gate
        assert set(mode) == {0, 1} and set(task) == {0, 1}
    k_mode, k_task, k_z = jax.random.split(key, 3)
    means, log_vars = module.apply({"params": params}, method="modes")
    z = means[mode] + jnp.exp(0.5 * log_vars[mode]) * jax.random.normal(k_z, (40, 3))
    rows = {"class": 6, "domain": 3, "task": 0}[scenario]
    gate = None if not rows else jax.nn.one_hot(task if scenario == "domain" else mode, rows)
    np.testing.assert_allclose(x, module.apply({"params": params}, z, gate, method="decode"),
                               rtol=1e-5, atol=1e-6)


def test_networks_per_scenario_and_the_task_boundary():
    for scenario, rows in (("task", 0), ("domain", 3), ("class", 6)):
        spec, method, model, *_ = _setup(scenario)
        assert model.module.gate_rows == rows
        assert model.module.num_modes == (2 if scenario == "domain" else 6)
    spec, method, model, batch, params, state, hparams = _setup("class")
    trained = jax.tree.map(lambda p: p + 1.0, params)
    ctx = BoundaryContext(trained, "opt", state, hparams, jnp.int32(2), jax.random.key(0), model,
                          spec, None, None, None, None,
                          Clock(jnp.int32(9), jnp.int32(9), jnp.int32(9)))
    _, opt, s = method.end_task(ctx)
    assert opt == "opt" and isinstance(s, BIRState) and int(s.count) == 3
    jax.tree.map(np.testing.assert_array_equal, s.previous_params, trained)
    want, _, _ = generated_inputs(model.module, trained, jax.random.key(0), 2, jnp.int32(3),
                                  spec)
    np.testing.assert_allclose(s.samples[2], want, rtol=1e-6)
    np.testing.assert_array_equal(s.samples[0], state.samples[0])


def test_defaults_and_errors():
    m = get_method("bir")
    assert m.default_hparams == {"replay_weight": 1.0, "temperature": 2.0}

    def gates(method, scenario):
        heads, outputs = LAYOUT[scenario]
        spec = StreamSpec(SHAPE, jnp.float32, T, K, outputs, heads, jnp.zeros((T, K), jnp.int32))
        module = method.model(as_model(MLP((8,), outputs, num_heads=heads)), spec).module
        return module.gate_rows, module.gate_prop

    for scenario, rows in (("task", 0), ("domain", T), ("class", 6)):      # their CIFAR values
        assert gates(m, scenario) == (rows, GATE_PROP_CIFAR100[scenario])
    assert gates(get_method("bir", gate_prop=0.2), "task") == (6, 0.2)
    with pytest.raises(ValueError, match="gate_prop"):
        get_method("bir", gate_prop={"class": 0.5})
    with pytest.raises(ValueError, match=r"gate_prop\['class'\]"):
        get_method("bir", gate_prop={"task": 0.0, "domain": 0.5, "class": 1.0})
    for bad in ({"latent": 0}, {"replay_batch_size": 0}, {"sample_count": 0},
                {"gate_seed": "a"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            get_method("bir", **bad)
    spec = StreamSpec((8, 8, 1), jnp.float32, 2, 2, 4, 1, jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="configured MLP"):
        m.model(as_model(CNN(num_outputs=4)), spec)

"""Tests for cljax.methods.projection: RGO, RGO-2, GPM, OGD on the method protocol."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.data import make_scenario, permuted_tasks
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream
from helpers import tiny_dataset

KEYS = jax.random.split(jax.random.key(1), 2)
OPTIONS = {"rgo": {}, "rgo2": {}, "gpm": {"thresholds": (0.97,), "num_examples": 40},
           "ogd": {"per_task": 10}}


def _build(name, traces=None, optimizer=None, **options):
    s = permuted_tasks(tiny_dataset(num_classes=4, n=120), tiny_dataset(num_classes=4, n=40, seed=1),
                       num_tasks=3, pad_to=None)
    sc = make_scenario(s, "domain")
    method = get_method(name, **{**OPTIONS[name], **options})
    model = as_model(MLP((16,), sc.num_outputs, use_bias=False))
    if traces is not None:
        base = model

        def counting(params, batch, key):
            traces.append(1)
            return base.train_logits_fn(params, batch, key)

        model = model._replace(train_logits_fn=counting)
    tr = make_trainer(model, method, optimizer=optimizer or optax.sgd(0.1), batch_size=8,
                      eval_chunk=40)
    return method, tr, prepare_data(s, sc, eval_chunk=40)


def _assert_same_runs(a, b, rtol):
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=rtol, atol=rtol / 10)
    np.testing.assert_allclose(a.accuracy, b.accuracy, atol=1e-6)


@pytest.mark.parametrize("name,options", [(n, {}) for n in sorted(OPTIONS)]
                         + [("ogd", {"deferred": True})])
def test_one_compilation_for_the_stream(name, options):
    traces = []
    method, tr, data = _build(name, traces, **options)
    res = run_stream(tr, data, num_steps=4, keys=KEYS, hparams=method.default_hparams)
    # OGD's fused gradient (cljax.layers.capture) traces the loss once more, abstractly, to learn
    # its layer calls; a recompilation per task would give 3 or 6 traces for the 3 tasks
    fused_ogd = name == "ogd" and not options.get("deferred")
    assert len(traces) == (2 if fused_ogd else 1) and np.all(np.isfinite(res.loss))


def test_rgo_alpha_sweep_vmapped_equals_separate_runs_and_fused_equals_plain():
    method, tr, data = _build("rgo")
    keys = jnp.concatenate([KEYS[:1], KEYS[:1]])
    both = run_stream(tr, data, num_steps=6, keys=keys, hparams={"alpha": np.array([1.0, 0.1])},
                      runs="vmap")
    for r, alpha in enumerate((1.0, 0.1)):
        alone = run_stream(tr, data, num_steps=6, keys=keys[r:r + 1], hparams={"alpha": alpha})
        np.testing.assert_allclose(both.train_loss[r], alone.train_loss[0], rtol=2e-5, atol=1e-6)
    assert not np.allclose(both.train_loss[0], both.train_loss[1])
    m2, tr2, _ = _build("rgo", fused_gradient=False)
    plain = run_stream(tr2, data, num_steps=6, keys=keys[:1], hparams={"alpha": 1.0})
    np.testing.assert_allclose(plain.train_loss, both.train_loss[:1], rtol=1e-4, atol=1e-5)
    state = jax.tree.map(lambda x: x[0], both.final_state.mstate)
    assert int(state.count) == 3
    for p in state.projection.values():
        np.testing.assert_allclose(np.trace(np.asarray(p)), p.shape[0], rtol=1e-4)


def test_projection_method_errors():
    with pytest.raises(ValueError, match="thresholds"):
        get_method("gpm", thresholds=(1.2,))
    with pytest.raises(ValueError, match="per_task"):
        get_method("ogd", per_task=0)
    method, tr, data = _build("gpm", thresholds=(0.9, 0.9, 0.9))
    with pytest.raises(ValueError, match="3 thresholds for the model's 2 layers"):
        run_stream(tr, data, num_steps=2, keys=KEYS[:1])
    from cljax.transforms import init_gpm, init_rgo
    with pytest.raises(ValueError, match="no dense/conv layer"):
        init_rgo({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="no dense/conv layer"):
        init_gpm({"w": jnp.ones(3)})


def test_gpm_fused_equals_projecting_the_finished_gradient():
    keys = KEYS[:1]
    runs = []
    for fused in (True, False):
        method, tr, data = _build("gpm", fused_gradient=fused)
        runs.append(run_stream(tr, data, num_steps=6, keys=keys))
    _assert_same_runs(runs[0], runs[1], rtol=1e-4)


def test_deferred_ogd_equals_ogd_and_needs_plain_sgd():
    """The deferred update (coefficients of the stored directions, folded at each boundary) takes
    the same steps as OGD's projected SGD: same losses, accuracies and final weights."""
    runs = []
    for deferred in (False, True):
        method, tr, data = _build("ogd", deferred=deferred)
        runs.append(run_stream(tr, data, num_steps=6, keys=KEYS))
    _assert_same_runs(runs[1], runs[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[1].final_state.params),
                    jax.tree.leaves(runs[0].final_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    m = runs[1].final_state.mstate
    assert int(m.store.size[0]) == 30 and int(np.max(m.not_sgd_steps)) == 0
    np.testing.assert_array_equal(m.coefficients, 0.0)     # folded at the last boundary
    with pytest.raises(ValueError, match="factored=True and fused_gradient=True"):
        get_method("ogd", deferred=True, fused_gradient=False)
    _, tr, data = _build("ogd", optimizer=optax.sgd(0.1, momentum=0.9), deferred=True)
    with pytest.raises(Exception, match="not a multiple of the gradient"):
        run_stream(tr, data, num_steps=4, keys=KEYS[:1])

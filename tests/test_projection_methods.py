"""Tests particular to the projection methods (cljax.methods.projection: RGO, RGO-2, GPM, OGD):
fused gradients against projecting the finished gradient, deferred OGD against OGD, RGO's
projections, and the options' errors, on a permuted (Domain-IL) stream. The contracts every method
shares (finite stream, one compilation, vmapped = separate runs, resume, host) are in
tests/test_contract.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, permuted_tasks
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream

KEYS = jax.random.split(jax.random.key(1), 2)
OPTIONS = {"rgo": {}, "rgo2": {}, "gpm": {"thresholds": (0.97,), "num_examples": 40},
           "ogd": {"per_task": 10}}


def _build(name, optimizer=None, num_tasks=3, **options):
    s = permuted_tasks(tiny_dataset(num_classes=4, n=120), tiny_dataset(num_classes=4, n=40, seed=1),
                       num_tasks=num_tasks, pad_to=None)
    sc = make_scenario(s, "domain")
    method = get_method(name, **{**OPTIONS[name], **options})
    model = as_model(MLP((16,), sc.num_outputs, use_bias=False))
    tr = make_trainer(model, method, optimizer=optimizer or optax.sgd(0.1), batch_size=8,
                      eval_chunk=40)
    return method, tr, prepare_data(s, sc, eval_chunk=40)


def _assert_same_runs(a, b, rtol):
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=rtol, atol=rtol / 10)
    np.testing.assert_allclose(a.accuracy, b.accuracy, atol=1e-6)


def test_rgo_fused_equals_plain_and_its_projections_have_trace_dim():
    """RGO's fused gradient (P∇W̄ inside the backward pass) takes the steps of projecting the
    finished gradient, to rounding; after 3 tasks each frozen projection P = dim/tr(H̄⁻¹)·H̄⁻¹
    has trace dim."""
    runs = []
    for fused in (True, False):
        method, tr, data = _build("rgo", fused_gradient=fused)
        runs.append(run_stream(tr, data, num_steps=6, keys=KEYS[:1], hparams={"alpha": 1.0}))
    np.testing.assert_allclose(runs[1].train_loss, runs[0].train_loss, rtol=1e-4, atol=1e-5)
    state = jax.tree.map(lambda x: x[0], runs[0].final_state.mstate)
    assert int(state.count) == 3
    for p in state.projection.values():
        np.testing.assert_allclose(np.trace(np.asarray(p)), p.shape[0], rtol=1e-4)


def test_projection_method_errors():
    with pytest.raises(ValueError, match="thresholds"):
        get_method("gpm", thresholds=(1.2,))
    with pytest.raises(ValueError, match="first_task_rank must be one of"):
        get_method("gpm", first_task_rank="paper")
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


def test_gpm_first_task_rank_code_keeps_one_fewer_vector_per_layer():
    """``first_task_rank="code"`` (GPM's released code): after the first task every layer's
    basis is one vector smaller than eq. 5's, from the same trained weights."""
    sizes = {}
    for rule in ("eq5", "code"):
        method, tr, data = _build("gpm", first_task_rank=rule, num_tasks=1)
        run = run_stream(tr, data, num_steps=6, keys=KEYS[:1])
        sizes[rule] = {k: int(v[0]) for k, v in run.final_state.mstate.sizes.items()}
    assert sizes["eq5"] and all(v >= 1 for v in sizes["eq5"].values())
    assert sizes["code"] == {k: v - 1 for k, v in sizes["eq5"].items()}


@pytest.mark.slow   # by default: the contract suite's and the golden test's ogd_deferred rows
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

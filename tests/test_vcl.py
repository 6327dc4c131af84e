"""cljax.methods.vcl: k-center against the authors' greedy loop, the random coreset, the index of
the j-th example outside the coreset against a brute-force complement, the batch hook never
drawing a held-out example, the KL over the heads seen, VCL with the prior off and a vanishing
variance equal to maximum-likelihood fine-tuning, and a run with coresets end to end. (The
protocol's contracts — one compilation, vmap = loop, resume, host, devices — are in
``tests/test_contract.py``.)"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_split_stream

from cljax.data import make_scenario
from cljax.methods import BatchContext, Clock, get_method
from cljax.methods.vcl import VCLState, head_mask, kcenter_coreset, outside, random_coreset
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def _greedy_kcenter(x, k):
    """Nguyen et al.'s ``coreset.k_center``, written out."""
    dists = np.full(x.shape[0], np.inf)
    current, chosen = 0, [0]
    for _ in range(1, k):
        dists = np.minimum(dists, np.linalg.norm(x - x[current], axis=1))
        current = int(np.argmax(dists))
        chosen.append(current)
    return chosen


def test_kcenter_equals_the_greedy_loop_and_skips_padding_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 2)).astype(np.float32)
    flat = x.reshape(50, -1)
    np.testing.assert_array_equal(kcenter_coreset(jnp.asarray(x), jnp.int32(50), 7),
                                  _greedy_kcenter(flat, 7))
    # rows past `count` are padding: never chosen, as if absent
    far = x.copy()
    far[40:] = 1e3
    np.testing.assert_array_equal(kcenter_coreset(jnp.asarray(far), jnp.int32(40), 6),
                                  _greedy_kcenter(flat[:40], 6))


def test_random_coreset_is_distinct_sorted_and_inside_count():
    for seed in range(5):
        idx = np.asarray(random_coreset(jax.random.key(seed), jnp.int32(30), 64, 10))
        assert len(set(idx)) == 10 and np.all(np.diff(idx) > 0) and idx.max() < 30
    draws = np.stack([random_coreset(jax.random.key(s), jnp.int32(12), 12, 3)
                      for s in range(600)])
    counts = np.bincount(draws.ravel(), minlength=12)
    assert counts.min() > 100        # every example is chosen (expected 150 of 1800 each)


def test_outside_indexes_the_complement():
    rng = np.random.default_rng(1)
    jitted = jax.jit(outside)       # one compilation per coreset size, not one per operation
    for n, k in [(40, 1), (40, 4), (40, 9), (12, 11)]:
        for _ in range(5):
            core = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
            rest = np.setdiff1d(np.arange(n), core)
            got = jitted(jnp.asarray(core), jnp.arange(n - k, dtype=jnp.int32))
            np.testing.assert_array_equal(got, rest)


def _setup(scenario="task", **options):
    s = tiny_split_stream()
    sc = make_scenario(s, scenario)
    m = get_method("vcl", **options)
    model = as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads))
    tr = make_trainer(model, m, optimizer=optax.adam(1e-2), batch_size=12, eval_chunk=16)
    return s, sc, m, tr, prepare_data(s, sc, eval_chunk=16)


def test_the_batch_never_draws_the_held_out_coreset():
    m = get_method("vcl", coreset="random", coreset_size=5)
    core = jnp.asarray([0, 3, 4, 10, 19], jnp.int32)
    state = VCLState(None, core[None], None, None, None, None)
    seen = []

    def gather(tasks, idx):
        seen.append(np.asarray(idx))
        return {"idx": idx}

    ctx = BatchContext(jax.random.key(0), jax.random.key(1), jnp.int32(0), 4000, {}, None,
                       None, None, lambda t: jnp.int32(20), Clock(0, 0, 1), gather)
    m.batch(ctx, state)
    drawn = np.concatenate(seen)
    assert not set(drawn) & set(np.asarray(core)) and drawn.max() < 20
    assert set(drawn) == set(range(20)) - set(np.asarray(core))   # all the others, uniformly


def test_kl_covers_the_heads_seen_so_far():
    s, sc, m, tr, data = _setup("task")
    spec_model = tr.method.model(tr.base_model, None)
    from cljax.training.data import stream_spec
    spec = stream_spec(spec_model, data)
    mean = spec_model.init(jax.random.key(0), {"x": jnp.zeros((1, 6), jnp.float32),
                                               "task": jnp.zeros((1,), jnp.int32)})["mean"]
    mask = head_mask(mean, spec, jnp.int32(0))
    out = mask["Dense_1"]["kernel"]
    C = spec.num_outputs
    assert np.all(out[:, :C] == 1) and np.all(out[:, C:] == 0)
    assert np.all(mask["Dense_0"]["kernel"] == 1)
    full = head_mask(mean, spec, jnp.int32(spec.num_heads - 1))
    assert all(np.all(v == 1) for v in jax.tree.leaves(full))


def test_prior_off_and_vanishing_variance_is_maximum_likelihood():
    """kl_weight = 0 and σ² = e⁻³⁰: the means follow fine-tuning's parameters (the `none`
    method, same keys, same examples, same Adam) to float tolerance."""
    s, sc, m, tr, data = _setup("task", init_log_var=-30.0, train_samples=1,
                                predict_samples=1)
    keys = jax.random.split(jax.random.key(4), 1)
    res = run_stream(tr, data, num_steps=15, keys=keys, hparams={"kl_weight": 0.0})
    none = get_method("none")
    tr0 = make_trainer(tr.base_model, none, optimizer=optax.adam(1e-2), batch_size=12, eval_chunk=16)
    ref = run_stream(tr0, data, num_steps=15, keys=keys)
    for a, b in zip(jax.tree.leaves(res.final_state.params["mean"]),
                    jax.tree.leaves(ref.final_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.train_loss, ref.train_loss, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_coreset_run_holds_them_out_and_predicts_after_finetuning():
    """k-center coresets, the ML initialisation and the per-head fine-tuning in one run (the
    contract row runs a cheaper random-coreset run by default)."""
    s, sc, m, tr, data = _setup("task", coreset="kcenter", coreset_size=4, ml_init_steps=3,
                                finetune_epochs=2, finetune_batch=4, train_samples=2,
                                predict_samples=4)
    res = run_stream(tr, data, num_steps=10, keys=jax.random.split(jax.random.key(0), 2),
                     hparams={"kl_weight": 1.0})
    st = res.final_state.mstate
    assert st.coreset_idx.shape == (2, data.train.y.shape[0], 4)
    assert bool(jnp.all(st.has_tuned))
    x = np.asarray(data.train.x)
    for t in range(data.train.y.shape[0]):   # the stored rows are the chosen examples
        np.testing.assert_array_equal(st.coreset_x[0, t], x[t, np.asarray(st.coreset_idx[0, t])])
    assert np.all(np.isfinite(res.accuracy)) and res.accuracy[:, -1, 0].mean() > 0.5
    # the prior of the next task is the posterior the run ends with
    for a, b in zip(jax.tree.leaves(st.prior), jax.tree.leaves(res.final_state.params)):
        np.testing.assert_array_equal(a, b)


def test_options_are_checked():
    with pytest.raises(ValueError, match="coreset must be one of"):
        get_method("vcl", coreset="herding")
    with pytest.raises(ValueError, match="coreset_size"):
        get_method("vcl", coreset="random")
    with pytest.raises(ValueError, match="coreset='none' takes coreset_size=0"):
        get_method("vcl", coreset_size=3)
    with pytest.raises(ValueError, match="ml_init_steps"):
        get_method("vcl", ml_init_steps=-1)
    with pytest.raises(ValueError, match="train_samples"):
        get_method("vcl", train_samples=0)


def test_without_a_coreset_the_state_checkpoints(tmp_path):
    """No coreset: the state holds no zero-size array (orbax refuses them)."""
    from cljax.checkpoint import Checkpointer

    s, sc, m, tr, data = _setup("domain", train_samples=1, predict_samples=2)
    res = run_stream(tr, data, num_steps=4, keys=jax.random.split(jax.random.key(0), 1),
                     hparams={"kl_weight": 1.0}, checkpoint=Checkpointer(str(tmp_path / "c")))
    assert np.all(np.isfinite(res.accuracy))
    assert all(v.size for v in jax.tree.leaves(res.final_state.mstate))

"""Tests for cljax.memory: reservoir sampling, per-class and class-balanced budgets, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cljax import memory as M


def _offers(start, size, task=0):
    ids = jnp.arange(start, start + size, dtype=jnp.int32)
    return {"x": ids[:, None], "label": ids, "task": jnp.full((size,), task, jnp.int32)}


def _stream_into(mem, key, batches, size):
    for b in range(batches):
        mem = M.reservoir_add(mem, _offers(b * size, size), jax.random.fold_in(key, b))
    return mem


def test_reservoir_equals_algorithm_r_offer_by_offer():
    """Oracle: Vitter's algorithm R run one offer at a time in Python with the same draws."""
    m, size, batches = 7, 5, 6
    key = jax.random.key(3)
    got = _stream_into(M.init_memory(m, (1,), jnp.int32), key, batches, size)
    slots = [None] * m
    n = 0
    for b in range(batches):
        n_b = n + np.arange(size)
        draws = np.asarray(jax.random.randint(jax.random.fold_in(key, b), (size,), 0, n_b + 1))
        for i in range(size):
            if n < m:
                slots[n] = n
            elif draws[i] < m:
                slots[draws[i]] = n
            n += 1
    np.testing.assert_array_equal(np.asarray(got.label), slots)
    assert int(got.seen) == n and bool(got.valid.all())


def test_reservoir_holds_every_example_with_probability_m_over_n():
    m, size, batches, runs = 10, 8, 5, 20000     # n = 40 offers
    mems = jax.jit(jax.vmap(lambda k: _stream_into(M.init_memory(m, (1,), jnp.int32), k,
                                                   batches, size)))(
        jax.random.split(jax.random.key(0), runs))
    labels, valid = np.asarray(mems.label), np.asarray(mems.valid)
    assert valid.all()
    counts = np.array([((labels == i) & valid).any(1).sum() for i in range(40)])
    expected = runs * m / 40
    # each example is held with probability m/n: chi-square over the 40 examples
    chi2 = np.sum((counts - expected) ** 2 / (expected * (1 - m / 40)))
    assert stats.chi2.sf(chi2, df=39) > 1e-3, (counts, chi2)
    # no example is stored twice
    assert all(len(set(r)) == m for r in labels[:200])


def test_reservoir_mask_jit_vmap_and_capacity_zero():
    mem = M.init_memory(4, (1,), jnp.int32)
    rows = _offers(0, 6)
    mask = jnp.array([True, False, True, False, True, True])
    eager = M.reservoir_add(mem, rows, jax.random.key(1), mask=mask)
    jitted = jax.jit(lambda mm, r, k: M.reservoir_add(mm, r, k, mask=mask))(mem, rows,
                                                                          jax.random.key(1))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(a, b)
    assert int(eager.seen) == 4 and set(np.asarray(eager.label).tolist()) == {0, 2, 4, 5}
    keys = jax.random.split(jax.random.key(2), 3)
    batched = jax.vmap(lambda k: M.reservoir_add(eager, _offers(6, 6), k))(keys)
    for r in range(3):
        alone = M.reservoir_add(eager, _offers(6, 6), keys[r])
        np.testing.assert_array_equal(batched.label[r], alone.label)
    empty = M.reservoir_add(M.init_memory(0, (1,), jnp.int32), rows, jax.random.key(0))
    assert empty.capacity == 0 and int(empty.seen) == 6


def _task_rows(task, n=30, classes=2, offset=0):
    ids = jnp.arange(n, dtype=jnp.int32) + offset
    return {"x": ids[:, None].astype(jnp.int32), "label": ids % classes,
            "task": jnp.full((n,), task, jnp.int32)}


@pytest.mark.parametrize("mode", ["per_class", "class_balanced"])
def test_class_budgets_hold_exactly(mode):
    k, T = 2, 4
    budget = (M.class_budget(classes_per_task=k, num_classes=k * T, per_class=5)
              if mode == "per_class" else
              M.class_budget(classes_per_task=k, num_classes=k * T, capacity=21))
    mem = M.init_memory(budget.memory_capacity(), (1,), jnp.int32)
    store = jax.jit(lambda mm, r, c, t, key: M.store_task(mm, budget, r, c, t, key))
    counts = [30, 30, 7, 30]          # task 2's classes have only 3 / 4 real examples
    history = {}
    for t in range(T):
        rows = _task_rows(t, offset=100 * t)
        mem = store(mem, rows, jnp.asarray(counts[t]), jnp.asarray(t), jax.random.key(t))
        quota = 5 if mode == "per_class" else 21 // ((t + 1) * k)
        valid = np.asarray(mem.valid)
        task, label, x = (np.asarray(a) for a in (mem.task, mem.label, mem.x[:, 0]))
        for s in range(t + 1):
            for c in range(k):
                held = x[valid & (task == s) & (label == c)]
                available = (counts[s] + (1 - c)) // 2 if s == 2 else counts[s] // 2
                assert len(held) == min(quota, available), (t, s, c, held)
                assert np.all(held % 2 == c) and np.all((held - 100 * s) < counts[s])
                assert len(set(held.tolist())) == len(held)
                if (s, c) in history:   # an old class keeps the first of its examples
                    np.testing.assert_array_equal(held, history[(s, c)][:len(held)])
                history[(s, c)] = held
        assert valid.sum() <= budget.memory_capacity()
    with pytest.raises(ValueError, match="capacity"):
        M.class_budget(classes_per_task=2, num_classes=10, capacity=9)
    with pytest.raises(ValueError, match="exactly one"):
        M.class_budget(classes_per_task=2, num_classes=10, capacity=20, per_class=2)


def test_store_task_uses_the_given_selection_order():
    budget = M.class_budget(classes_per_task=2, num_classes=2, per_class=3)
    mem = M.init_memory(6, (1,), jnp.int32)

    def last_first(rows, members, size, key):
        order = jnp.argsort(-jnp.where(members, jnp.arange(members.shape[0]), -1))[:size]
        return order, members[order]

    mem = M.store_task(mem, budget, _task_rows(0, n=10), jnp.asarray(10), jnp.asarray(0),
                       jax.random.key(0), select=last_first)
    np.testing.assert_array_equal(np.asarray(mem.x[:, 0]), [8, 6, 4, 9, 7, 5])


def test_sample_memory_draws_valid_slots_uniformly():
    mem = M.init_memory(6, (1,), jnp.int32)
    mem = mem._replace(label=jnp.arange(6), valid=jnp.array([0, 1, 0, 1, 1, 0], bool))
    rows, ok = M.sample_memory(mem, jax.random.key(0), 3000)
    assert bool(ok.all())
    counts = np.bincount(np.asarray(rows["label"]), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0 and np.all(np.abs(counts[[1, 3, 4]] / 3000 - 1 / 3) < 0.04)
    rows, ok = M.sample_memory(mem, jax.random.key(0), 50, where=mem.label >= 3)
    assert set(np.asarray(rows["label"]).tolist()) <= {3, 4}
    _, ok = M.sample_memory(M.init_memory(4, (1,), jnp.int32), jax.random.key(0), 5)
    assert not bool(ok.any())


def test_sample_memory_without_replacement_is_capped_by_how_full_it_is():
    mem = M.init_memory(8, (1,), jnp.int32)
    mem = mem._replace(label=jnp.arange(8), valid=jnp.array([1, 0, 1, 1, 0, 1, 0, 1], bool))
    for seed in range(5):                              # 5 filled slots: 3 distinct of them
        rows, ok = M.sample_memory(mem, jax.random.key(seed), 3, replace=False)
        labels = np.asarray(rows["label"]).tolist()
        assert bool(ok.all()) and len(set(labels)) == 3 and set(labels) <= {0, 2, 3, 5, 7}
    rows, ok = M.sample_memory(mem, jax.random.key(0), 7, replace=False)   # more than it holds
    np.testing.assert_array_equal(ok, [1, 1, 1, 1, 1, 0, 0])
    assert sorted(np.asarray(rows["label"])[:5].tolist()) == [0, 2, 3, 5, 7]
    firsts = np.array([int(M.sample_memory(mem, jax.random.key(s), 1, replace=False)[0]["label"][0])
                       for s in range(500)])
    counts = np.bincount(firsts, minlength=8)[[0, 2, 3, 5, 7]]
    assert np.all(np.abs(counts / 500 - 0.2) < 0.07), counts
    _, ok = M.sample_memory(M.init_memory(4, (1,), jnp.int32), jax.random.key(0), 2,
                            replace=False)
    assert not bool(ok.any())


def test_memory_errors():
    with pytest.raises(ValueError, match="capacity"):
        M.init_memory(-1, (1,), jnp.int32)
    mem = M.init_memory(3, (2,), jnp.uint8)
    with pytest.raises(ValueError, match=r"rows\['x'\]"):
        M.reservoir_add(mem, _offers(0, 4), jax.random.key(0))
    with pytest.raises(ValueError, match="stores no logits"):
        M.reservoir_add(M.init_memory(3, (1,), jnp.int32), _offers(0, 2), jax.random.key(0),
                        logits=jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="pass logits"):
        M.reservoir_add(M.init_memory(3, (1,), jnp.int32, logits_dim=3), _offers(0, 2),
                        jax.random.key(0))
    with pytest.raises(ValueError, match="capacity 0"):
        M.sample_memory(M.init_memory(0, (1,), jnp.int32), jax.random.key(0), 2)

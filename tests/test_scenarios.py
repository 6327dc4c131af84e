import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_dataset, tiny_split_stream

from cljax.data import make_scenario, permuted_tasks
from cljax.nn import MLP, as_model, select_head
from cljax.training import make_batch, prepare_data


def test_label_tables_per_scenario():
    s = tiny_split_stream()
    task, domain, cls = (make_scenario(s, n) for n in ("task", "domain", "class"))
    assert (task.num_heads, task.num_outputs) == (2, 2)
    assert (domain.num_heads, domain.num_outputs) == (1, 2)
    assert (cls.num_heads, cls.num_outputs) == (1, 4)
    np.testing.assert_array_equal(task.label_table, [[0, 1], [0, 1]])
    np.testing.assert_array_equal(cls.label_table, [[0, 1], [2, 3]])
    p = permuted_tasks(tiny_dataset(), tiny_dataset(), num_tasks=3, pad_to=None)
    np.testing.assert_array_equal(make_scenario(p, "class").label_table[2], [8, 9, 10, 11])
    with pytest.raises(ValueError, match="scenario must be one of"):
        make_scenario(s, "instance")


def test_class_il_batch_recovers_original_labels():
    s = tiny_split_stream()
    data = prepare_data(s, make_scenario(s, "class"))
    tasks = jnp.array([0, 0, 1, 1])
    idx = jnp.array([0, 1, 0, 1])
    b = make_batch(data, data.train, tasks, idx)
    expected = [s.classes[t][s.train.y[t, i]] for t, i in zip([0, 0, 1, 1], [0, 1, 0, 1])]
    np.testing.assert_array_equal(b["y"], expected)
    assert b["x"].dtype == jnp.float32 and float(b["x"].max()) <= 1.0


def test_multi_head_selects_each_examples_head():
    logits = jnp.arange(2 * 6.0).reshape(2, 6)  # 3 heads of 2
    np.testing.assert_array_equal(select_head(logits, jnp.array([2, 0]), 3), [[4, 5], [6, 7]])
    with pytest.raises(ValueError, match="required"):
        select_head(logits, None, 3)
    with pytest.raises(ValueError, match="shape"):
        select_head(logits, jnp.array([0]), 3)


def test_inactive_heads_get_no_gradient():
    model = as_model(MLP((5,), 2, num_heads=3))
    batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros(4, jnp.int32), "task": jnp.array([1, 1, 1, 1])}
    params = model.init(jax.random.key(0), batch)
    g = jax.grad(lambda p: model.logits_fn(p, batch).sum())(params)["Dense_1"]["kernel"]
    assert g.shape == (5, 6)
    assert jnp.all(g[:, [0, 1, 4, 5]] == 0) and jnp.any(g[:, 2:4] != 0)

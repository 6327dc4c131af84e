import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset, tiny_split_stream

from cljax.data import make_scenario, permuted_tasks
from cljax.nn import MASKED_LOGIT, MLP, as_model, mask_task_logits, select_head
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


def test_masked_task_il_is_one_head_over_every_class_with_a_mask_per_task():
    s = tiny_split_stream()
    masked = make_scenario(s, "task", task_heads="masked")
    cls = make_scenario(s, "class")
    assert (masked.name, masked.num_heads, masked.num_outputs) == ("task", 1, 4)
    np.testing.assert_array_equal(masked.label_table, cls.label_table)
    np.testing.assert_array_equal(masked.logit_mask, [[1, 1, 0, 0], [0, 0, 1, 1]])
    assert make_scenario(s, "task").logit_mask is None
    with pytest.raises(ValueError, match="task_heads must be one of"):
        make_scenario(s, "task", task_heads="shared")


def test_masked_logits_give_the_softmax_over_the_tasks_classes():
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    model = as_model(MLP((5,), 4))
    batch = {"x": jax.random.normal(jax.random.key(1), (6, 3)), "task": jnp.array([0, 1] * 3)}
    params = model.init(jax.random.key(0), batch)
    masked = mask_task_logits(model, mask)
    raw, out = model.logits_fn(params, batch), masked.logits_fn(params, batch)
    for b in range(6):
        keep = np.asarray(mask[batch["task"][b]])
        np.testing.assert_array_equal(out[b][keep], raw[b][keep])
        assert np.all(np.asarray(out[b])[~keep] == MASKED_LOGIT)
        sub = jax.nn.softmax(raw[b][keep])                    # oracle: softmax over the subset
        np.testing.assert_allclose(jax.nn.softmax(out[b])[keep], sub, rtol=1e-6)
        assert np.all(np.asarray(jax.nn.softmax(out[b]))[~keep] == 0.0)
    k = jax.random.key(2)
    np.testing.assert_array_equal(masked.train_logits_fn(params, batch, k), out)
    np.testing.assert_array_equal(masked.apply_fn(params, batch, output="features"),
                                  model.features_fn(params, batch))
    np.testing.assert_array_equal(masked.apply_fn(params, batch), out)
    assert masked.all_heads_fn(params, batch).shape == (6, 1, 4)
    p_old = jax.nn.softmax(out)       # a distillation term over masked logits stays finite
    assert np.isfinite(float(jnp.sum(p_old * jax.nn.log_softmax(out))))
    with pytest.raises(ValueError, match=r"mask must be bool \[T, C\]"):
        mask_task_logits(model, jnp.ones(4, bool))


def test_masked_task_il_evaluates_the_argmax_within_each_task():
    from cljax.methods import get_method
    from cljax.training import make_trainer

    s = tiny_split_stream()
    scenario = make_scenario(s, "task", task_heads="masked")
    data = prepare_data(s, scenario, eval_chunk=20)
    trainer = make_trainer(as_model(MLP((8,), 4)), get_method("none"),
                           optimizer=optax.sgd(0.1), batch_size=8, eval_chunk=20)
    state = trainer.init(jax.random.key(0), {}, data)
    acc, _ = trainer.evaluate(state, data)
    raw = trainer.base_model.logits_fn
    for t in range(2):                                   # oracle: argmax over the task's classes
        n = int(data.test.n[t])
        batch = make_batch(data, data.test, jnp.full((n,), t), jnp.arange(n))
        within = np.asarray(raw(state.params, batch))[:, np.asarray(scenario.logit_mask[t])]
        truth = np.asarray(batch["y"]) - 2 * t
        assert float(acc[t]) == pytest.approx(float(np.mean(within.argmax(1) == truth)))

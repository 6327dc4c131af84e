"""The learning rate decayed per task (cljax.transforms.task_decay): the factor against its closed
form, the chain against SGD at the decayed rate, and through the trainer — with the optimizer
reset at every task, as Mirzadeh et al.'s new optimizer per task — every task's first update at
lr·max(γ^t, floor)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_dataset

from cljax.data import make_scenario, split_tasks
from cljax.experiment import make_optimizer
from cljax.methods import Method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream
from cljax.transforms import scale_by_task_decay, task_decay_scale

TASKS = 4


def test_the_factor_is_the_closed_form():
    for decay, floor in [(0.5, 0.0), (0.8, 0.3), (1.0, 0.0)]:
        for t in range(7):
            want = max(decay ** t, floor)
            assert float(task_decay_scale(t, decay, floor)) == pytest.approx(want, rel=1e-6)


def test_the_chain_is_sgd_at_the_decayed_rate():
    grads = {"w": jnp.array([0.3, -1.2]), "b": jnp.array(2.0)}
    tx = optax.chain(optax.sgd(0.1), scale_by_task_decay(0.5, min_scale=0.2))
    state = tx.init(grads)
    for t in range(5):
        got, _ = tx.update(grads, state, task=jnp.asarray(t))
        want, _ = optax.sgd(0.1 * max(0.5 ** t, 0.2)).update(grads, optax.sgd(1.0).init(grads))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="decay"):
        scale_by_task_decay(1.5)
    with pytest.raises(ValueError, match="min_scale"):
        scale_by_task_decay(0.5, min_scale=-1.0)
    tx = scale_by_task_decay(0.5)
    with pytest.raises(ValueError, match="task"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match="min_learning_rate"):
        make_optimizer({"name": "sgd", "learning_rate": 0.1, "min_learning_rate": 1e-3})
    with pytest.raises(ValueError, match="task_decay"):
        make_optimizer({"name": "sgd", "learning_rate": 0.1, "task_decay": 0.0})


def _first_step_ratios(reset: bool) -> np.ndarray:
    """Each task's first update projected on its gradient, ⟨u, g⟩ / ⟨g, g⟩, through the
    trainer, SGD with momentum 0.9, lr 0.1 decayed by 0.5 per task, floored at 0.02."""
    def after_step(info):
        dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))
        first = info.clock.task_step == 0
        log = info.mstate.at[info.task].set(jnp.where(first, dot(info.updates, info.grads)
                                                    / dot(info.grads, info.grads), info.mstate[info.task]))
        return info.params, info.opt_state, log

    method = Method("ratio_logger", init=lambda p, k, h, s: jnp.zeros(TASKS), after_step=after_step)
    s = split_tasks(tiny_dataset(num_classes=8, n=96), tiny_dataset(num_classes=8, n=32, seed=1),
                    tasks=[[0, 1], [2, 3], [4, 5], [6, 7]])
    sc = make_scenario(s, "task")
    model = as_model(MLP((8,), sc.num_outputs, num_heads=sc.num_heads))
    tx = make_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                         "task_decay": 0.5, "min_learning_rate": 0.02})
    tr = make_trainer(model, method, optimizer=tx, batch_size=4, eval_chunk=16,
                      reset_optimizer=reset)
    data = prepare_data(s, sc, eval_chunk=16)
    res = run_stream(tr, data, num_steps=3, keys=jax.random.split(jax.random.key(0), 1))
    return np.asarray(res.final_state.mstate[0])


def test_a_reset_optimizer_keeps_the_decay():
    """With the optimizer reset at every task the momentum restarts, so the first update of
    task t is exactly −lr·max(γ^t, floor)·g: the decay survives the reset (a schedule of the
    optimizer's own step count would restart at lr)."""
    ratios = _first_step_ratios(reset=True)
    np.testing.assert_allclose(ratios, [-0.1, -0.05, -0.025, -0.02], rtol=1e-5)
    # without the reset the momentum carries over: the same decay, other first updates
    assert not np.allclose(_first_step_ratios(reset=False)[1:], ratios[1:], rtol=1e-3)

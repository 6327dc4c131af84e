"""The guides' worked example of a method runs as written (executed from docs/guides/protocol.md)."""
import pathlib
import re

import jax
import numpy as np
import optax
from helpers import tiny_split_stream

from cljax.data import make_scenario
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream

PROTOCOL_GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guides" / "protocol.md"


def test_worked_method_example_runs_and_replays():
    text = PROTOCOL_GUIDE.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(block, str(PROTOCOL_GUIDE), "exec"), namespace)
    method = namespace["er_reservoir"](capacity=16)
    stream = tiny_split_stream()
    sc = make_scenario(stream, "class")
    tr = make_trainer(as_model(MLP((16,), sc.num_outputs)), method, optimizer=optax.adam(1e-2),
                      batch_size=8, eval_chunk=16)
    res = run_stream(tr, prepare_data(stream, sc, eval_chunk=16), num_steps=40,
                     keys=jax.random.split(jax.random.key(0), 2))
    memory = res.final_state.mstate
    assert np.asarray(memory.valid).all() and np.asarray(memory.seen).tolist() == [640, 640]
    assert set(np.unique(np.asarray(memory.task))) == {0, 1}          # both tasks replayed
    assert res.accuracy[:, -1, 0].mean() > 0.5                        # task 1 is not forgotten

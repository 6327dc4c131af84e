"""Tests for cljax.checkpoint and run_stream's checkpoint / resume."""
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_split_stream

from cljax.checkpoint import (
    Checkpointer,
    CheckpointError,
    arrange_like,
    leaves_by_path,
    path_names,
    read_latest,
)
from cljax.data import make_scenario
from cljax.methods import get_method
from cljax.nn import MLP, as_model
from cljax.training import make_trainer, prepare_data, run_stream


def test_checkpointer_round_trip_keys_and_fallback_on_damage(tmp_path):
    c = Checkpointer(tmp_path / "c", log=lambda m: None)
    assert c.restore_latest({"a": jnp.ones(2)}) is None
    old = {"a": jnp.arange(3.0), "k": jax.random.split(jax.random.key(0), 2), "e": ()}
    new = {"a": jnp.arange(3.0) + 1, "k": jax.random.split(jax.random.key(1), 2), "e": ()}
    c.save(1, old, {"i": 1})
    c.save(2, new, {"i": 2})
    payload, meta = c.restore_latest(old)
    assert meta == {"i": 2}
    np.testing.assert_array_equal(payload["a"], new["a"])
    np.testing.assert_array_equal(jax.random.key_data(payload["k"]), jax.random.key_data(new["k"]))
    for root, _, files in os.walk(tmp_path / "c" / "2"):     # damage the newest checkpoint
        for f in files:
            p = pathlib.Path(root) / f
            p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    seen = []
    c.log = seen.append
    payload, meta = c.restore_latest(old)
    assert meta == {"i": 1} and "cannot be restored" in seen[0] and "/2" in seen[0]
    # the damaged checkpoint is moved aside (kept, never deleted), so step 2 can be saved again
    assert "moved aside" in seen[0] and c.steps() == [1]
    assert [p.name.split(".")[1][:8] for p in (tmp_path / "c").glob("2.*")] == ["corrupt-"]
    for root, _, files in os.walk(tmp_path / "c" / "1"):
        for f in files:
            (pathlib.Path(root) / f).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in .* could be restored"):
        c.restore_latest(old)
    with pytest.raises(CheckpointError):   # a template of another structure is refused too
        Checkpointer(tmp_path / "d", log=lambda m: None).save(1, old, {}) or \
            Checkpointer(tmp_path / "d", log=lambda m: None).restore_latest({"b": jnp.ones(7)})


def _setup(method="si", **options):
    s = tiny_split_stream()
    sc = make_scenario(s, "task")
    m = get_method(method, **options)
    tr = make_trainer(as_model(MLP((16,), sc.num_outputs, num_heads=sc.num_heads)), m,
                      optimizer=optax.adam(1e-2), batch_size=8, eval_chunk=16)
    return m, tr, prepare_data(s, sc, eval_chunk=16)


def _fields(res):
    return [res.accuracy, res.loss, res.train_loss, res.init_accuracy, res.diverged,
            *jax.tree.leaves(res.final_state.params), *jax.tree.leaves(res.final_state.mstate),
            *jax.tree.leaves(res.task_params)]


@pytest.mark.parametrize("stop_at", [(1, 8), pytest.param((0, 4), marks=pytest.mark.slow),
                                     pytest.param((1, 0), marks=pytest.mark.slow)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, stop_at):
    """KeyboardInterrupt (what SIGINT raises, and the CLI turns SIGTERM into) at a task's step
    or between tasks; resume continues from the checkpoint saved then, bit for bit."""
    m, tr, data = _setup()
    keys = jax.random.split(jax.random.key(2), 2)
    kw = dict(num_steps=12, keys=keys, hparams=m.default_hparams, keep_params=True,
              checkpoint_every=4)
    full = run_stream(tr, data, checkpoint=Checkpointer(tmp_path / "full"), **kw)

    def stop(task, done, total):
        if (task, done) == stop_at or (stop_at[1] == 0 and task == stop_at[0]):
            raise KeyboardInterrupt

    ckpt = Checkpointer(tmp_path / "run", log=lambda msg: None)
    with pytest.raises(KeyboardInterrupt):
        run_stream(tr, data, checkpoint=ckpt, progress=stop, **kw)
    assert ckpt.steps()
    resumed = run_stream(tr, data, checkpoint=ckpt, resume=True, **kw)
    for a, b in zip(_fields(full), _fields(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_refuses_another_run_and_needs_a_checkpoint(tmp_path):
    m, tr, data = _setup("none")
    keys = jax.random.split(jax.random.key(0), 2)
    ckpt = Checkpointer(tmp_path / "c")
    run_stream(tr, data, num_steps=4, keys=keys, checkpoint=ckpt)
    with pytest.raises(ValueError, match="is of 4 steps per task; this run is 8 steps per task"):
        run_stream(tr, data, num_steps=8, keys=keys, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="need a checkpoint"):
        run_stream(tr, data, num_steps=4, keys=keys, resume=True)


class _State(NamedTuple):
    w: Any
    moment: Any


class _OldState(NamedTuple):   # _State as it was before it gained ``moment``
    w: Any


def test_leaves_by_path_names_namedtuple_fields_like_dict_keys():
    a = leaves_by_path(_State(w=np.ones(2), moment={}))
    b = leaves_by_path({"w": np.ones(2), "extra": {}, "none": None, "e": ()})
    assert list(a) == list(b) == [("w",)]
    assert list(leaves_by_path([np.ones(1), (np.ones(1),)])) == [("0",), ("1", "0")]


def test_arrange_like_places_leaves_by_path_and_names_what_differs():
    target = _State(w={"a": np.zeros(2, np.float32), "b": np.zeros((), np.int32)}, moment={})
    restored = {"w": {"b": np.array(3, np.int32), "a": np.arange(2, dtype=np.float32)}}
    out = arrange_like(restored, target)
    assert isinstance(out, _State) and out.moment == {}
    np.testing.assert_array_equal(out.w["a"], [0.0, 1.0])
    assert out.w["b"] == 3
    with pytest.raises(ValueError, match="this run's array w/b is not in it"):
        arrange_like({"w": {"a": restored["w"]["a"]}}, target)
    with pytest.raises(ValueError, match="its array w/c is not in this run's state"):
        arrange_like({"w": {**restored["w"], "c": np.ones(1)}}, target)
    with pytest.raises(ValueError, match=r"w/a is float64\(2,\), this run's float32\(2,\)"):
        arrange_like({"w": {**restored["w"], "a": np.zeros(2)}}, target)
    with pytest.raises(ValueError, match=r"w/a is float32\(3,\)"):
        arrange_like({"w": {**restored["w"], "a": np.zeros(3, np.float32)}}, target)


@pytest.mark.parametrize("saved_moment", ["absent", {}, (), None])
def test_checkpoint_restores_into_a_state_with_a_new_empty_field(tmp_path, saved_moment):
    """A state that gained a field holding no arrays (RGOState.moment is ``{}`` for most row
    kinds) still restores checkpoints written before it: leaves are matched by path, and
    the digest saved with them still verifies the bytes."""
    w = {"a": jnp.arange(3.0), "k": jax.random.split(jax.random.key(0), 2)}
    old = {"state": _OldState(w) if saved_moment == "absent" else _State(w, saved_moment),
           "step": jnp.int32(7)}
    c = Checkpointer(tmp_path / "c", log=lambda m: None)
    c.save(1, old, {"i": 1})
    template = {"state": _State(w=jax.tree.map(jnp.zeros_like, w), moment={}),
                "step": jnp.int32(0)}
    payload, meta = c.restore_latest(template)
    assert meta == {"i": 1} and isinstance(payload["state"], _State)
    assert payload["state"].moment == {} and payload["step"] == 7
    np.testing.assert_array_equal(payload["state"].w["a"], w["a"])
    np.testing.assert_array_equal(jax.random.key_data(payload["state"].w["k"]),
                                  jax.random.key_data(w["k"]))
    assert c.steps() == [1]                       # nothing moved aside


class _Tree(NamedTuple):
    w: np.ndarray
    opt: dict


def _listing(root: pathlib.Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*"))


def test_path_names_reads_keystr_paths():
    tree = {"state": _Tree(w=np.ones(2), opt={"it's [x]": [np.ones(1), np.ones(3)]})}
    for path, _ in jax.tree_util.tree_leaves_with_path(tree):
        names = path_names(jax.tree_util.keystr(path))
        assert names[0] == "state" and names[1] in ("w", "opt")
    assert path_names("['state'].opt[\"it's [x]\"][1]") == ("state", "opt", "it's [x]", "1")
    assert path_names("") == ()
    for bad in ("state", "['a'", "['a'].", "[a]"):
        with pytest.raises(ValueError, match="keystr"):
            path_names(bad)
    with pytest.raises(TypeError, match="keystr must be a str"):
        path_names(3)


def test_read_latest_reads_without_a_template_and_touches_nothing(tmp_path):
    root = tmp_path / "c"
    assert read_latest(root) is None                    # no directory
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        read_latest(tmp_path / "f")
    c = Checkpointer(root, log=lambda m: None)
    assert read_latest(root) is None                    # no checkpoint
    # w large enough to be stored in a data file of its own (tiny arrays sit in orbax's index)
    old = {"s": _Tree(w=np.arange(5000.0), opt={"m": [np.ones(2)]}),
           "k": jax.random.split(jax.random.key(0), 2), "e": ()}
    new = {**old, "s": _Tree(w=np.arange(5000.0) + 1, opt={"m": [np.zeros(2)]})}
    c.save(1, old, {"i": 1})
    c.save(2, new, {"i": 2})
    step, payload, meta = read_latest(root)
    assert (step, meta) == (2, {"i": 2})                             # the Checkpointer's own keys dropped
    np.testing.assert_array_equal(payload["s"]["w"], new["s"].w)
    np.testing.assert_array_equal(payload["s"]["opt"]["m"][0], np.zeros(2))
    np.testing.assert_array_equal(payload["k"], jax.random.key_data(old["k"]))
    # bytes flipped without changing any size: the digest catches it, the older one is read
    # and nothing is moved aside (a reader never changes the run's directory)
    victim = max((p for p in (root / "2" / "payload").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = _listing(root)
    step, payload, meta = read_latest(root)
    assert (step, meta) == (1, {"i": 1}) and _listing(root) == before
    for p in (root / "1").rglob("*"):
        if p.is_file():
            p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in .* could be read") as e:
        read_latest(root)
    assert "/2: ValueError: its arrays' bytes do not match the digest" in str(e.value)
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]    # nothing moved aside

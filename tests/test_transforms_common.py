"""cljax.transforms.common: the stateless transform with named extra arguments."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

from cljax.transforms.common import require_state, stateless_with_extra_args


class _Shift(NamedTuple):
    by: jax.Array


def _shift(updates, params, *, shift_state):
    del params
    return jax.tree.map(lambda u: u + shift_state.by, updates)


def _tree():
    return {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}


def test_empty_state_and_update_with_the_extra_argument():
    tx = stateless_with_extra_args(_shift, name="shift", required={"shift_state": _Shift})
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    g = _tree()
    state = tx.init(g)
    assert state == optax.EmptyState()
    out, new = jax.jit(tx.update)(g, state, None, shift_state=_Shift(jnp.float32(2.0)))
    assert new == optax.EmptyState()
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
        assert jnp.array_equal(x, y + 2.0)


def test_in_a_chain_other_links_extra_arguments_are_ignored():
    tx = optax.chain(stateless_with_extra_args(_shift, name="shift",
                                               required={"shift_state": _Shift}),
                     optax.sgd(1.0))
    g = _tree()
    out, _ = tx.update(g, tx.init(g), g, shift_state=_Shift(jnp.float32(1.0)), other=3)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
        assert jnp.array_equal(x, -(y + 1.0))


def test_f_gets_params_and_only_the_required_arguments():
    seen = {}

    def f(updates, params, **extra):
        seen.update(params=params, extra=extra)
        return updates

    tx = stateless_with_extra_args(f, name="probe", required={"ref": "a reference", "mask": bool},
                                   needs_params=True)
    g = _tree()
    tx.update(g, tx.init(g), g, ref=1, mask=True, unrelated=2)
    assert seen["params"] is g and seen["extra"] == {"ref": 1, "mask": True}


def test_missing_arguments_and_params_raise_naming_them_and_the_transform():
    tx = stateless_with_extra_args(lambda u, p, **kw: u, name="probe", needs_params=True,
                                   required={"ref": "the reference gradient", "st": _Shift})
    g, s = _tree(), optax.EmptyState()
    with pytest.raises(ValueError, match=r"probe\.update requires the current parameters"):
        tx.update(g, s, None, ref=g, st=_Shift(1.0))
    with pytest.raises(ValueError, match=r"probe\.update needs the extra arguments ref= \(the "
                                         r"reference gradient\) and st= \(a _Shift\)"):
        tx.update(g, s, g)
    with pytest.raises(ValueError, match=r"needs the extra argument st= \(a _Shift\): call "
                                         r"tx\.update\(updates, opt_state, params, ref=\.\.\., "
                                         r"st=\.\.\.\)"):
        tx.update(g, s, g, ref=g, st=None)
    with pytest.raises(ValueError, match=r"needs the extra argument ref="):
        jax.jit(tx.update)(g, s, g, st=_Shift(1.0))
    with pytest.raises(TypeError, match="st must be a _Shift; got dict"):
        tx.update(g, s, g, ref=g, st={"by": 1.0})
    # without needs_params, params may be None
    tx = stateless_with_extra_args(lambda u, p, **kw: u, name="probe", required={"ref": "r"})
    tx.update(g, s, None, ref=g)


def test_bad_helper_arguments_raise():
    with pytest.raises(TypeError, match="f must be a callable"):
        stateless_with_extra_args(None, name="x", required={"a": "b"})
    with pytest.raises(TypeError, match="name"):
        stateless_with_extra_args(_shift, name="", required={"a": "b"})
    for bad in ({}, ["a"], {"a": 1}, {"": "b"}):
        with pytest.raises(TypeError, match="required"):
            stateless_with_extra_args(_shift, name="x", required=bad)
    with pytest.raises(TypeError, match="needs_params"):
        stateless_with_extra_args(_shift, name="x", required={"a": "b"}, needs_params=1)


def test_require_state_messages():
    with pytest.raises(ValueError, match=r"fn needs the extra argument st= \(a _Shift\)"):
        require_state(None, _Shift, arg="st", fn="fn")
    with pytest.raises(TypeError, match="st must be a _Shift; got int"):
        require_state(3, _Shift, arg="st", fn="fn")
    require_state(_Shift(1.0), _Shift, arg="st", fn="fn")

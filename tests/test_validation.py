"""Tests for cljax.validation's pytree checks (the shape / finiteness checks are exercised by every
module's error tests; these are the helpers two families share)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.validation import (
    check_choice,
    check_float_leaves,
    check_instance,
    check_nonnegative_leaves,
    default_float_dtype,
)


def test_default_float_dtype_follows_x64():
    assert default_float_dtype() == jnp.float32
    with jax.enable_x64(True):
        assert default_float_dtype() == jnp.float64


def test_check_float_leaves_names_the_leaf():
    check_float_leaves({"a": jnp.ones(2), "b": [np.zeros(3, np.float16)]}, name="tree")
    with pytest.raises(TypeError, match=r"tree\['b'\]\[1\] must be a float array; got dtype int32"):
        check_float_leaves({"a": jnp.ones(2), "b": [jnp.ones(1), jnp.ones(1, jnp.int32)]},
                           name="tree")


def test_check_nonnegative_leaves_names_the_leaf_and_skips_traced_values():
    check_nonnegative_leaves({"a": jnp.zeros(2)}, name="omega")
    with pytest.raises(ValueError, match=r"omega\['w'\] has negative entries; clip it"):
        check_nonnegative_leaves({"w": jnp.array([1.0, -1e-9])}, name="omega", hint="clip it")
    jax.jit(lambda t: check_nonnegative_leaves(t, name="omega") or 0.0)({"w": -jnp.ones(2)})


def test_check_instance_names_the_argument_the_class_and_the_hint():
    check_instance((1, 2), tuple, name="pair")
    with pytest.raises(TypeError, match=r"^state must be a tuple \(make one\); got dict$"):
        check_instance({}, tuple, name="state", hint="make one")
    with pytest.raises(TypeError, match=r"^x must be a int; got str$"):
        check_instance("1", int, name="x")


def test_check_choice_names_the_argument_and_the_choices():
    check_choice("step", ("step", "example"), name="rows")
    with pytest.raises(ValueError, match=r"^rows must be one of \('step', 'example'\); got 'batch'$"):
        check_choice("batch", ("step", "example"), name="rows")
    with pytest.raises(ValueError, match="got True"):       # a bool is not the choice 1
        check_choice(True, (1, 2), name="n")

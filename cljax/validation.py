"""Input checks shared by every public function. Each raises with the argument's name and what
was expected. They inspect shapes, dtypes and tree structure (static under ``jit``); value checks
(label range, NaN) run only on concrete arrays, since a traced value cannot raise.

The shape, structure and finiteness tests are chex's (``chex.assert_shape``,
``chex.assert_trees_all_equal_structs`` / ``assert_trees_all_equal_shapes``,
``chex.assert_tree_all_finite``); each chex ``AssertionError`` is re-raised as this layer's
exception (``ValueError`` for shapes and structure, ``FloatingPointError`` for NaN / inf) with a
message naming the argument and the offending leaf path, the chex error kept as its
``__cause__``. Like every chex assertion they are switched off by ``chex.disable_asserts()``
(chex's switch for stripping checks from code that is known good); they are on by default.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_batch(batch: Any, *, name: str = "batch", require_y: bool = True,
                num_classes: int | None = None) -> None:
    """A dict with ``x`` ([B, ...]), int ``y`` ([B]) and optional int ``task`` ([B])."""
    if not hasattr(batch, "keys") or "x" not in batch:
        raise TypeError(f"{name} must be a dict with keys 'x', 'y' (and optional 'task'); "
                        f"got {type(batch).__name__}" +
                        (f" with keys {sorted(batch.keys())}" if hasattr(batch, "keys") else ""))
    x = batch["x"]
    if jnp.ndim(x) < 1:
        raise ValueError(f"{name}['x'] must have a leading example axis; got shape {jnp.shape(x)}")
    n = jnp.shape(x)[0]
    for key in (("y", "task") if require_y else ("task",)):
        if key not in batch:
            if key == "y":
                raise KeyError(f"{name} has no 'y' (int labels [B]); keys are {sorted(batch.keys())}")
            continue
        v = batch[key]
        try:
            chex.assert_shape([_shaped(v)], [(n,)])
        except AssertionError as e:
            raise ValueError(f"{name}['{key}'] must have shape ({n},) to match {name}['x'] with "
                             f"{n} examples; got {jnp.shape(v)}") from e
        if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.integer):
            raise TypeError(f"{name}['{key}'] must be an integer array; got {jnp.asarray(v).dtype}")
    if require_y and num_classes is not None and is_concrete(batch["y"]) and n:
        y = np.asarray(batch["y"])
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name}['y'] must lie in [0, {num_classes}); got labels in "
                             f"[{y.min()}, {y.max()}]")


def check_labels_in_range(y: Any, num_classes: int, *, name: str = "batch['y']") -> None:
    """Labels in ``[0, num_classes)`` (skipped for traced values)."""
    if is_concrete(y) and jnp.size(y):
        y = np.asarray(y)
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) (the logits have "
                             f"{num_classes} classes); got labels in [{y.min()}, {y.max()}]")


def _shaped(x: Any) -> Any:
    """``x`` itself when it has a ``.shape`` (arrays, tracers), else ``np.asarray(x)`` (Python
    scalars and lists, which chex would read as shape ``()`` or as several inputs)."""
    return x if hasattr(x, "shape") else np.asarray(x)


def _shape_struct(x: Any) -> jax.ShapeDtypeStruct:
    """A leaf's shape as a ``ShapeDtypeStruct`` (what chex's shape comparator reads)."""
    return jax.ShapeDtypeStruct(jnp.shape(x), np.float32)


def check_finite(tree: Any, *, name: str) -> None:
    """No NaN/inf in a concrete pytree (skipped for traced values): ``chex.assert_tree_all_finite``
    over the concrete floating-point leaves, re-raised as ``FloatingPointError`` naming the first
    offending leaf (``name`` plus its key path)."""
    concrete = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)  # no copy
        if is_concrete(leaf) and jnp.issubdtype(dtype, jnp.inexact):
            # numpy, not jnp: inside a trace a jnp op on a closed-over array is staged, not run
            concrete.append((path, np.asarray(leaf)))
    if not concrete:
        return
    try:
        chex.assert_tree_all_finite([leaf for _, leaf in concrete])
    except AssertionError as e:
        path = next(p for p, leaf in concrete if not np.all(np.isfinite(leaf)))
        raise FloatingPointError(
            f"{name}{jax.tree_util.keystr(path)} contains NaN or inf values") from e


def default_float_dtype() -> Any:
    """JAX's default float dtype (float64 under ``jax.enable_x64``, else float32)."""
    return jnp.result_type(float)


def check_float_leaves(tree: Any, *, name: str) -> None:
    """Every leaf of ``tree`` is a floating-point array (the error names the leaf path)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"{name}{jax.tree_util.keystr(path)} must be a float array; got "
                            f"dtype {jnp.result_type(leaf)}")


def check_nonnegative_leaves(tree: Any, *, name: str, hint: str = "") -> None:
    """No concrete leaf of ``tree`` has an entry < 0 (traced leaves are skipped); ``hint`` ends
    the message (what the values are and how to fix them)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if is_concrete(leaf) and bool(np.any(np.asarray(leaf) < 0)):
            raise ValueError(f"{name}{jax.tree_util.keystr(path)} has negative entries"
                             + (f"; {hint}" if hint else ""))


def check_same_structure(tree: Any, reference: Any, *, name: str, reference_name: str = "params",
                         check_shapes: bool = True) -> None:
    """``tree`` has ``reference``'s pytree structure (``chex.assert_trees_all_equal_structs``)
    and, with ``check_shapes``, its leaf shapes (``chex.assert_trees_all_equal_shapes``); both
    static, so they also hold under ``jit``. ``ValueError`` names the first differing leaf."""
    try:
        chex.assert_trees_all_equal_structs(tree, reference)
    except AssertionError as e:
        raise ValueError(f"{name} must have the pytree structure of {reference_name}; got\n"
                         f"  {jax.tree.structure(tree)}\nexpected\n  "
                         f"{jax.tree.structure(reference)}") from e
    if check_shapes:
        try:
            chex.assert_trees_all_equal_shapes(jax.tree.map(_shape_struct, tree),
                                               jax.tree.map(_shape_struct, reference))
        except AssertionError as e:
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree),
                                    jax.tree.leaves(reference)):
                if jnp.shape(a) != jnp.shape(b):
                    raise ValueError(f"{name}{jax.tree_util.keystr(path)} has shape "
                                     f"{jnp.shape(a)}; {reference_name} has {jnp.shape(b)} "
                                     f"there") from e
            raise ValueError(f"{name} must have the leaf shapes of {reference_name}: {e}") from e


def _numeric(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise TypeError(f"{name} must be a number or an array of numbers; got {value!r}") from e
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a number or an array of numbers; got {value!r} "
                        f"({type(value).__name__})")
    return arr


def _check_scalar(value: Any, name: str, scalar: bool) -> None:
    if scalar:
        try:
            chex.assert_shape([_shaped(value)], [()])
        except AssertionError as e:
            raise ValueError(f"{name} must be a scalar (one value; under vmap, one per run); "
                             f"got shape {jnp.shape(value)}") from e


def check_nonnegative(value: Any, *, name: str, scalar: bool = False) -> None:
    """A concrete scalar/array hyperparameter that is a finite number ≥ 0 (NaN and inf fail;
    skipped for traced values); with ``scalar``, also of shape ``()``."""
    if is_concrete(value):
        arr = _numeric(value, name)
        _check_scalar(arr, name, scalar)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite; got {value}")
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0; got {value}")


def check_positive(value: Any, *, name: str, scalar: bool = False) -> None:
    """A concrete scalar/array that is a finite number > 0 (skipped for traced values); with
    ``scalar``, also of shape ``()``."""
    if is_concrete(value):
        arr = _numeric(value, name)
        _check_scalar(arr, name, scalar)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite; got {value}")
        if np.any(arr <= 0):
            raise ValueError(f"{name} must be > 0; got {value}")


def check_in_unit_interval(value: Any, *, name: str, closed_left: bool = False,
                           scalar: bool = False) -> None:
    """A concrete scalar/array in (0, 1] (or [0, 1] with ``closed_left``); NaN fails; with
    ``scalar``, also of shape ``()``."""
    if is_concrete(value):
        arr = _numeric(value, name)
        _check_scalar(arr, name, scalar)
        low_ok = arr >= 0 if closed_left else arr > 0
        if not np.all(low_ok & (arr <= 1)):
            raise ValueError(f"{name} must lie in {'[' if closed_left else '('}0, 1]; got {value}")


def check_positive_int(value: Any, *, name: str) -> None:
    """A Python or numpy integer ≥ 1 (a ``bool`` is not); else ``ValueError`` naming ``name``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_instance(value: Any, cls: type, *, name: str, hint: str = "") -> None:
    """``value`` is a ``cls`` (a state NamedTuple, say); else ``TypeError`` naming ``name``,
    the class expected and, with ``hint``, how to make one."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}{f' ({hint})' if hint else ''}; got "
                        f"{type(value).__name__}")


def check_choice(value: Any, choices: Sequence[Any], *, name: str) -> None:
    """``value`` is one of ``choices`` (an option's names); else ``ValueError`` naming ``name``
    and the choices."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")


__all__ = ["is_concrete", "check_batch", "check_labels_in_range", "check_finite",
           "check_same_structure", "check_nonnegative", "check_positive", "check_in_unit_interval",
           "check_positive_int", "check_instance", "check_choice"]

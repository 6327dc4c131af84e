"""Sharding helpers on JAX's own SPMD machinery: meshes, shardings, padding and masking.

cljax parallelises over two axes of one :class:`jax.sharding.Mesh`, named :data:`RUNS_AXIS`
and :data:`BATCH_AXIS`:

* ``"runs"`` — the leading axis of a vmapped :class:`cljax.training.TrainState` (seeds × sweep
  points). :func:`cljax.training.run_stream` with ``devices=`` / ``mesh=`` places run r on the
  devices of its slice of this axis (``jax.vmap(..., spmd_axis_name="runs")``), padding R to a
  multiple of the axis size with dummy runs (copies of run 0) that are dropped from the results.
* ``"batch"`` — data parallelism within a run: the examples of every batch the step, the
  evaluation and the task boundaries build are constrained to be split over this axis
  (``jax.lax.with_sharding_constraint``); the parameters are replicated over it and XLA's SPMD
  partitioner inserts the all-reduces. Everything stays one ``jit``-compiled program with global
  semantics, so ``jnp.mean`` over a sharded batch *is* the mean over all its examples, whatever
  the per-device shard sizes (XLA pads uneven shards internally and masks the padding).

What needs care is putting data *onto* the devices: :func:`jax.device_put` with a
:class:`~jax.sharding.NamedSharding` needs the sharded dimension to divide evenly. Pad it
(:func:`pad_batch`: zero rows plus a 0/1 ``weights`` mask) and either pass the mask to a function
that takes per-example weights (:mod:`cljax.curvature`'s task products: a weighted mean
``Σ w ℓ / Σ w``) or drop the padding *inside* ``jit`` (:func:`unpad`, for the estimators of
:mod:`cljax.importance`, which take no weights). Never average per-device means: with unequal
shards that is not the mean over the examples (see ``tests/test_sharding.py``).

Several hosts: call ``jax.distributed.initialize()`` first (before any other JAX call) on every
host; :func:`make_mesh` then spans ``jax.devices()``, every host's devices. Data given as host
numpy arrays (the same on every host) is placed with :func:`put`, results come back with
:func:`to_host` (``multihost_utils.process_allgather`` where an array is not addressable from
this host). ``tests/test_sharding.py`` checks this with two processes of two CPU devices each
joined by ``jax.distributed`` (gloo collectives), which is as far as one machine goes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RUNS_AXIS = "runs"
BATCH_AXIS = "batch"
AXES = (RUNS_AXIS, BATCH_AXIS)


def resolve_devices(devices: int | Sequence[Any] | None = None) -> list:
    """The devices ``devices`` names: None → all of ``jax.devices()`` (every host's, after
    ``jax.distributed.initialize``); an int N → the first N; a sequence → those devices."""
    everything = jax.devices()
    if devices is None:
        return list(everything)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n = int(devices)
        if not 1 <= n <= len(everything):
            raise ValueError(f"devices={n}: there are {len(everything)} device(s) "
                             f"({jax.default_backend()}); ask for 1..{len(everything)} (on a "
                             "CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX "
                             "starts gives N host devices)")
        return list(everything[:n])
    out = list(cast(Sequence[Any], devices))  # a bool lands here, and fails as not iterable
    if not out or not all(isinstance(d, jax.Device) for d in out):
        raise TypeError(f"devices must be None, a positive int or a non-empty sequence of "
                        f"jax.Device; got {devices!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"devices must be distinct; got {out}")
    return out


def make_mesh(devices: int | Sequence[Any] | None = None, *, batch: int = 1) -> Mesh:
    """A 2-D mesh ``("runs", "batch")`` over ``devices`` (see :func:`resolve_devices`).

    Args:
      devices: None (all devices), a count, or the devices themselves.
      batch: devices per run along the batch axis (data parallelism within a run; 1: only the
        runs are sharded). Must divide the device count; the runs axis gets the rest.

    Both axes are ``AxisType.Auto`` (XLA's sharding propagation, with the constraints cljax
    places), not the explicit sharding-in-types mode.
    """
    devs = resolve_devices(devices)
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int; got {batch!r}")
    if len(devs) % batch:
        raise ValueError(f"batch={batch} must divide the number of devices ({len(devs)})")
    grid = np.asarray(devs, dtype=object).reshape(len(devs) // batch, batch)
    auto = (jax.sharding.AxisType.Auto,) * 2
    return Mesh(grid, AXES, axis_types=auto)


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a :class:`jax.sharding.Mesh` with exactly the axes ``("runs", "batch")``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (cljax.sharding.make_mesh); got "
                        f"{type(mesh).__name__}")
    if tuple(mesh.axis_names) != AXES:
        raise ValueError(f"mesh must have the axes {AXES} (cljax.sharding.make_mesh); got "
                         f"{tuple(mesh.axis_names)}")
    return mesh


def axis_size(mesh: Mesh, axis: str) -> int:
    """How many devices ``mesh`` has along ``axis``."""
    return int(dict(mesh.shape)[axis])


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"runs"``, the rest replicated (a vmapped state, [R, ...])."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis (examples) split over ``"batch"``, replicated over ``"runs"``."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def examples_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis (examples) split over *every* device of ``mesh`` (both axes): a whole
    task's data for an estimator or a curvature tool, outside any run."""
    return NamedSharding(mesh, PartitionSpec(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(n: int, multiple: int) -> int:
    """The least multiple of ``multiple`` that is ``>= n``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1; got {multiple}")
    return -(-int(n) // int(multiple)) * int(multiple)


def example_mask(n: int, padded: int, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """``[padded]`` weights: 1 for the ``n`` real examples, 0 for the padding."""
    if not 0 <= n <= padded:
        raise ValueError(f"need 0 <= n <= padded; got n={n}, padded={padded}")
    return (np.arange(padded) < n).astype(dtype)


def pad_axis0(tree: Any, size: int, *, mode: str = "zeros") -> Any:
    """Every leaf of ``tree`` padded along its leading axis to ``size`` rows: with zeros
    (``mode="zeros"``) or with copies of the first row (``mode="first"``: padding that is a
    valid example, e.g. dummy runs that are copies of run 0). Works on numpy and JAX arrays
    (typed PRNG keys included, with ``"first"``)."""
    if mode not in ("zeros", "first"):
        raise ValueError(f"mode must be 'zeros' or 'first'; got {mode!r}")

    def pad(x):
        n = x.shape[0]
        if size < n:
            raise ValueError(f"cannot pad {n} rows to {size}")
        if size == n:
            return x
        xp = jnp if isinstance(x, jax.Array) else np
        if mode == "first":
            fill = xp.repeat(x[:1], size - n, axis=0)
        else:
            fill = xp.zeros((size - n,) + x.shape[1:], x.dtype)
        return xp.concatenate([x, fill], axis=0)

    return jax.tree.map(pad, tree)


def pad_batch(batch: dict, multiple: int) -> tuple[dict, np.ndarray, int]:
    """``(padded batch, weights, n)``: the examples of ``batch`` (a dict of ``[N, ...]``
    arrays) zero-padded to a multiple of ``multiple`` rows (``multiple`` = the number of
    devices the examples are split over), the ``[N_pad]`` 0/1 weights of the real examples,
    and N. Use the weights (curvature tools) or :func:`unpad` inside ``jit`` (estimators) so the
    padding counts for nothing."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch has no arrays")
    n = int(np.shape(leaves[0])[0])
    if any(np.shape(v)[:1] != (n,) for v in leaves):
        raise ValueError(f"every array of batch must have {n} rows; got "
                         f"{[np.shape(v) for v in leaves]}")
    size = padded_size(n, multiple)
    return pad_axis0(batch, size), example_mask(n, size), n


def unpad(tree: Any, n: int) -> Any:
    """The first ``n`` rows of every leaf (``n`` a Python int): inside ``jit``, the real
    examples of a padded, sharded batch (the result may be unevenly sharded: XLA handles it)."""
    return jax.tree.map(lambda x: x[:n], tree)


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Place ``tree`` (host numpy or JAX arrays, every host holding the same values) with
    ``sharding``: :func:`jax.device_put` where this host addresses every device of the
    sharding, else ``jax.make_array_from_callback`` (each host fills its own shards: several
    hosts). Typed PRNG keys go through their raw data."""
    def one(x):
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x), _extend(sharding)),
                                            impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def _extend(sharding):
    """The sharding of a key's raw data (one trailing, replicated axis)."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, None))
    return sharding


def to_host(tree: Any) -> Any:
    """Every leaf as a host numpy array (typed keys as raw ``uint32`` data), gathered from
    every host where it is not fully addressable here (``process_allgather``)."""
    def one(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def constrain_examples(tree: Any, sharding: NamedSharding | None) -> Any:
    """``jax.lax.with_sharding_constraint`` of every leaf's leading axis (examples) to
    ``sharding`` (e.g. :func:`batch_sharding`); scalars are left alone; None: no constraint.
    Under ``jax.vmap(..., spmd_axis_name="runs")`` the runs axis is added in front."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding)
                        if jnp.ndim(x) >= 1 else x, tree)


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(r"\s(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_HEADER_RE = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS_RE = re.compile(r"(body|condition|to_apply|calls|branch_computations|true_computation|"
                       r"false_computation)=\{?([%\w.\-, ]+)\}?")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """The cross-device collectives of a compiled program (``jitted.lower(...).compile()
    .as_text()``), counted by kind: ``{"total": {...}, "in_loops": {...}}``, where ``in_loops``
    counts those inside a ``while`` body (a ``lax.scan`` / ``fori_loop``, and whatever its body
    calls) — a data-parallel chunk loop has none. Kinds: all-reduce, all-gather, reduce-scatter,
    all-to-all, collective-permute (their async ``-start`` halves counted once)."""
    if not isinstance(hlo_text, str):
        raise TypeError("hlo_text must be the text of a compiled program "
                        f"(jax.jit(f).lower(...).compile().as_text()); got {type(hlo_text).__name__}")
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if current is None:
            m = _HEADER_RE.match(line)
            if m and "=" not in line.split("{")[0].split("(")[0]:
                current = m.group(1)
                bodies[current] = []
        elif line.startswith("}"):
            current = None
        else:
            bodies[current].append(line)
    calls = {name: [c.strip().lstrip("%") for kind, group in _CALLS_RE.findall("\n".join(lines))
                    for c in group.split(",") if c.strip()]
             for name, lines in bodies.items()}
    loop_roots = [m.group(1).lstrip("%") for lines in bodies.values() for line in lines
                  if " while(" in line for m in [re.search(r"body=%?([\w.\-]+)", line)] if m]
    in_loops: set[str] = set()
    todo = list(loop_roots)
    while todo:
        name = todo.pop()
        if name in in_loops or name not in bodies:
            continue
        in_loops.add(name)
        todo.extend(calls.get(name, ()))

    def count(names) -> dict[str, int]:
        out = {k: 0 for k in _COLLECTIVES}
        for name in names:
            for line in bodies[name]:
                for kind in _COLLECTIVE_RE.findall(line):
                    out[kind] += 1
        return out

    return {"total": count(bodies), "in_loops": count(in_loops)}


__all__ = ["collectives", "RUNS_AXIS", "BATCH_AXIS", "AXES", "resolve_devices", "make_mesh",
           "check_mesh",
           "axis_size", "runs_sharding", "batch_sharding", "examples_sharding", "replicated",
           "padded_size", "example_mask", "pad_axis0", "pad_batch", "unpad", "put", "to_host",
           "constrain_examples"]

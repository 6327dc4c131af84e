"""How R runs share one program, and where they live.

:func:`runs_transform` turns a one-run function into an R-run one (``vmap``, or a ``lax.map``
loop whose runs compute exactly as lone runs); :class:`RunLayout` holds what the devices add:
with a :func:`cljax.sharding.make_mesh` mesh the runs axis is padded to a multiple of the mesh's
``"runs"`` axis with dummy runs (copies of run 0) and every program's output is sharded over it;
without one (the default) everything is one device's and the helpers are identities.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cljax.training.data import StreamData, place_data
from cljax.validation import check_choice

RUNS = ("auto", "vmap", "map")


def runs_transform(runs: str, *, mesh: Any = None) -> Callable:
    """How the R runs of :func:`run_stream` share one program: ``"vmap"`` (batched: every array
    gets a leading run axis), ``"map"`` (``lax.map``: a loop over runs, each computed exactly as
    a lone run, so run r's results do not depend on R, bit for bit), ``"auto"``: ``"map"`` on
    the CPU, where batching runs gains nothing (BENCHMARKS.md: 8 vmapped seeds took 0.98× the
    time of 8 sequential ones) and XLA's batched matmuls round differently from R = 1, and
    ``"vmap"`` on accelerators.

    With a ``mesh`` (:func:`cljax.sharding.make_mesh`) the run axis is split over the mesh's
    ``"runs"`` axis: ``"vmap"`` with ``spmd_axis_name="runs"`` (``"auto"`` means ``"vmap"``);
    ``"map"`` is allowed only when that axis has one device (data parallelism alone).

    The returned ``transform(fn, in_axes, static=())`` maps ``fn`` over the arguments whose axis
    is 0 (those in ``static`` are passed through unmapped)."""
    check_choice(runs, RUNS, name="runs")
    spmd = None
    if mesh is not None:
        from cljax import sharding as shd

        shd.check_mesh(mesh)
        if runs == "auto":
            runs = "vmap"
        if runs == "map" and shd.axis_size(mesh, shd.RUNS_AXIS) > 1:
            raise ValueError(f"runs='map' loops over the runs on every device and cannot split "
                             f"them over the mesh's {shd.axis_size(mesh, shd.RUNS_AXIS)} "
                             "'runs' devices: use runs='vmap' (or 'auto'), or a mesh with "
                             "batch= all its devices")
        spmd = shd.RUNS_AXIS if runs == "vmap" else None
    elif runs == "auto":
        runs = "map" if jax.default_backend() == "cpu" else "vmap"

    def transform(fn: Callable, in_axes: tuple, static: tuple = ()) -> Callable:
        if runs == "vmap":
            axes = tuple(None if i in static else a for i, a in enumerate(in_axes))
            if spmd is None:
                return jax.vmap(fn, in_axes=axes)
            return jax.vmap(fn, in_axes=axes, spmd_axis_name=spmd)

        def mapped(*args):
            batched = [a for i, (a, ax) in enumerate(zip(args, in_axes))
                       if ax == 0 and i not in static]

            def one(xs):
                it = iter(xs)
                full = [next(it) if (ax == 0 and i not in static) else a
                        for i, (a, ax) in enumerate(zip(args, in_axes))]
                return fn(*full)

            return jax.lax.map(one, batched)

        return mapped

    return transform


def resolve_mesh(devices: Any, mesh: Any) -> Mesh | None:
    """The mesh of ``run_stream(devices=..., mesh=...)``: None for one device."""
    if devices is not None and mesh is not None:
        raise ValueError("give devices= or mesh=, not both (devices=N is "
                         "mesh=cljax.sharding.make_mesh(N))")
    from cljax import sharding as shd

    if mesh is not None:
        return shd.check_mesh(mesh)
    if devices is not None:
        return shd.make_mesh(devices)
    return None


class RunLayout:
    """The R runs of one :func:`run_stream` call on its devices.

    ``compile(fn, in_axes, *args, static=())`` maps ``fn`` over the runs
    (:func:`runs_transform`), jits it (outputs sharded over the runs axis on a mesh) and
    compiles it ahead of time for ``args``; ``real(tree)`` drops the dummy runs; ``to_host``
    brings arrays back (gathered from every host on a mesh); ``scalar`` / ``replicate`` /
    ``distribute`` put host values where the programs expect them.
    """

    def __init__(self, runs: str, num_runs: int, mesh: Any = None):
        self.mesh = mesh
        self.transform = runs_transform(runs, mesh=mesh)
        self.runs = num_runs
        self.padded = num_runs
        if mesh is not None:
            from cljax import sharding as shd

            self.padded = shd.padded_size(num_runs, shd.axis_size(mesh, shd.RUNS_AXIS))
            self._runs_sharding = shd.runs_sharding(mesh)
            self._replicated = shd.replicated(mesh)

    def pad(self, tree: Any) -> Any:
        """Runs-axis arrays of the R real runs, padded with copies of run 0 and sharded."""
        if self.mesh is None:
            return tree
        from cljax import sharding as shd
        return shd.put(shd.pad_axis0(tree, self.padded, mode="first"), self._runs_sharding)

    def real(self, tree: Any) -> Any:
        """The R real runs of a ``[R_pad, ...]`` tree."""
        return tree if self.padded == self.runs else jax.tree.map(lambda x: x[:self.runs], tree)

    def place(self, data: StreamData) -> StreamData:
        """``data`` replicated on the mesh's devices (unchanged without a mesh)."""
        return data if self.mesh is None else place_data(data, self.mesh)

    def scalar(self, value: int) -> jax.Array:
        """An int32 scalar argument (replicated on a mesh)."""
        return self.replicate(jnp.asarray(value, jnp.int32))

    def replicate(self, tree: Any) -> Any:
        """``tree`` on the device (every device of a mesh)."""
        if self.mesh is None:
            return jax.device_put(tree)
        from cljax import sharding as shd
        return shd.put(tree, self._replicated)

    def distribute(self, tree: Any) -> Any:
        """A runs-axis ``tree`` on the device (sharded over the runs axis of a mesh)."""
        if self.mesh is None:
            return jax.device_put(tree)
        from cljax import sharding as shd
        return shd.put(tree, self._runs_sharding)

    def to_host(self, tree: Any) -> Any:
        """``tree`` as host numpy arrays."""
        if self.mesh is None:
            return jax.device_get(tree)
        from cljax.sharding import to_host
        return to_host(tree)

    def spec(self, shape: tuple, dtype: Any, *, replicated: bool = False
             ) -> jax.ShapeDtypeStruct:
        """The abstract argument of ``shape`` a compiled program takes (sharded like
        :meth:`replicate` / :meth:`distribute`)."""
        if self.mesh is None:
            return jax.ShapeDtypeStruct(shape, dtype)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self._replicated if replicated
                                    else self._runs_sharding)

    def jit(self, fn: Callable, in_axes: tuple, static: tuple[int, ...] = ()) -> jax.stages.Wrapped:
        """``fn`` over the runs, jitted (``static``: static positional arguments)."""
        mapped = self.transform(fn, in_axes, static=static)
        kw: dict[str, Any] = {} if self.mesh is None else {"out_shardings": self._runs_sharding}
        return jax.jit(mapped, static_argnums=static, **kw)

    def compile(self, fn: Callable, in_axes: tuple, *args: Any, static: tuple[int, ...] = ()
                ) -> Callable:
        """:meth:`jit` of ``fn`` compiled ahead of time for ``args`` (static ones included)."""
        return self.jit(fn, in_axes, static).lower(*args).compile()

    def devices(self) -> dict | None:
        """The timings' record of the mesh (None without one)."""
        if self.mesh is None:
            return None
        from cljax import sharding as shd
        return {"runs": shd.axis_size(self.mesh, shd.RUNS_AXIS),
                "batch": shd.axis_size(self.mesh, shd.BATCH_AXIS), "padded_runs": self.padded}


__all__ = ["RUNS", "runs_transform", "resolve_mesh", "RunLayout"]

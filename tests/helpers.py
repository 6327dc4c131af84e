"""Tiny synthetic datasets and streams, random SPD / K-FAC factors, and the public modules'
names, for the tests."""
import importlib
import pkgutil

import numpy as np

from cljax.data import ArrayDataset, split_tasks


def tiny_dataset(n=64, size=6, channels=1, num_classes=4, seed=0) -> ArrayDataset:
    """Random uint8 images whose label is a bright pixel row (easily learnable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 60, (n, size, size, channels))
    rows, cols = labels % size, (labels // size) * 2
    images[np.arange(n), rows, cols] = 255
    images[np.arange(n), rows, cols + 1] = 255
    return ArrayDataset(images.astype(np.uint8), labels, num_classes)


def tiny_split_stream(**kw):
    train, test = tiny_dataset(seed=0), tiny_dataset(n=40, seed=1)
    return split_tasks(train, test, tasks=[[0, 1], [2, 3]], **kw)


def assert_trees_close(a, b, **kw):
    """``np.testing.assert_allclose`` leaf by leaf over two pytrees of the same structure."""
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), f"trees have {len(la)} and {len(lb)} leaves"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def random_spd(key, n, dtype=None):
    """A well-conditioned random SPD matrix [n, n] (M Mᵀ / n + 0.1 I)."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float64
    m = jax.random.normal(key, (n, n), dtype)
    return m @ m.T / n + 0.1 * jnp.eye(n, dtype=dtype)


def random_kfac_factors(seed, shapes, dtype=None, names=None):
    """{layer: KFACFactors(A [rows, rows], G [out, out])} of random SPD factors for ``shapes``
    ({layer: (rows, out)}), layer i of ``names`` (default all) keyed by 100·seed + i."""
    import jax

    from cljax.types import KFACFactors

    out = {}
    for i, name in enumerate(shapes if names is None else names):
        ka, kg = jax.random.split(jax.random.PRNGKey(100 * seed + i))
        rows, m = shapes[name]
        out[name] = KFACFactors(random_spd(ka, rows, dtype), random_spd(kg, m, dtype))
    return out


def public_module_names(package="cljax"):
    """The names of ``package`` and of its modules below it with no dotted component starting
    with ``_`` (the public modules: what the typing, doctest and docstring checks walk)."""
    root = importlib.import_module(package)
    found = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    return sorted(n for n in found if not any(part.startswith("_") for part in n.split(".")))


def frozen_copy_method_setup(name, options, scenario, layout, num_tasks, x):
    """A generative-replay method (``name`` with ``options``) on a one-hidden-layer MLP for
    ``scenario`` (``layout[scenario]`` = (heads, outputs); 2 classes per task), at task 2 of
    ``num_tasks`` with a frozen copy drawn from its own key: (spec, method, model, batch,
    params, state, hparams). ``x``: the batch's 4 inputs (their shape is the example shape)."""
    import jax
    import jax.numpy as jnp

    from cljax.methods import StreamSpec, get_method
    from cljax.nn import MLP, as_model

    heads, outputs = layout[scenario]
    k = 2
    spec = StreamSpec(tuple(x.shape[1:]), jnp.float32, num_tasks, k, outputs, heads,
                      jnp.arange(num_tasks * k, dtype=jnp.int32).reshape(num_tasks, k) % outputs,
                      (30,) * num_tasks)
    method = get_method(name, **options)
    model = method.model(as_model(MLP((8,), outputs, num_heads=heads)), spec)
    y = jnp.array([0, 1, 1, 0]) + (2 * k if scenario == "class" else 0)
    batch = {"x": x, "y": y, "task": jnp.full((4,), 2, jnp.int32)}
    params = model.init(jax.random.key(2), batch)
    state = method.init(params, jax.random.key(3), {}, spec)
    state = state._replace(previous_params=model.init(jax.random.key(4), batch),
                           count=jnp.int32(2))
    hparams = {key: jnp.float32(v) for key, v in method.default_hparams.items()}
    return spec, method, model, batch, params, state, hparams

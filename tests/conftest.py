"""Shared pytest configuration.

Tests that need float64 use the ``x64`` fixture (``jax.enable_x64`` as a context) so the rest of
the suite keeps JAX's default float32. ``TFDS_DATA_DIR`` defaults to ``../shared/tfds`` when it
exists, as CI sets it.

JAX's persistent compilation cache is on, in ``<repository>/.jax-cache`` (ignored by git; set
``JAX_COMPILATION_CACHE_DIR`` to move it): the suite compiles many identical programs (the same
tiny model and method in several tests, and in the subprocesses of the CLI and multi-device
tests, which inherit the setting), and compiling dominates its time. A clean clone starts with an
empty cache, so CI's time is that of a cold cache (identical programs within the run still hit).
Compiled code is the same whether it comes from the cache or not: results do not change.
"""
import os
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the cache settings)
import pytest  # noqa: E402

_SHARED_TFDS = _ROOT.parent / "shared" / "tfds"
if "TFDS_DATA_DIR" not in os.environ and _SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_TFDS)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield

"""Shared pytest configuration.

Tests that need float64 use the ``x64`` fixture (``jax.enable_x64`` as a context) so the rest of
the suite keeps JAX's default float32. ``TFDS_DATA_DIR`` defaults to ``../shared/tfds`` when it
exists, as CI sets it.
"""
import os
import pathlib

import jax
import pytest

_SHARED_TFDS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tfds"
if "TFDS_DATA_DIR" not in os.environ and _SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_TFDS)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield

"""Weight initialisers by name, for every model's ``kernel_init`` option.

Papers' code differs here and it matters for one-pass protocols: flax's default is LeCun normal,
PyTorch's ``nn.Linear`` / ``nn.Conv2d`` draw ``kaiming_uniform(a=√5)`` (a uniform of variance
1 / (3 · fan_in)), TensorFlow 1's ``tf.layers.dense`` Glorot uniform, Chaudhry et al.'s
ORTHOG-SUBSPACE orthogonal matrices. Variance-scaling names follow the usual meaning (fan in:
the kernel's input features, × the receptive field for a convolution, flax's HWIO layout).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

INITIALIZERS: dict[str, Callable[[], Any]] = {
    "lecun_normal": nn.initializers.lecun_normal,
    "lecun_uniform": nn.initializers.lecun_uniform,
    "xavier_normal": nn.initializers.xavier_normal,
    "xavier_uniform": nn.initializers.xavier_uniform,
    "kaiming_normal": nn.initializers.kaiming_normal,
    "kaiming_uniform": nn.initializers.kaiming_uniform,
    "pytorch": lambda: nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
    "orthogonal": nn.initializers.orthogonal,
}
"""Kernel initialisers by name (``glorot_*`` = ``xavier_*``, ``he_*`` = ``kaiming_*``):
LeCun (variance 1 / fan_in), Xavier / Glorot (2 / (fan_in + fan_out)), Kaiming / He
(2 / fan_in), each normal (truncated at 2σ, rescaled: flax's) or uniform; ``pytorch``: PyTorch's
default for Linear and Conv kernels (uniform, variance 1 / (3 · fan_in)); ``orthogonal``."""

ALIASES = {"glorot_normal": "xavier_normal", "glorot_uniform": "xavier_uniform",
           "he_normal": "kaiming_normal", "he_uniform": "kaiming_uniform"}


def kernel_initializer(name: str) -> Callable[..., Any]:
    """The flax kernel initialiser named ``name`` (:data:`INITIALIZERS`, or an alias)."""
    if not isinstance(name, str) or ALIASES.get(name, name) not in INITIALIZERS:
        names = sorted([*INITIALIZERS, *ALIASES])
        raise ValueError(f"kernel_init must be one of {names}; got {name!r}")
    return INITIALIZERS[ALIASES.get(name, name)]()


BIAS_INITIALIZERS = ("pytorch",)
"""Bias initialisers by name (beside a constant): ``pytorch``: PyTorch's ``nn.Linear`` default,
U(−1/√fan_in, 1/√fan_in) (``reset_parameters``; van de Ven's and Hsu et al.'s MLPs keep it)."""


def check_bias_init(value: float | str, owner: str) -> None:
    """Refuse a ``bias_init`` that is neither a finite float (a constant) nor a name in
    :data:`BIAS_INITIALIZERS`, naming ``owner``."""
    if isinstance(value, str):
        if value not in BIAS_INITIALIZERS:
            raise ValueError(f"{owner} bias_init must be a finite float or one of "
                             f"{list(BIAS_INITIALIZERS)}; got {value!r}")
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)):
        raise ValueError(f"{owner} bias_init must be a finite float or one of "
                         f"{list(BIAS_INITIALIZERS)}; got {value!r}")


def bias_initializer(value: float | str, fan_in: int) -> Callable[..., Any]:
    """The flax bias initialiser of a layer with ``fan_in`` inputs: the constant ``value`` (0:
    zeros), or ``"pytorch"``: uniform on ±1/√fan_in (:data:`BIAS_INITIALIZERS`)."""
    check_bias_init(value, "bias_initializer")
    if not isinstance(fan_in, int) or isinstance(fan_in, bool) or fan_in < 1:
        raise ValueError(f"fan_in must be a positive int; got {fan_in!r}")
    if value == "pytorch":
        bound = 1.0 / math.sqrt(fan_in)

        def init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        return init
    assert not isinstance(value, str)      # the only names are handled above
    return nn.initializers.constant(value) if value else nn.initializers.zeros


__all__ = ["INITIALIZERS", "ALIASES", "BIAS_INITIALIZERS", "kernel_initializer",
           "bias_initializer", "check_bias_init"]

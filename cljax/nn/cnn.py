"""A small CNN for 32×32 colour images (CIFAR-10/100 splits), flax linen.

Two conv blocks (3×3 convs, ReLU, 2×2 max-pool) and a dense layer, the "reduced" CNN commonly used
for split CIFAR in task-incremental learning; output heads as in :mod:`cljax.nn.heads`. The convs are
:class:`cljax.nn.conv.Conv` (``nn.Conv``'s parameters and outputs, fast inside ``lax.scan`` on the
CPU); parameter names are those of ``nn.Conv`` (``Conv_0`` … ``Conv_3``); pooling is
:func:`cljax.nn.conv.max_pool` (``nn.max_pool``'s values, a faster gradient on the CPU).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from cljax.nn.conv import Conv, max_pool
from cljax.nn.fel import FeatureEncoding
from cljax.nn.heads import head_output
from cljax.nn.init import kernel_initializer


class CNN(nn.Module):
    """Conv(c)×2 → pool per entry of ``channels`` → Dense(hidden) → Dense(num_heads * num_outputs);
    ``output`` as :class:`cljax.nn.MLP`'s (``"features"``: the hidden layer's activations)."""

    num_outputs: int
    num_heads: int = 1
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    dropout: float = 0.0
    feature_encoding: int = 0      # > 0: RGO's FEL (T task permutations) after every layer
    fel_seed: int = 0
    kernel_init: str = "lecun_normal"   # cljax.nn.init.INITIALIZERS

    def __post_init__(self):
        kernel_initializer(self.kernel_init)
        for name in ("num_outputs", "num_heads", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"CNN {name} must be a positive int; got {v!r}")
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in self.channels):
            raise ValueError(f"CNN channels must be positive ints; got {list(self.channels)}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"CNN dropout must be a rate in [0, 1); got {self.dropout!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits"):
        if x.ndim != 4:
            raise ValueError(f"CNN expects images [B, H, W, C]; got shape {x.shape}")
        init = kernel_initializer(self.kernel_init)
        for c in self.channels:
            x = self._encode(nn.relu(Conv(c, (3, 3), kernel_init=init)(x)), task)
            x = self._encode(nn.relu(Conv(c, (3, 3), kernel_init=init)(x)), task)
            x = max_pool(x, 2)
        x = x.reshape(x.shape[0], -1)
        x = self._encode(nn.relu(nn.Dense(self.hidden, kernel_init=init)(x)), task)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if output == "features":
            return x
        x = nn.Dense(self.num_heads * self.num_outputs, kernel_init=init)(x)
        return head_output(x, task, self.num_heads, output)

    def _encode(self, x, task):
        return FeatureEncoding(self.feature_encoding, self.fel_seed)(x, task) \
            if self.feature_encoding else x

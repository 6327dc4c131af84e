"""Multi-layer perceptron (flax linen) with optional per-task heads.

The architecture of the MNIST protocols in van de Ven & Tolias 2019 (784-400-400 ReLU, or
1024-1000-1000 for permuted MNIST) and Mirzadeh et al. 2020 (784-100-100, optional dropout).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cljax.nn.heads import select_head


class MLP(nn.Module):
    """ReLU MLP: flatten → [Dense(w) → ReLU → Dropout]* → Dense(num_heads * num_outputs) → head.

    Layers are flax ``Dense`` named ``Dense_0 … Dense_L`` (the last is the output layer), so the
    layer-wise fast paths of :mod:`cljax.importance` recognise them.
    """

    widths: Sequence[int]
    num_outputs: int
    num_heads: int = 1
    dropout: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.relu(nn.Dense(width, use_bias=self.use_bias)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_heads * self.num_outputs, use_bias=self.use_bias)(x)
        return select_head(x, task, self.num_heads)

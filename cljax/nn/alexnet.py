"""The 5-layer AlexNet of GPM (Saha et al. 2021, ICLR, "Gradient Projection Memory", §5 and its
code), used for 10-split CIFAR-100, flax linen.

conv 64@4×4 → BN → ReLU → dropout 0.2 → max-pool 2; conv 128@3×3 → … dropout 0.2 → pool;
conv 256@2×2 → … dropout 0.5 → pool; fc 2048 → BN → ReLU → dropout 0.5; fc 2048 → BN → ReLU →
dropout 0.5; heads. No biases anywhere (convs, fcs, heads), PyTorch padding 0 (``VALID``):
32 → 29 → 14 → 12 → 6 → 5 → 2, so fc1 sees 256·2·2 = 1024 features. BatchNorm is
:class:`cljax.nn.resnet.BatchStatNorm` — the current batch's statistics at train and test time,
as GPM's ``track_running_stats=False``; see :mod:`cljax.nn.resnet` for where its statistics live
(nowhere) and what that means for evaluation and the estimators. Convs are :class:`cljax.nn.Conv`.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from cljax.nn.conv import Conv, max_pool
from cljax.nn.fel import FeatureEncoding
from cljax.nn.heads import head_output
from cljax.nn.init import kernel_initializer
from cljax.nn.resnet import BatchStatNorm


class AlexNet(nn.Module):
    """GPM's AlexNet: convs ``channels`` with ``kernels``, fcs ``hidden``, no biases, BN, dropout."""

    num_outputs: int
    num_heads: int = 1
    channels: Sequence[int] = (64, 128, 256)
    kernels: Sequence[int] = (4, 3, 2)
    hidden: Sequence[int] = (2048, 2048)
    conv_dropout: Sequence[float] = (0.2, 0.2, 0.5)
    dropout: float = 0.5
    feature_encoding: int = 0      # > 0: RGO's FEL (T task permutations) after every layer
    fel_seed: int = 0
    kernel_init: str = "lecun_normal"   # cljax.nn.init.INITIALIZERS

    def __post_init__(self):
        kernel_initializer(self.kernel_init)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits"):
        if x.ndim != 4:
            raise ValueError(f"AlexNet expects images [B, H, W, C]; got shape {x.shape}")
        if not len(self.channels) == len(self.kernels) == len(self.conv_dropout):
            raise ValueError("channels, kernels and conv_dropout must have the same length")
        init = kernel_initializer(self.kernel_init)
        for c, k, p in zip(self.channels, self.kernels, self.conv_dropout):
            x = Conv(c, (k, k), padding="VALID", use_bias=False, kernel_init=init)(x)
            x = nn.relu(BatchStatNorm()(x))
            x = self._encode(x, task)
            if p > 0:
                x = nn.Dropout(p, deterministic=not train)(x)
            x = max_pool(x, 2)
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = self._encode(nn.relu(BatchStatNorm()(nn.Dense(h, use_bias=False,
                                                              kernel_init=init)(x))), task)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if output == "features":
            return x
        x = nn.Dense(self.num_heads * self.num_outputs, use_bias=False, kernel_init=init)(x)
        return head_output(x, task, self.num_heads, output)


    def _encode(self, x, task):
        return FeatureEncoding(self.feature_encoding, self.fel_seed)(x, task) \
            if self.feature_encoding else x


__all__ = ["AlexNet"]

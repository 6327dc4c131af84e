"""The convolutional encoder of van de Ven, Tuytelaars & Tolias 2022 (CIFAR protocols), flax linen.

Their ``C3-5x16-bn`` feature extractor (GMvandeVen/continual-learning, ``models/conv/nets.py``):
five 3×3 convolutions with padding 1 and bias, 16 channels doubling at each of the four stride-2
layers (16, 32, 64, 128, 256), BatchNorm and ReLU after each but the last (no BN, no
nonlinearity after layer 5), no pooling; a 32×32×3 image becomes 2×2×256 = 1024 features. It is
pre-trained on CIFAR-10 and then frozen (:mod:`cljax.pretrain`), so the continual-learning model
is the fully connected part alone (:class:`cljax.nn.MLP` on the features).

BatchNorm here is flax's ``nn.BatchNorm`` with running averages in the ``batch_stats``
collection: batch statistics while pre-training, the running averages once frozen (PyTorch's
``eval()`` mode, as the frozen conv layers of the paper). :class:`EncoderClassifier` adds the
pre-training head (fully connected layers and a 10-way output).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from cljax.nn.conv import Conv


class ConvEncoder(nn.Module):
    """``depth`` 3×3 convs (stride 1, then 2), ``channels · 2^i`` channels, BN + ReLU except last."""

    channels: int = 16
    depth: int = 5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if x.ndim != 4:
            raise ValueError(f"ConvEncoder expects images [B, H, W, C]; got shape {x.shape}")
        for i in range(self.depth):
            x = Conv(self.channels * 2 ** i, (3, 3), strides=(1, 1) if i == 0 else (2, 2),
                     padding=((1, 1), (1, 1)))(x)
            if i < self.depth - 1:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
        return x.reshape(x.shape[0], -1)


class EncoderClassifier(nn.Module):
    """:class:`ConvEncoder` → [Dense(w) → ReLU]* → Dense(num_outputs): the pre-training network."""

    num_outputs: int = 10
    widths: Sequence[int] = (2000, 2000)
    channels: int = 16
    depth: int = 5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = ConvEncoder(self.channels, self.depth, name="encoder")(x, train=train)
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.num_outputs)(x)


__all__ = ["ConvEncoder", "EncoderClassifier"]

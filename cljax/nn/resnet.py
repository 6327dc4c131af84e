"""Reduced ResNet-18 (Lopez-Paz & Ranzato 2017, GEM) and a batch-statistics BatchNorm, flax linen.

**ResNet18** is the network of GEM's code (``ResNet18(nclasses, nf=20)``), used by GEM, A-GEM
(Chaudhry et al. 2019) and GPM (Saha et al. 2021) for split CIFAR-100, miniImageNet and
5-datasets: ResNet-18 (He et al. 2016; four stages of two BasicBlocks, strides 1, 2, 2, 2) with
``nf = 20`` base channels (20, 40, 80, 160) instead of 64, 3×3 convs without bias and PyTorch's
padding 1, 1×1 strided projection shortcuts where the shape changes, BatchNorm after every conv,
global average pooling (``avg_pool2d(out, 4)`` on 32×32 inputs) and one linear classifier with
bias, here ``num_heads × num_outputs`` wide with the heads of :mod:`cljax.nn.heads`. The first conv
has stride ``stem_stride`` (1 for 32×32 CIFAR as in GEM; GPM uses 2 on 84×84 miniImageNet).
1.1 M parameters for 100 outputs. Convs are :class:`cljax.nn.Conv`. Initialisation is flax's
default (LeCun normal), not PyTorch's.

**BatchNorm and where its statistics live** (:class:`BatchStatNorm`): nowhere. Each BatchNorm
normalises with the mean and (biased) variance of the batch it is given, in training *and* in
evaluation, and keeps no running averages — PyTorch's ``BatchNorm2d(track_running_stats=False)``,
exactly what GPM's ResNet-18 and AlexNet do. Its learnable ``scale`` and ``bias`` are ordinary
``params``, so a params-only trainer (``cljax.training``: ``TrainState.params``, no flax
``batch_stats`` collection) trains, regularises, projects and checkpoints them like any weight,
and nothing happens at task boundaries: there is no statistic of an old task to keep or to
overwrite (the failure mode of running averages in continual learning). The price: outputs depend
on the batch composition. Evaluate in chunks of one task's real examples (an ``eval_chunk`` that
divides every test set, so that no zero padding enters a chunk's statistics), and note that the
importance estimators' and curvature tools' assumption "examples are independent" does not hold —
their fallback ``implementation="vmap"`` would see batches of one example.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.nn.conv import Conv
from cljax.nn.fel import FeatureEncoding
from cljax.nn.heads import head_output
from cljax.nn.init import kernel_initializer


class BatchStatNorm(nn.Module):
    """BatchNorm over all axes but the last, with the current batch's statistics always (no running
    averages: PyTorch ``track_running_stats=False``; Ioffe & Szegedy 2015, Alg. 1).

    y = (x − μ_B) / √(σ²_B + ε) · scale + bias, μ_B and σ²_B (biased) over every axis but the
    features; ``scale`` (init 1) and ``bias`` (init 0) are ``params`` of shape [features].
    """

    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        if x.ndim < 2:
            raise ValueError(f"BatchStatNorm expects [B, ..., features]; got shape {x.shape}")
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            y = y * self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return y


_PAD1 = ((1, 1), (1, 1))   # PyTorch padding=1 (flax "SAME" pads (0, 1) for stride 2)


class BasicBlock(nn.Module):
    """conv3×3(stride)–BN–ReLU–conv3×3–BN, plus the (1×1 conv–BN) shortcut, then ReLU."""

    features: int
    stride: int = 1
    kernel_init: str = "lecun_normal"   # cljax.nn.init.INITIALIZERS

    @nn.compact
    def __call__(self, x):
        init = kernel_initializer(self.kernel_init)
        out = Conv(self.features, (3, 3), strides=self.stride, padding=_PAD1, use_bias=False,
                   kernel_init=init)(x)
        out = nn.relu(BatchStatNorm()(out))
        out = Conv(self.features, (3, 3), padding=_PAD1, use_bias=False, kernel_init=init)(out)
        out = BatchStatNorm()(out)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), strides=self.stride, padding="VALID",
                     use_bias=False, kernel_init=init)(x)
            x = BatchStatNorm()(x)
        return nn.relu(out + x)


class ResNet18(nn.Module):
    """Reduced ResNet-18 of GEM (Lopez-Paz & Ranzato 2017): ``nf`` base channels (20)."""

    num_outputs: int
    num_heads: int = 1
    nf: int = 20
    num_blocks: Sequence[int] = (2, 2, 2, 2)
    stem_stride: int = 1
    feature_encoding: int = 0      # > 0: RGO's FEL (T task permutations) after the stem and blocks
    fel_seed: int = 0
    kernel_init: str = "lecun_normal"   # cljax.nn.init.INITIALIZERS

    def __post_init__(self):
        kernel_initializer(self.kernel_init)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits"):
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects images [B, H, W, C]; got shape {x.shape}")
        init = kernel_initializer(self.kernel_init)
        x = Conv(self.nf, (3, 3), strides=self.stem_stride, padding=_PAD1, use_bias=False,
                 kernel_init=init)(x)
        x = nn.relu(BatchStatNorm()(x))
        x = self._encode(x, task)
        for stage, blocks in enumerate(self.num_blocks):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                x = self._encode(BasicBlock(self.nf * 2 ** stage, stride, self.kernel_init)(x),
                                 task)
        x = jnp.mean(x, axis=(1, 2))          # avg_pool2d(out, 4) on 32×32 inputs
        if output == "features":
            return x
        x = nn.Dense(self.num_heads * self.num_outputs, kernel_init=init)(x)
        return head_output(x, task, self.num_heads, output)


    def _encode(self, x, task):
        return FeatureEncoding(self.feature_encoding, self.fel_seed)(x, task) \
            if self.feature_encoding else x


__all__ = ["BatchStatNorm", "BasicBlock", "ResNet18"]

"""Multi-layer perceptron (flax linen) with optional per-task heads.

The architecture of the MNIST protocols in van de Ven & Tolias 2019 (784-400-400 ReLU, or
1024-1000-1000 for permuted MNIST) and Mirzadeh et al. 2020 (784-100-100, optional dropout), and
of the fully connected part of van de Ven et al. 2022's CIFAR-100 model (on frozen conv features).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from cljax.nn.fel import FeatureEncoding
from cljax.nn.heads import head_output
from cljax.nn.init import bias_initializer, check_bias_init, kernel_initializer


def check_init(kernel_stddev: float | None, bias_init: float | str, owner: str) -> None:
    """Refuse a non-positive or non-finite ``kernel_stddev`` (None allowed) or a ``bias_init``
    that is neither a finite float nor a name in :data:`cljax.nn.init.BIAS_INITIALIZERS`,
    naming ``owner``."""
    if kernel_stddev is not None and not (isinstance(kernel_stddev, (int, float))
                                          and not isinstance(kernel_stddev, bool)
                                          and math.isfinite(kernel_stddev) and kernel_stddev > 0):
        raise ValueError(f"{owner} kernel_stddev must be None (LeCun normal) or a finite float "
                         f"> 0; got {kernel_stddev!r}")
    check_bias_init(bias_init, owner)


class MLP(nn.Module):
    """ReLU MLP: flatten → [Dense(w) → ReLU → Dropout]* → Dense(num_heads * num_outputs) → head.

    Layers are flax ``Dense`` named ``Dense_0 … Dense_L`` (the last is the output layer), so the
    layer-wise fast paths of :mod:`cljax.importance` recognise them. ``output``: ``"logits"``
    (each example's head), ``"all_heads"`` (``[B, num_heads, num_outputs]``) or ``"features"``
    (the last hidden layer's activations, what the output layer reads). ``feature_encoding``
    = T > 0 puts RGO's feature encoding layer (:class:`cljax.nn.fel.FeatureEncoding`, T task
    permutations drawn from ``fel_seed``) after every hidden layer; it needs ``task``.
    ``kernel_stddev``: None for flax's LeCun-normal weights, or a truncated normal (at ±2σ) of
    that standard deviation for every layer, and ``bias_init`` the biases' constant — A-GEM's
    TensorFlow code (Chaudhry et al. 2019) initialises its MLPs with 0.1 and 0.1 — or
    ``"pytorch"`` (U(±1/√fan_in), PyTorch's ``nn.Linear`` default).
    ``kernel_init``: the weights' initialiser by name (:data:`cljax.nn.init.INITIALIZERS`;
    ``kernel_stddev`` replaces it when set).
    """

    widths: Sequence[int]
    num_outputs: int
    num_heads: int = 1
    dropout: float = 0.0
    use_bias: bool = True
    feature_encoding: int = 0
    fel_seed: int = 0
    kernel_stddev: float | None = None
    bias_init: float | str = 0.0
    kernel_init: str = "lecun_normal"

    def __post_init__(self):
        widths = tuple(self.widths)
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"MLP widths must be positive ints; got {list(self.widths)}")
        for name in ("num_outputs", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MLP {name} must be a positive int; got {v!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"MLP dropout must be a rate in [0, 1); got {self.dropout!r}")
        if (not isinstance(self.feature_encoding, int) or isinstance(self.feature_encoding, bool)
                or self.feature_encoding < 0):
            raise ValueError(f"MLP feature_encoding must be an int >= 0 (the number of tasks, 0: "
                             f"off); got {self.feature_encoding!r}")
        check_init(self.kernel_stddev, self.bias_init, "MLP")
        kernel_initializer(self.kernel_init)
        if self.kernel_stddev is not None and self.kernel_init != "lecun_normal":
            raise ValueError(f"MLP: kernel_stddev (a truncated normal) and kernel_init="
                             f"{self.kernel_init!r} both choose the weights; set one")
        super().__post_init__()

    def _dense(self, features: int, fan_in: int) -> nn.Dense:
        init: dict[str, Any] = {"kernel_init": kernel_initializer(self.kernel_init),
                                "bias_init": bias_initializer(self.bias_init, fan_in)}
        if self.kernel_stddev is not None:
            init["kernel_init"] = nn.initializers.truncated_normal(self.kernel_stddev)
        return nn.Dense(features, use_bias=self.use_bias, **init)

    @nn.compact
    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits"):
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.relu(self._dense(width, x.shape[-1])(x))
            if self.feature_encoding:
                x = FeatureEncoding(self.feature_encoding, self.fel_seed)(x, task)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if output == "features":
            return x
        x = self._dense(self.num_heads * self.num_outputs, x.shape[-1])(x)
        return head_output(x, task, self.num_heads, output)

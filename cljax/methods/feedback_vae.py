"""The network of brain-inspired replay (van de Ven, Siegelmann & Tolias 2020, Nature
Communications; code GMvandeVen/continual-learning, ``models/cond_vae.py``): one network that is
both the classifier and the generator ("replay through feedback")::

    encoder   x (D) → widths… (ReLU) → h                       the classifier's hidden layers
    classifier h → num_heads · num_outputs logits              (the configured output layer)
    to_z      h → μ, log σ² (latent; no bias on log σ² as BI-R's code, one as RtF's)
    decoder   z → reversed(widths)… (ReLU, gated) → x̂ (D, linear: BI-R's Gaussian mean,
              RtF's Bernoulli logits)
    prior     a Gaussian mode per class: means and log-variances ``[num_modes, latent]``,
              trained with everything else (both initialised N(0, 1), as theirs); none
              (``num_modes`` 0) for the standard normal prior of replay through feedback
              (van de Ven & Tolias 2018)

**Gating based on internal context**: each hidden layer of the decoder multiplies its
pre-activations by ``gate = g @ M``, where ``M`` (``[gate_rows, width]``) is a fixed random 0/1
mask whose entries are 0 with probability ``gate_prop`` and ``g`` is a one-hot class or task (or
a probability vector over them); the output layer is not gated. The masks are drawn from
``gate_seed`` when the module is built (constants, not parameters). ``gate_rows`` 0: no gates.

Classification (``__call__``, the model's logits) reads the deterministic hidden layer h — no
sampling, no decoder — so evaluation is the configured MLP's.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import StreamSpec
from cljax.methods.vae import check_widths
from cljax.nn import MLP
from cljax.nn.heads import head_output
from cljax.nn.model import Model, as_model
from cljax.types import Array, Params, PRNGKey


def gate_masks(widths: Sequence[int], rows: int, prop: float, seed: int) -> list[np.ndarray]:
    """The decoder's fixed 0/1 masks, one ``[rows, width]`` per hidden layer of the decoder
    (``reversed(widths)``), each entry 0 with probability ``prop`` (their
    ``fc_layer_fixed_gates``); ``[]`` when ``rows`` is 0."""
    if not rows:
        return []
    rng = np.random.default_rng(seed)
    return [(rng.uniform(size=(rows, w)) >= prop).astype(np.float32)
            for w in reversed(tuple(widths))]


class FeedbackVAE(nn.Module):
    """The module docstring's network. ``encode(x)`` → (logits ``[B, H·C]``, μ, log σ²);
    ``decode(z, gate)`` → x̂ ``[B, D]`` (``gate`` ``[B, gate_rows]`` or None without gates)."""

    widths: Sequence[int]
    num_outputs: int
    num_heads: int
    data_dim: int
    num_modes: int
    latent: int = 100
    gate_rows: int = 0
    gate_prop: float = 0.0
    gate_seed: int = 0
    log_var_bias: bool = False

    def __post_init__(self):
        for name in ("num_outputs", "num_heads", "data_dim", "latent"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"FeedbackVAE {name} must be a positive int; got {v!r}")
        if not isinstance(self.num_modes, int) or isinstance(self.num_modes, bool) \
                or self.num_modes < 0:
            raise ValueError(f"FeedbackVAE num_modes must be an int >= 0 (0: no learned prior "
                             f"modes); got {self.num_modes!r}")
        if not isinstance(self.log_var_bias, bool):
            raise ValueError(f"FeedbackVAE log_var_bias must be a bool; got "
                             f"{self.log_var_bias!r}")
        check_widths(self.widths, "FeedbackVAE")
        if not (isinstance(self.gate_prop, (int, float)) and 0 <= self.gate_prop < 1):
            raise ValueError(f"FeedbackVAE gate_prop must lie in [0, 1); got {self.gate_prop!r}")
        if not isinstance(self.gate_rows, int) or self.gate_rows < 0:
            raise ValueError(f"FeedbackVAE gate_rows must be an int >= 0; got "
                             f"{self.gate_rows!r}")
        super().__post_init__()

    def setup(self) -> None:
        self.encoder = [nn.Dense(w) for w in self.widths]
        self.classifier = nn.Dense(self.num_heads * self.num_outputs)
        self.to_mean = nn.Dense(self.latent)
        self.to_log_var = nn.Dense(self.latent, use_bias=self.log_var_bias)
        self.decoder = [nn.Dense(w) for w in reversed(tuple(self.widths))]
        self.to_data = nn.Dense(self.data_dim)
        if self.num_modes:
            normal = nn.initializers.normal(1.0)
            self.mode_means = self.param("mode_means", normal, (self.num_modes, self.latent))
            self.mode_log_vars = self.param("mode_log_vars", normal,
                                            (self.num_modes, self.latent))

    def _hidden(self, x: Array) -> Array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.encoder:
            h = nn.relu(layer(h))
        return h

    def __call__(self, x, task=None, *, train: bool = False, output: str = "logits"):
        del train
        h = self._hidden(x)
        if self.is_initializing():        # create the generator's parameters too
            self.decode(self.to_mean(h) + self.to_log_var(h),
                        jnp.ones((h.shape[0], self.gate_rows)) if self.gate_rows else None)
            if self.num_modes:
                _ = self.mode_means, self.mode_log_vars
        if output == "features":
            return h
        return head_output(self.classifier(h), task, self.num_heads, output)

    def encode(self, x: Array) -> tuple[Array, Array, Array]:
        h = self._hidden(x)
        return self.classifier(h), self.to_mean(h), self.to_log_var(h)

    def decode(self, z: Array, gate: Array | None) -> Array:
        masks = gate_masks(self.widths, self.gate_rows, self.gate_prop, self.gate_seed)
        h = z
        for i, layer in enumerate(self.decoder):
            a = layer(h)
            if masks:
                assert gate is not None        # gate_rows > 0: the callers give the gate
                a = a * (gate @ jnp.asarray(masks[i]))
            h = nn.relu(a)
        return self.to_data(h)

    def modes(self) -> tuple[Array, Array]:
        """The prior's ``(means, log_vars)``, ``[num_modes, latent]`` each."""
        if not self.num_modes:
            raise ValueError("this FeedbackVAE has no prior modes (num_modes=0: a standard "
                             "normal prior)")
        return self.mode_means, self.mode_log_vars


def feedback_vae(widths: Sequence[int], *, num_outputs: int, num_heads: int,
                 example_shape: Sequence[int], latent: int = 100, gate_rows: int = 0,
                 gate_prop: float = 0.0, gate_seed: int = 0, conditional: bool = True,
                 log_var_bias: bool = False) -> FeedbackVAE:
    """A :class:`FeedbackVAE` on examples of ``example_shape`` (flattened), with a prior mode
    per output unit (``num_heads · num_outputs``: the classes of Task- and Class-IL, the shared
    labels of Domain-IL) when ``conditional``, none otherwise; ``log_var_bias``: a bias on the
    log-variance layer (replay through feedback's code has one, BI-R's none)."""
    return FeedbackVAE(tuple(widths), num_outputs, num_heads,
                       int(math.prod(example_shape)),
                       num_heads * num_outputs if conditional else 0, latent,
                       gate_rows, gate_prop, gate_seed, log_var_bias)


# the MLP options the feedback network does not carry, each with the MLP's own default
_NOT_CARRIED = {f.name: f.default for f in dataclasses.fields(MLP)
                if f.name in ("kernel_init", "kernel_stddev", "bias_init", "dropout", "use_bias",
                              "feature_encoding")}


def feedback_network(method: str, base: Model, spec: StreamSpec, **options: Any) -> Model:
    """The configured MLP ``base`` rebuilt as a :class:`FeedbackVAE` for the stream ``spec``:
    its widths are the encoder's (reversed, the decoder's) and its output layer the classifier;
    ``options`` go to :func:`feedback_vae`. ``method`` names the caller in the error raised for
    any other model."""
    if not isinstance(base.module, MLP):
        raise ValueError(f"{method} builds its network from the configured MLP (model kind "
                         f"'mlp': its widths are the encoder's); got {type(base.module).__name__}")
    dropped = {name: getattr(base.module, name) for name, default in _NOT_CARRIED.items()
               if getattr(base.module, name) != default}
    if dropped:
        raise ValueError(f"{method} builds its network with flax's default layers (LeCun normal "
                         f"weights, zero biases, no dropout); the MLP's {dropped} would not be "
                         f"carried: leave them at their defaults")
    return as_model(feedback_vae(base.module.widths, num_outputs=spec.num_outputs,
                                 num_heads=spec.num_heads, example_shape=spec.example_shape,
                                 **options))


class FeedbackPass(NamedTuple):
    """One pass of a :class:`FeedbackVAE` (:func:`feedback_pass`)."""
    heads: Array      # every head's logits [B, H, C]
    decoded: Array    # the decoder's output [B, D] (a Gaussian mean or Bernoulli logits)
    inputs: Array     # the inputs, flattened [B, D]
    z: Array          # the latent drawn [B, latent]
    mean: Array       # q(z | x)'s mean [B, latent]
    log_var: Array    # q(z | x)'s log-variance [B, latent]


def feedback_pass(module: nn.Module, params: Params, x: Array, key: PRNGKey,
                  gate: Array | None = None) -> FeedbackPass:
    """Encode ``x`` ``[B, *example]``, draw one z = μ + σ ⊙ ε with ``key`` (the
    reparameterisation of Kingma & Welling 2014, Eq. 10) and decode it through ``gate`` (None
    for a network without gates): the pass both replay-through-feedback methods train on (van de
    Ven & Tolias 2018; van de Ven, Siegelmann & Tolias 2020)."""
    if not isinstance(module, FeedbackVAE):
        raise TypeError(f"module must be a FeedbackVAE (feedback_vae(...)); got "
                        f"{type(module).__name__}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != module.data_dim:
        raise ValueError(f"x has {flat.shape[1]} features per example; the network takes "
                         f"{module.data_dim}")
    logits, mean, log_var = cast(tuple[Array, Array, Array],
                                 module.apply({"params": params}, flat, method="encode"))
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
    decoded = cast(Array, module.apply({"params": params}, z, gate, method="decode"))
    heads = logits.reshape(x.shape[0], module.num_heads, module.num_outputs)
    return FeedbackPass(heads, decoded, flat, z, mean, log_var)


__all__ = ["FeedbackPass", "FeedbackVAE", "feedback_network", "feedback_pass", "feedback_vae",
           "gate_masks"]

"""The variational autoencoder of generative replay (Kingma & Welling 2014), as van de Ven et al.
train it beside the classifier (van de Ven & Tolias 2019; van de Ven, Siegelmann & Tolias 2020;
code GMvandeVen/continual-learning, ``models/vae.py``).

Fully connected, no normalisation layers: the encoder ``D → widths… (ReLU) → (μ, log σ²)`` of
``latent`` units (the log-variance layer without a bias, as theirs), the decoder
``latent → reversed(widths)… (ReLU) → D``, and a standard normal prior. Two likelihoods:

* ``"bernoulli"`` — data in [0, 1] (MNIST pixels, unnormalised): the decoder's output is the
  logit of each pixel's mean, the reconstruction term the binary cross-entropy, and a generated
  example is the mean (sigmoid of the logits; no pixel-level sampling, as theirs);
* ``"gaussian"`` — unbounded data (normalised features): the output is the mean itself and the
  reconstruction term ``½‖x − x̂‖²`` (the negative log-density of N(x̂, I) without its constant).

Their loss (``VAE.loss_function``), per example, is the negative ELBO divided by D:

    ℓ(x) = [ −log p(x | z) + KL(N(μ(x), σ²(x)) ‖ N(0, I)) ] / D,   z = μ + σ ⊙ ε, ε ~ N(0, I),

with the KL in closed form, ½ Σ_j (σ²_j + μ²_j − 1 − log σ²_j) — :func:`negative_elbo`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.types import Array, Params, PRNGKey
from cljax.validation import check_choice

LIKELIHOODS = ("bernoulli", "gaussian")


def check_widths(widths: Sequence[int], owner: str) -> None:
    """``widths`` is a non-empty sequence of positive ints; the error names ``owner``."""
    if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
        raise ValueError(f"{owner} widths must be a non-empty list of positive ints; got "
                         f"{list(widths)}")


class VAE(nn.Module):
    """The VAE of the module docstring on flat inputs of ``data_dim`` features. Apply with
    ``method="encode"`` (x ``[B, D]`` → μ, log σ² ``[B, latent]``) or ``method="decode"``
    (z → ``[B, D]``: logits for a Bernoulli likelihood, means for a Gaussian one)."""

    data_dim: int
    widths: Sequence[int] = (400, 400)
    latent: int = 100

    def __post_init__(self):
        for name, v in (("data_dim", self.data_dim), ("latent", self.latent)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"VAE {name} must be a positive int; got {v!r}")
        check_widths(self.widths, "VAE")
        super().__post_init__()

    def setup(self) -> None:
        self.encoder = [nn.Dense(w) for w in self.widths]
        self.to_mean = nn.Dense(self.latent)
        self.to_log_var = nn.Dense(self.latent, use_bias=False)
        self.decoder = [nn.Dense(w) for w in reversed(tuple(self.widths))]
        self.to_data = nn.Dense(self.data_dim)

    def encode(self, x: Array) -> tuple[Array, Array]:
        h = x
        for layer in self.encoder:
            h = nn.relu(layer(h))
        return self.to_mean(h), self.to_log_var(h)

    def decode(self, z: Array) -> Array:
        h = z
        for layer in self.decoder:
            h = nn.relu(layer(h))
        return self.to_data(h)

    def __call__(self, x: Array, eps: Array) -> Array:
        mean, log_var = self.encode(x)
        return self.decode(mean + jnp.exp(0.5 * log_var) * eps)


def make_vae(example_shape: Sequence[int], widths: Sequence[int] = (400, 400),
             latent: int = 100) -> VAE:
    """A :class:`VAE` on examples of ``example_shape`` (flattened)."""
    return VAE(data_dim=int(math.prod(example_shape)), widths=tuple(widths), latent=latent)


def init_vae(vae: VAE, key: PRNGKey) -> Params:
    """Fresh parameters of ``vae`` (flax's default initialisers)."""
    x = jnp.zeros((1, vae.data_dim), jnp.float32)
    return vae.init(key, x, jnp.zeros((1, vae.latent), jnp.float32))["params"]


def _check_likelihood(likelihood: str) -> None:
    check_choice(likelihood, LIKELIHOODS, name="likelihood")


def gaussian_kl_standard(mean: Array, log_var: Array) -> Array:
    """KL(N(mean, exp(log_var)) ‖ N(0, I)) per row: ½ Σ_j (σ²_j + μ²_j − 1 − log σ²_j)."""
    return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, axis=-1)


def log_normal_diag(z: Array, mean: Array, log_var: Array) -> Array:
    """log N(z; mean, diag(exp(log_var))) summed over the last axis (with its −½ log 2π)."""
    return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var
                          + jnp.square(z - mean) * jnp.exp(-log_var), axis=-1)


def reconstruction_nll(out: Array, x: Array, likelihood: str) -> Array:
    """−log p(x | z) per row, summed over the D features (Gaussian: without its constant):
    Bernoulli with logits ``out`` (the binary cross-entropy, softplus(l) − x·l, for x in [0, 1]),
    or Gaussian with mean ``out`` and unit variance (½‖x − out‖²)."""
    _check_likelihood(likelihood)
    if likelihood == "bernoulli":
        return jnp.sum(jax.nn.softplus(out) - x * out, axis=-1)
    return 0.5 * jnp.sum(jnp.square(x - out), axis=-1)


def negative_elbo(vae: VAE, params: Params, x: Array, key: PRNGKey, *,
                  likelihood: str = "bernoulli") -> Array:
    """Per example of ``x`` (``[B, ...]``, flattened to ``[B, D]``), one-sample negative ELBO
    divided by D (the module docstring: van de Ven et al.'s scaling), ``[B]``; ε drawn from
    ``key`` as ``jax.random.normal(key, (B, latent))``."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != vae.data_dim:
        raise ValueError(f"x has {flat.shape[1]} features per example; the VAE takes "
                         f"{vae.data_dim}")
    mean, log_var = cast(tuple[Array, Array], vae.apply({"params": params}, flat, method="encode"))
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    out = cast(Array, vae.apply({"params": params}, mean + jnp.exp(0.5 * log_var) * eps,
                                method="decode"))
    total = reconstruction_nll(out, flat, likelihood) + gaussian_kl_standard(mean, log_var)
    return total / vae.data_dim


def generate(vae: VAE, params: Params, key: PRNGKey, n: int, *,
             likelihood: str = "bernoulli") -> Array:
    """``n`` examples ``[n, D]`` from the prior: z ~ N(0, I), the decoder's mean of x (the
    sigmoid of its logits for a Bernoulli likelihood)."""
    _check_likelihood(likelihood)
    z = jax.random.normal(key, (n, vae.latent), jnp.float32)
    out = cast(Array, vae.apply({"params": params}, z, method="decode"))
    return jax.nn.sigmoid(out) if likelihood == "bernoulli" else out


__all__ = ["VAE", "check_widths", "LIKELIHOODS", "make_vae", "init_vae", "gaussian_kl_standard", "log_normal_diag",
           "reconstruction_nll", "negative_elbo", "generate"]

"""Pre-trained frozen feature extractors: the cached CIFAR-10 pre-training of van de Ven et al. 2022.

Their CIFAR-100 protocol trains only fully connected layers, on top of convolutional layers
pre-trained on CIFAR-10 and frozen (``main_pretrain.py``: :class:`cljax.nn.encoder.EncoderClassifier`,
Adam lr 1e-4, batch 256, 100 epochs, random 32×32 crops of the image padded by 4 (symmetric) and
horizontal flips, CIFAR-10's normalisation). With the convolutions frozen, every image's
features are fixed: :func:`encode_stream` computes them once and the continual-learning run
trains an MLP on 1024-dimensional features (seconds per task instead of hours).

:func:`pretrained_encoder` is the cached step: the encoder's variables are saved under
``cache_dir`` in a file named by a hash of every setting that changes them, loaded when present,
trained otherwise. As theirs, the encoder trains on the whole training split and its accuracy
is reported on the dataset's test split (``test_accuracy``); ``holdout`` > 0 keeps the last
``holdout`` training images out of the training and reports their accuracy too (the encoders
cached before CIFAR-10's test split was available used ``holdout=5000``; the setting is part of
the cache's name, so that encoder is found again with it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import cast

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.data.augment import random_crop_flip
from cljax.data.sources import load_split
from cljax.data.streams import NORMALISATION, TaskArrays, TaskStream
from cljax.nn.encoder import ConvEncoder, EncoderClassifier
from cljax.types import Array
from cljax.validation import check_positive_int
from cljax.workdir import write_bytes_atomic


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Every setting of the pre-training (defaults: van de Ven et al. 2022)."""

    dataset: str = "cifar10"
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-4
    widths: tuple[int, ...] = (2000, 2000)
    channels: int = 16
    depth: int = 5
    augment: bool = True
    holdout: int = 0
    seed: int = 0

    def tag(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _normalise(images: Array, dataset: str) -> Array:
    mean, std = (jnp.asarray(v, jnp.float32) for v in NORMALISATION[dataset])
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def train_encoder(config: PretrainConfig, *, data_dir: str | None = None,
                  log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Pre-train :class:`EncoderClassifier` on ``config.dataset``; returns the encoder's variables
    (``{"params", "batch_stats"}`` of the ``encoder`` submodule) and a report (accuracies, time)."""
    check_positive_int(config.epochs, name="epochs")
    check_positive_int(config.batch_size, name="batch_size")
    if not isinstance(config.holdout, int) or isinstance(config.holdout, bool) \
            or config.holdout < 0:
        raise ValueError(f"holdout must be an int >= 0; got {config.holdout!r}")
    train = load_split(config.dataset, "train", data_dir=data_dir)
    test = load_split(config.dataset, "test", data_dir=data_dir)
    n = len(train.labels) - config.holdout
    if n < config.batch_size:
        raise ValueError(f"holdout={config.holdout} leaves {n} training images, fewer than a batch")
    x_tr = jnp.asarray(train.images[:n])
    y_tr = jnp.asarray(train.labels[:n])
    x_ho, y_ho = train.images[n:], train.labels[n:]
    model = EncoderClassifier(train.num_classes, config.widths, config.channels, config.depth)
    key = jax.random.key(config.seed)
    k_init, k_run = jax.random.split(key)
    variables = model.init(k_init, jnp.zeros((2,) + x_tr.shape[1:]), train=False)
    tx = optax.adam(config.learning_rate)
    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)
    steps = n // config.batch_size   # drop_last, as their loader

    def step(carry, idx):
        params, stats, opt, k = carry
        k, k_aug = jax.random.split(k)
        x = x_tr[idx]
        if config.augment:
            x = random_crop_flip(x, k_aug, mode="symmetric")
        x = _normalise(x, config.dataset)

        def loss(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y_tr[idx]).mean(), new

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), new["batch_stats"], opt, k), value

    @jax.jit
    def epoch(params, stats, opt, key):
        k_perm, k_steps = jax.random.split(key)
        order = jax.random.permutation(k_perm, n)[:steps * config.batch_size]
        (params, stats, opt, _), losses = jax.lax.scan(
            step, (params, stats, opt, k_steps), order.reshape(steps, config.batch_size))
        return params, stats, opt, jnp.mean(losses)

    @jax.jit
    def predict(params, stats, x):
        return jnp.argmax(cast(Array, model.apply({"params": params, "batch_stats": stats},
                                                  _normalise(x, config.dataset))), -1)

    def accuracy(params, stats, x, y, chunk=1000):
        hits = sum(int(jnp.sum(predict(params, stats, jnp.asarray(x[i:i + chunk]))
                               == jnp.asarray(y[i:i + chunk]))) for i in range(0, len(y), chunk))
        return hits / max(len(y), 1)

    t0 = time.perf_counter()
    losses = []
    for e in range(config.epochs):
        params, stats, opt, loss = epoch(params, stats, opt, jax.random.fold_in(k_run, e))
        losses.append(float(loss))
        if e == 0 or (e + 1) % max(1, config.epochs // 10) == 0 or e + 1 == config.epochs:
            acc = accuracy(params, stats, test.images, test.labels)
            log(f"pretrain {config.dataset} epoch {e + 1}/{config.epochs}: loss {loss:.4f}, "
                f"test accuracy {100 * acc:.2f} % ({time.perf_counter() - t0:.0f} s)")
    report = {"config": dataclasses.asdict(config), "train_loss_per_epoch": losses,
              "test_accuracy": accuracy(params, stats, test.images, test.labels),
              "holdout_accuracy": accuracy(params, stats, x_ho, y_ho) if len(y_ho) else None,
              "train_accuracy_first_5000": accuracy(params, stats, train.images[:5000],
                                                    train.labels[:5000]),
              "seconds": time.perf_counter() - t0}
    encoder = {"params": params["encoder"], "batch_stats": stats["encoder"]}
    return jax.device_get(encoder), report


def pretrained_encoder(config: PretrainConfig, *, cache_dir: str | os.PathLike,
                       data_dir: str | None = None, log: Callable[[str], None] = print
                       ) -> tuple[dict, dict]:
    """The encoder of ``config``, from ``cache_dir`` if it was trained before, else trained now
    and saved there (``encoder_<tag>.msgpack`` and ``encoder_<tag>.json``, the report)."""
    cache = pathlib.Path(cache_dir)
    weights = cache / f"encoder_{config.tag()}.msgpack"
    report_path = weights.with_suffix(".json")
    template = ConvEncoder(config.channels, config.depth).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    if weights.is_file() and report_path.is_file():
        try:
            variables = flax.serialization.from_bytes(template, weights.read_bytes())
        except Exception as e:
            raise ValueError(f"the cached encoder {weights} cannot be read ({e}); delete it to "
                             f"train it again") from e
        log(f"pretrained encoder loaded from {weights}")
        return variables, json.loads(report_path.read_text())
    log(f"pre-training the encoder ({config}); it will be cached in {weights}")
    variables, report = train_encoder(config, data_dir=data_dir, log=log)
    cache.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(weights, flax.serialization.to_bytes(variables))
    report_path.write_text(json.dumps(report, indent=1))
    return variables, report


def encode_stream(stream: TaskStream, variables: dict, *, dataset: str,
                  channels: int = 16, depth: int = 5, chunk: int = 1000) -> TaskStream:
    """``stream`` with every image replaced by the frozen encoder's features (float32
    ``[T, N, features]``, mean 0 / std 1 as stored: the images are normalised with ``dataset``'s
    statistics before encoding)."""
    encoder = ConvEncoder(channels, depth)

    @jax.jit
    def encode(x):
        return encoder.apply(variables, _normalise(x, dataset))

    def encode_split(arrays: TaskArrays) -> TaskArrays:
        t, n = arrays.y.shape
        flat = arrays.x.reshape((t * n,) + arrays.x.shape[2:])
        feats = np.concatenate([np.asarray(encode(jnp.asarray(flat[i:i + chunk])))
                                for i in range(0, len(flat), chunk)])
        return TaskArrays(feats.reshape(t, n, -1), arrays.y, arrays.n)

    return dataclasses.replace(stream, name=f"{stream.name}_features",
                               train=encode_split(stream.train), test=encode_split(stream.test),
                               mean=(0.0,), std=(1.0,))


__all__ = ["PretrainConfig", "train_encoder", "pretrained_encoder",
           "encode_stream"]

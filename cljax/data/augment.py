"""Image augmentation of a training batch, inside the jitted step: random crops of the padded
images and random horizontal flips (the CIFAR recipe of He et al. 2016, §4.2: 4 pixels padded on
each side, a random 32×32 crop, a random flip; torchvision's ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip``).

:data:`AUGMENTATIONS` names what a config's ``augment`` may say; :func:`augment_images` applies
one to ``[B, H, W, C]`` images with an explicit key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.types import Array
from cljax.validation import check_choice

AUGMENTATIONS = ("none", "crop_flip")
"""``"none"``: the images as they are; ``"crop_flip"``: :func:`random_crop_flip`."""

PAD_MODES = ("constant", "symmetric")


def random_crop_flip(images: Array, key: Array, *, pad: int = 4, mode: str = "constant") -> Array:
    """Each image padded by ``pad`` pixels per side (``mode``: ``"constant"`` zeros, as
    torchvision's default; ``"symmetric"``, mirrored), cropped back to its size at a uniform
    random offset, and flipped left–right with probability ½; ``images`` is ``[B, H, W, C]``."""
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C]; got shape {images.shape}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0 (pixels per side); got {pad!r}")
    check_choice(mode, PAD_MODES, name="mode")
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    k_y, k_x, k_f = jax.random.split(key, 3)
    ys = jax.random.randint(k_y, (b,), 0, 2 * pad + 1)
    xs = jax.random.randint(k_x, (b,), 0, 2 * pad + 1)
    crops = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c)))(
        padded, ys, xs)
    flip = jax.random.bernoulli(k_f, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def augment_images(images: Array, key: Array, augment: str) -> Array:
    """``images`` under the augmentation named ``augment`` (:data:`AUGMENTATIONS`)."""
    check_choice(augment, AUGMENTATIONS, name="augment")
    if augment == "none":
        return images
    if jnp.ndim(images) != 4:
        raise ValueError(f"augment={augment!r} needs image batches [B, H, W, C]; got shape "
                         f"{jnp.shape(images)}")
    return random_crop_flip(images, key)


__all__ = ["AUGMENTATIONS", "PAD_MODES", "random_crop_flip", "augment_images"]

"""Load a tensorflow-datasets image-classification dataset into numpy arrays, once.

Reads through ``tfds.data_source`` (array_record; TensorFlow is never imported). The data dir is,
in order: the ``data_dir`` argument, ``$TFDS_DATA_DIR``, tfds' default (``~/tensorflow_datasets``).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np


class ArrayDataset(NamedTuple):
    """Images ``uint8 [N, H, W, C]`` and integer labels ``int32 [N]`` of one split."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
    """The explicit ``data_dir``, else ``$TFDS_DATA_DIR``, else None (tfds' default)."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or None


def load_split(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               download: bool = False) -> ArrayDataset:
    """Read every example of ``name``/``split`` into arrays (features ``image`` and ``label``).

    Raises a ``FileNotFoundError`` naming the searched directory when the dataset is not prepared
    there (and ``download`` is off or fails), and a ``ValueError`` for an unknown dataset name or
    a dataset without ``image``/``label`` features.
    """
    import tensorflow_datasets as tfds  # deferred: importing tfds costs ~1 s

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a tfds dataset name such as 'mnist'; got {name!r}")
    data_dir = resolve_data_dir(data_dir)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"unknown tfds dataset {name!r}") from e
    except (AssertionError, FileNotFoundError, KeyError, OSError, RuntimeError, ValueError) as e:
        where = data_dir or os.path.expanduser("~/tensorflow_datasets")
        raise FileNotFoundError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared under {where!r}"
            f"{' and could not be downloaded' if download else ''}. Point TFDS_DATA_DIR or "
            f"data_dir at a directory holding '{name}/<version>/' in array_record format, or "
            f"prepare it on a machine with internet: `tfds build {name} "
            f"--file_format=array_record --data_dir=DIR`. ({type(e).__name__}: {e})") from e
    first = source[0]
    if "image" not in first or "label" not in first:
        raise ValueError(f"dataset {name!r} must have 'image' and 'label' features; "
                         f"has {sorted(first)}")
    try:  # one batched read of the array_record file
        examples = source.__getitems__(list(range(len(source))))
    except (TypeError, AttributeError):  # sources without a batched read (tfds' mock)
        examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    try:
        num_classes = int(source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        num_classes = int(labels.max()) + 1
    return ArrayDataset(images, labels, num_classes)


__all__ = ["ArrayDataset", "load_split", "resolve_data_dir"]

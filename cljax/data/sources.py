"""Load a tensorflow-datasets image-classification dataset into numpy arrays, once.

Reads through ``tfds.data_source`` (array_record; TensorFlow is never imported). The data dir is,
in order: the ``data_dir`` argument, ``$TFDS_DATA_DIR``, tfds' default (``~/tensorflow_datasets``).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np


class CorruptDataError(RuntimeError):
    """A prepared tfds dataset whose files cannot be read (a truncated, corrupt or missing
    array_record shard). The message names the dataset, the split, the data dir, the file when
    it is known, and how to rebuild the dataset."""


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
    there (and ``download`` is off or fails), a :class:`CorruptDataError` naming the dataset,
    split, data dir and file when a prepared file cannot be read (truncated, corrupt, missing
    shard) and how to rebuild it, and a ``ValueError`` for an unknown dataset name or a dataset
    without ``image``/``label`` features.
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
        cause = (f"{type(e).__name__}: {' '.join(str(e).split())}"
                 if os.path.isdir(os.path.join(where, name)) else
                 f"there is no '{name}/' directory there")
        raise FileNotFoundError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared under {where!r}"
            f"{' and could not be downloaded' if download else ''} ({cause}). Point "
            f"TFDS_DATA_DIR or --data-dir / data_dir at a directory holding '{name}/<version>/' "
            f"in array_record format, or prepare it on a machine with internet: `tfds build "
            f"{name} --file_format=array_record --data_dir=DIR`.") from e
    shards = _shards(source, split)
    examples = _read_all(source, shards, name=name, split=split, data_dir=data_dir)
    if not examples:
        raise ValueError(f"tfds dataset {name!r} split {split!r} has no examples")
    first = examples[0]
    if "image" not in first or "label" not in first:
        raise ValueError(f"dataset {name!r} must have 'image' and 'label' features; "
                         f"has {sorted(first)}")
    images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    try:
        num_classes = int(source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        num_classes = int(labels.max()) + 1
    return ArrayDataset(images, labels, num_classes)


def _shards(source, split: str) -> list[tuple[str | None, int, int]]:
    """(file, first index, end index) of each shard of the split, in the source's order; one
    ``(None, 0, len)`` when the files are not known (tfds' mock)."""
    try:
        instructions = source.dataset_info.splits[split].file_instructions
        out, start = [], 0
        for ins in instructions:
            out.append((os.fspath(ins.filename), start, start + int(ins.take)))
            start += int(ins.take)
        if out and start == len(source):
            return out
    except Exception:
        pass
    return [(None, 0, len(source))]


def _read_all(source, shards, *, name: str, split: str, data_dir: str | None) -> list:
    """Every example, one batched read per shard, so a failing read names its file."""
    examples = []
    for path, start, end in shards:
        if path is not None and not os.path.exists(path):
            raise _corrupt(source, name, split, data_dir, path, "the file is missing")
        keys = list(range(start, end))
        try:
            try:  # one batched read of the array_record file
                examples += source.__getitems__(keys)
            except (TypeError, AttributeError):  # sources without a batched read (tfds' mock)
                examples += [source[i] for i in keys]
        except (RuntimeError, OSError, ValueError, IndexError) as e:  # Riegeli: RuntimeError
            raise _corrupt(source, name, split, data_dir, path,
                           f"{type(e).__name__}: {e}") from e
    return examples


def _corrupt(source, name: str, split: str, data_dir: str | None, path: str | None,
             cause: str) -> CorruptDataError:
    root = os.path.abspath(data_dir or os.path.expanduser("~/tensorflow_datasets"))
    try:
        version_dir = os.fspath(source.dataset_info.data_dir)
    except Exception:
        version_dir = os.path.join(root, name)
    what = f"file {os.path.abspath(path)!r}" if path else f"the files in {version_dir!r}"
    return CorruptDataError(
        f"tfds dataset {name!r} (split {split!r}, data dir {root!r}) is corrupt or incomplete: "
        f"cannot read {what} ({' '.join(cause.split())}). Rebuild it on a machine with "
        f"internet and TensorFlow: `tfds build {name} --file_format=array_record "
        f"--data_dir={root} --overwrite`, or point TFDS_DATA_DIR / --data-dir at a good copy.")


__all__ = ["ArrayDataset", "CorruptDataError", "load_split", "resolve_data_dir"]

import numpy as np
import pytest
from helpers import tiny_dataset

from cljax.data import (
    mirzadeh_rotation_angles,
    permutations,
    permuted_tasks,
    rotate_images,
    rotated_tasks,
    split_tasks,
)


def test_split_partitions_classes_and_relabels_within_task():
    train, test = tiny_dataset(seed=0), tiny_dataset(seed=1)
    s = split_tasks(train, test, tasks=[[3, 1], [0, 2]])
    assert s.classes == ((3, 1), (0, 2))
    for t, cls in enumerate(s.classes):
        n = s.train.n[t]
        assert n == sum((train.labels == c).sum() for c in cls)
        # every stored example is one of the task's classes, with label = position in the task
        originals = [train.images[train.labels == c] for c in cls]
        for i in range(n):
            local = s.train.y[t, i]
            assert any(np.array_equal(s.train.x[t, i], im) for im in originals[local])
    assert s.train.x.shape[:2] == s.train.y.shape


def test_split_default_pairs_and_bad_partitions():
    train = tiny_dataset()
    assert split_tasks(train, train).classes == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match="share classes"):
        split_tasks(train, train, tasks=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="outside"):
        split_tasks(train, train, tasks=[[0, 7]])


def test_permutations_are_bijections_fixed_per_seed():
    p = permutations(4, 50, seed=3)
    for row in p:
        assert np.array_equal(np.sort(row), np.arange(50))
    assert np.array_equal(p, permutations(4, 50, seed=3))
    assert not np.array_equal(p, permutations(4, 50, seed=4))
    assert not np.array_equal(p[0], np.arange(50))
    q = permutations(4, 50, seed=3, permute_first=False)
    assert np.array_equal(q[0], np.arange(50))


def test_permuted_tasks_pad_and_permute():
    train = tiny_dataset(size=6)
    s = permuted_tasks(train, train, num_tasks=3, seed=1, pad_to=8)
    assert s.train.x.shape == (3, len(train.labels), 64)
    padded = np.pad(train.images, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(len(train.labels), -1)
    perms = permutations(3, 64, seed=1)
    for t in range(3):
        np.testing.assert_array_equal(s.train.x[t], padded[:, perms[t]])
        np.testing.assert_array_equal(s.train.y[t], train.labels)
    assert s.classes[2] == tuple(range(8, 12))
    with pytest.raises(ValueError, match="pad_to"):
        permuted_tasks(train, train, pad_to=4)


def test_rotation_angles_and_images():
    train = tiny_dataset(size=6)
    s = rotated_tasks(train, train, angles=[0, 90, 180])
    np.testing.assert_array_equal(s.train.x[0], train.images)
    np.testing.assert_array_equal(s.train.x[1], np.rot90(train.images, k=1, axes=(1, 2)))
    np.testing.assert_array_equal(s.train.x[2], np.rot90(train.images, k=2, axes=(1, 2)))
    angles = mirzadeh_rotation_angles(5, seed=0)
    for t, a in enumerate(angles):
        assert t * 10 - 10 <= a <= t * 10
    assert np.array_equal(angles, mirzadeh_rotation_angles(5, seed=0))
    assert rotate_images(train.images, 45).dtype == np.uint8
    with pytest.raises(ValueError, match="angles"):
        rotated_tasks(train, train, angles=[])

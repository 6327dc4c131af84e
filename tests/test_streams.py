import numpy as np
import pytest
from helpers import tiny_dataset

from cljax.data import (
    ArrayDataset,
    carve_validation,
    check_normalisation,
    make_scenario,
    mirzadeh_rotation_angles,
    permutations,
    permuted_tasks,
    rotate_images,
    rotated_tasks,
    split_tasks,
)
from cljax.training.data import make_batch, prepare_data


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


def test_split_pads_before_normalising():
    """Hsu et al.'s MNIST input: zero-padded to 32×32, then (pixels/255 − 0.1) / 0.2752; the
    padding becomes −0.1/0.2752 after normalising, the original pixels sit in the centre."""
    train = tiny_dataset(size=6)
    s = split_tasks(train, train, tasks=[[0, 1], [2, 3]], pad_to=10,
                    normalisation=[[0.1], [0.2752]])
    assert (s.mean, s.std) == ((0.1,), (0.2752,))
    assert s.input_shape == (10, 10, 1)
    plain = split_tasks(train, train, tasks=[[0, 1], [2, 3]])
    for t in range(2):
        n = int(s.train.n[t])
        np.testing.assert_array_equal(s.train.x[t, :n, 2:8, 2:8], plain.train.x[t, :n])
        assert not s.train.x[t, :n, :2].any() and not s.train.x[t, :n, 8:].any()
        assert not s.train.x[t, :n, :, :2].any() and not s.train.x[t, :n, :, 8:].any()
    data = prepare_data(s, make_scenario(s, "task"))
    idx = np.arange(4)
    batch = make_batch(data, data.train, np.zeros(4, np.int32), idx)
    expected = (np.pad(plain.train.x[0, :4], ((0, 0), (2, 2), (2, 2), (0, 0))) / 255.0
                - 0.1) / 0.2752
    np.testing.assert_allclose(np.asarray(batch["x"]), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the images"):
        split_tasks(train, train, pad_to=4)
    with pytest.raises(ValueError, match="pad_to must be a positive int"):
        split_tasks(train, train, pad_to=10.0)


def test_check_normalisation_names_what_is_wrong():
    assert check_normalisation([[0.5], [2]], 3) == ((0.5,), (2.0,))
    assert check_normalisation(((0, 1, 2), (1, 1, 1)), 3) == ((0.0, 1.0, 2.0), (1.0, 1.0, 1.0))
    for bad, match in ((0.5, "must be a pair"), (((0.1,), ("a",)), "must be a pair"),
                       (((0.1, 0.2), (1.0,)), "one mean and one std"),
                       (((0.1, 0.2), (1.0, 1.0)), "one per channel \\(3\\)"),
                       (((0.1,), (0.0,)), "> 0"), (((float("nan"),), (1.0,)), "finite")):
        with pytest.raises(ValueError, match=match):
            check_normalisation(bad, 3)
    train = tiny_dataset()
    with pytest.raises(ValueError, match="> 0"):
        split_tasks(train, train, normalisation=((0.0,), (-1.0,)))


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


def test_carve_validation_holds_out_the_last_share_of_every_class():
    labels = np.array([0, 1, 0, 0, 1, 2, 2, 0, 1, 2, 2, 2], np.int32)
    images = np.arange(labels.size, dtype=np.uint8).reshape(-1, 1, 1, 1)
    train, val = carve_validation(ArrayDataset(images, labels, 3), 0.25)
    # class 0: rows 0,2,3,7 -> ceil(1.0)=1 held (row 7); class 1: rows 1,4,8 -> 1 held (8);
    # class 2: rows 5,6,9,10,11 -> ceil(1.25)=2 held (10, 11)
    assert val.images.ravel().tolist() == [7, 8, 10, 11]
    assert train.images.ravel().tolist() == [0, 1, 2, 3, 4, 5, 6, 9]
    assert train.labels.tolist() == labels[[0, 1, 2, 3, 4, 5, 6, 9]].tolist()
    assert train.num_classes == val.num_classes == 3
    for bad in (0.0, 1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="validation_fraction must be a number in"):
            carve_validation(ArrayDataset(images, labels, 3), bad)
    with pytest.raises(ValueError, match="leaves class 1 .* nothing to train on"):
        carve_validation(ArrayDataset(images[:3], labels[:3], 3), 0.5)


def test_a_validation_stream_never_reads_the_test_split(monkeypatch):
    import cljax.data.streams as streams

    read = []

    def instrumented(name, split, **kw):
        read.append(split)
        if split == "test":
            raise AssertionError("the test split was read")
        return tiny_dataset(n=40, num_classes=4)

    monkeypatch.setattr(streams, "load_split", instrumented)
    stream = streams.load_stream("mnist", "split", evaluate_on="validation",
                                 validation_fraction=0.2, tasks=[[0, 1], [2, 3]])
    assert read == ["train"]
    assert int(stream.train.n.sum()) + int(stream.test.n.sum()) == 40
    counts = np.bincount(tiny_dataset(n=40, num_classes=4).labels, minlength=4)
    assert int(stream.test.n.sum()) == int(np.ceil(0.2 * counts).sum())
    with pytest.raises(ValueError, match="evaluate_on must be one of"):
        streams.load_stream("mnist", "split", evaluate_on="train")


def test_class_order_deals_a_permutation_of_the_classes_into_the_tasks():
    train, test = tiny_dataset(n=80, num_classes=6), tiny_dataset(n=40, num_classes=6, seed=1)
    natural = split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]])
    assert natural.classes == ((0, 1), (2, 3), (4, 5))
    a = split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]], class_order=3)
    b = split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]], class_order=3)
    c = split_tasks(train, test, tasks=[[0, 1], [2, 3], [4, 5]], class_order=4)
    perm = np.random.default_rng(3).permutation([0, 1, 2, 3, 4, 5]).tolist()
    assert a.classes == (tuple(perm[0:2]), tuple(perm[2:4]), tuple(perm[4:6]))
    assert a.classes == b.classes and a.classes != c.classes
    first = a.classes[0]                       # task 0's examples are of its two classes
    n = int(a.train.n[0])
    expected = np.sort(np.flatnonzero(np.isin(train.labels, first)))
    np.testing.assert_array_equal(a.train.y[0, :n], (train.labels[expected] == first[1]))
    with pytest.raises(ValueError, match="class_order must be None or an int"):
        split_tasks(train, test, class_order="seed")


def test_class_order_deals_only_the_classes_the_tasks_name():
    """A-GEM's protocol keeps its first classes for cross-validation and shuffles the rest."""
    train, test = tiny_dataset(n=80, num_classes=6), tiny_dataset(n=40, num_classes=6, seed=1)
    kept = [[2, 3], [4, 5]]
    for seed in range(5):
        stream = split_tasks(train, test, tasks=kept, class_order=seed)
        assert sorted(c for t in stream.classes for c in t) == [2, 3, 4, 5]
        assert [len(t) for t in stream.classes] == [2, 2]
        perm = np.random.default_rng(seed).permutation([2, 3, 4, 5]).tolist()
        assert stream.classes == (tuple(perm[:2]), tuple(perm[2:]))

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cljax.data import load_split, load_stream


def test_mock_data_loads_into_arrays():
    with tfds.testing.mock_data(num_examples=12):
        d = load_split("mnist", "train")
    assert d.images.shape == (12, 28, 28, 1) and d.images.dtype == np.uint8
    assert d.labels.shape == (12,) and d.num_classes == 10


def test_unprepared_dataset_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_split("mnist", "train", data_dir=tmp_path)


def test_unknown_dataset_and_stream_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tfds dataset"):
        load_split("no_such_dataset_xyz", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="stream kind"):
        load_stream("mnist", "shuffled", data_dir=tmp_path)


def test_data_dir_argument_and_env_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
    with pytest.raises(FileNotFoundError, match="from_env"):
        load_split("mnist", "test")
    with pytest.raises(FileNotFoundError, match="explicit"):
        load_split("mnist", "test", data_dir=tmp_path / "explicit")

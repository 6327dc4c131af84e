import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cljax.data import load_split, load_stream
from cljax.data.sources import CorruptDataError


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


def _shared_mnist() -> pathlib.Path:
    root = os.environ.get("TFDS_DATA_DIR")
    versions = sorted(pathlib.Path(root).glob("mnist/*/dataset_info.json")) if root else []
    if not versions:
        pytest.skip("needs a prepared mnist (array_record) under $TFDS_DATA_DIR to copy and "
                    "corrupt; set TFDS_DATA_DIR (e.g. ../shared/tfds)")
    return versions[-1].parent


def _damaged_copy(tmp_path, damage) -> pathlib.Path:
    """data_dir holding mnist's metadata and a damaged copy of its test shard."""
    src = _shared_mnist()
    dst = tmp_path / "tfds" / "mnist" / src.name
    dst.mkdir(parents=True)
    for f in src.glob("*.json"):
        shutil.copyfile(f, dst / f.name)
    shard = next(src.glob("mnist-test.array_record-*"))
    damage(shard, dst / shard.name)
    return tmp_path / "tfds"


def _truncate(src, dst):
    dst.write_bytes(src.read_bytes()[:100_000])


def _garble(src, dst):
    data = bytearray(src.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, cause", [(_truncate, "Corrupted Riegeli"),
                                           (_garble, "Corrupted Riegeli"),
                                           (lambda src, dst: None, "the file is missing")])
def test_corrupt_shard_names_dataset_split_dir_file_and_the_fix(tmp_path, damage, cause):
    data_dir = _damaged_copy(tmp_path, damage)
    with pytest.raises(CorruptDataError) as info:
        load_split("mnist", "test", data_dir=data_dir)
    msg = str(info.value)
    assert "'mnist'" in msg and "split 'test'" in msg and str(data_dir) in msg
    assert "mnist-test.array_record-00000-of-00001" in msg and cause in msg
    assert f"tfds build mnist --file_format=array_record --data_dir={data_dir}" in msg
    assert "TFDS_DATA_DIR" in msg and "\n" not in msg
    assert isinstance(info.value, RuntimeError)  # what code catching Riegeli's error expects

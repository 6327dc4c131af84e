"""cljax.pretrain: the cached pre-training of a frozen encoder, reported on the test split."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cljax.pretrain import PretrainConfig, pretrained_encoder, train_encoder

TINY = dict(epochs=1, batch_size=16, widths=(8,), channels=4, depth=2, augment=False)


def test_the_encoder_trains_on_the_whole_train_split_and_reports_the_test_split(monkeypatch):
    import cljax.pretrain as pretrain

    reads = []
    real = pretrain.load_split

    def instrumented(name, split, **kw):
        reads.append(split)
        return real(name, split, **kw)

    monkeypatch.setattr(pretrain, "load_split", instrumented)
    logs = []
    with tfds.testing.mock_data(num_examples=48):
        _, report = train_encoder(PretrainConfig(**TINY), log=logs.append)
        _, held = train_encoder(PretrainConfig(**TINY, holdout=16), log=logs.append)
    assert reads == ["train", "test", "train", "test"]
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["holdout_accuracy"] is None
    assert 0.0 <= held["holdout_accuracy"] <= 1.0 and "test accuracy" in logs[0]
    assert PretrainConfig().holdout == 0                   # van de Ven's: all 50,000 images
    assert PretrainConfig(holdout=5000).tag() != PretrainConfig().tag()
    with pytest.raises(ValueError, match="holdout must be an int >= 0"):
        train_encoder(PretrainConfig(**TINY, holdout=-1))


def test_the_encoder_is_cached_by_its_settings(tmp_path):
    with tfds.testing.mock_data(num_examples=48):
        first, report = pretrained_encoder(PretrainConfig(**TINY), cache_dir=tmp_path,
                                           log=lambda _: None)
        again, cached = pretrained_encoder(PretrainConfig(**TINY), cache_dir=tmp_path,
                                           log=lambda _: None)
    assert cached == json.loads(json.dumps(report))
    for a, b in zip(np.asarray(first["params"]["Conv_0"]["kernel"]).ravel(),
                    np.asarray(again["params"]["Conv_0"]["kernel"]).ravel()):
        assert a == b
    assert len(list(tmp_path.glob("encoder_*.msgpack"))) == 1

"""cljax.workdir: the work directory is checked before anything runs; atomic strict-JSON writes."""
import json
import os
import pathlib

import numpy as np
import pytest

from cljax import workdir as wd
from cljax.workdir import WorkdirError

CONFIG = {"method": "ewc", "steps": 10, "model": {"kind": "mlp", "widths": [8]},
          "optimizer": {"name": "adam", "learning_rate": 1e-3}, "data_dir": "/data/a"}


def prepare_workdir(*args, **kwargs):
    """:func:`cljax.workdir.prepare_workdir`, its lock released (one run after the other)."""
    info = wd.prepare_workdir(*args, **kwargs)
    info.pop("lock").release()
    return info


def test_write_json_atomic_is_strict_json(tmp_path):
    obj = {"a": float("nan"), "b": [1.0, float("inf"), -float("inf")],
           "c": np.array([[0.5, np.nan]], np.float32), "d": np.int64(3), "e": (1, 2),
           "f": np.float64(np.nan), "g": np.bool_(True), "h": None, 3: "int key"}
    path = wd.write_json_atomic(tmp_path / "r.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, None], "c": [[0.5, None]], "d": 3,
                                "e": [1, 2], "f": None, "g": True, "h": None, "3": "int key"}
    with pytest.raises(TypeError, match="not JSON-serialisable: object"):
        wd.write_json_atomic(tmp_path / "r.json", {"x": object()})
    assert json.loads(path.read_text())["d"] == 3  # the failed write left the old file


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    wd.write_text_atomic(target, "old")
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the usual permissions, not a temp file's 0o600

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        wd.write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_new_or_empty_directory_is_created_and_gets_config_json(tmp_path):
    info = prepare_workdir(tmp_path / "a" / "b", CONFIG)
    assert info == {"path": tmp_path / "a" / "b", "resume": False}
    assert json.loads((tmp_path / "a" / "b" / "config.json").read_text()) == CONFIG
    assert wd.read_marker(tmp_path / "a" / "b")["wrote"] == [".cljax-lock", ".cljax-run.json",
                                                             "config.json"]
    (tmp_path / "empty").mkdir()
    assert prepare_workdir(tmp_path / "empty", CONFIG)["resume"] is False


def test_unusable_paths_fail_at_once(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="--workdir .* is an existing file"):
        prepare_workdir(tmp_path / "file", CONFIG)
    with pytest.raises(WorkdirError, match="cannot create the directory"):
        prepare_workdir(tmp_path / "file" / "sub", CONFIG)
    if pathlib.Path("/proc/self").is_dir():
        with pytest.raises(WorkdirError, match="'/proc/x': cannot create the directory"):
            prepare_workdir("/proc/x", CONFIG)
    # a directory that exists but cannot be written (root ignores permission bits: simulate)
    real = pathlib.Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".cljax-write-test"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)
    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    with pytest.raises(WorkdirError, match="is not writable .Permission denied"):
        prepare_workdir(tmp_path / "ro", CONFIG)


def test_a_used_directory_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    prepare_workdir(run, CONFIG)
    (run / "results.json").write_text("{}")
    with pytest.raises(WorkdirError, match="not empty .*earlier cljax run.*--resume.*--overwrite"):
        prepare_workdir(run, CONFIG)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirError, match="not a cljax run's directory .it holds notes.txt"):
        prepare_workdir(other, CONFIG)
    # --overwrite never empties a directory that is not a cljax run's
    with pytest.raises(WorkdirError, match="not a cljax run"):
        prepare_workdir(other, CONFIG, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(WorkdirError, match="exclude each other"):
        prepare_workdir(run, CONFIG, resume=True, overwrite=True)


def test_overwrite_removes_every_stale_file_cljax_wrote_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    prepare_workdir(run, {**CONFIG, "sweep": {"strength": [1.0, 2.0]}})
    (run / "stability_plasticity.png").write_bytes(b"png")
    (run / "checkpoints" / "3").mkdir(parents=True)
    (run / "checkpoints" / "3" / "x").write_text("")
    (run / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    wd.record_outputs(run, ["stability_plasticity.png", "checkpoints", "link"])
    (run / "notes.txt").write_text("mine")     # the user's, beside the run
    prepare_workdir(run, CONFIG, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".cljax-lock", ".cljax-run.json",
                                                     "config.json", "notes.txt"]
    assert json.loads((run / "config.json").read_text()) == CONFIG
    assert (tmp_path / "elsewhere").is_dir()  # a link is removed, not followed
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_needs_the_same_config_and_names_the_differing_keys(tmp_path):
    run = tmp_path / "run"
    prepare_workdir(run, CONFIG)
    (run / "checkpoints").mkdir()
    # the data may have moved: data_dir may differ
    assert prepare_workdir(run, {**CONFIG, "data_dir": "/data/b"}, resume=True)["resume"]
    changed = {**CONFIG, "steps": 20, "model": {"kind": "mlp", "widths": [16]},
               "optimizer": {"name": "adam", "learning_rate": 1e-3, "b1": 0.8}}
    with pytest.raises(WorkdirError, match=r"differing keys: model\.widths, optimizer\.b1, "
                                           r"steps\)"):
        prepare_workdir(run, changed, resume=True)
    assert json.loads((run / "config.json").read_text())["steps"] == 10  # left as it was
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "results.json").write_text("{}")
    with pytest.raises(WorkdirError, match="holds no cljax run to resume") as e:
        prepare_workdir(no_config, CONFIG, resume=True)
    assert "--overwrite" not in str(e.value)   # it would refuse that directory too


def test_resume_of_nothing_starts_fresh_and_a_run_that_wrote_only_its_config_counts_as_empty(
        tmp_path):
    assert prepare_workdir(tmp_path / "new", CONFIG, resume=True)["resume"] is False
    # a run that stopped before writing anything but config.json (e.g. on missing data): the
    # same command, or another config, can use the directory again
    assert prepare_workdir(tmp_path / "new", {**CONFIG, "steps": 5})["resume"] is False
    assert json.loads((tmp_path / "new" / "config.json").read_text())["steps"] == 5
    # a user's own lone config.json (no marker) is not empty: never written over
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text("{}")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(WorkdirError, match="config.json"):
            prepare_workdir(user, CONFIG, **flags)
    assert (user / "config.json").read_text() == "{}"


def test_config_differences():
    assert wd.config_differences({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}) == []
    assert wd.config_differences({"a": 1, "b": {"c": 1}, "d": 0},
                                 {"a": 1.0, "b": {"c": 2, "e": 3}}) == ["b.c", "b.e", "d"]
    assert wd.config_differences(1, 2) == ["<config>"]


def test_lock_holder_names_the_process_holding_a_workdir(tmp_path):
    assert wd.lock_holder(tmp_path) is None              # no lock file
    with wd.lock_workdir(tmp_path):
        holder = wd.lock_holder(tmp_path)
        assert holder["pid"] == os.getpid() and {"host", "since"} <= set(holder)
    assert wd.lock_holder(tmp_path) is None              # released: the file stays, unheld
    assert (tmp_path / ".cljax-lock").exists()

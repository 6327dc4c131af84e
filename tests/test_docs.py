"""The documentation's docstring check (``docs/_ext/require_docstrings.py``) and, under
``-m slow``, the whole documentation build with warnings as errors (``docs/build.sh``)."""
import collections
import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "require_docstrings", ROOT / "docs" / "_ext" / "require_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_module(name="fakepkg.mod", **members):
    module = types.ModuleType(name)
    for key, value in members.items():
        if callable(value) and value.__module__ == __name__:  # defined here: "in" the fake
            value.__module__ = name
        setattr(module, key, value)
    return module


def test_names_each_public_function_and_class_without_a_docstring():
    def documented():
        """Has one."""

    def bare():
        pass

    def _private():
        pass

    class Documented:
        """Has one."""

    class Bare:
        pass

    Pair = collections.namedtuple("Pair", "a b")  # generated docstring "Pair(a, b)"

    @dataclasses.dataclass
    class Point:  # generated docstring "Point(x: int)"
        x: int

    module = _fake_module(documented=documented, bare=bare, _private=_private,
                          Documented=Documented, Bare=Bare, Pair=Pair, Point=Point,
                          CONSTANT=3)
    module.__all__ = ["documented", "bare", "Documented", "Bare", "Pair", "Point", "CONSTANT",
                      "_private", "gone"]
    missing = _checker().missing_docstrings(module, "fakepkg")
    assert missing == ["fakepkg.mod.bare (function)", "fakepkg.mod.Bare (class)",
                       "fakepkg.mod.Pair (class)", "fakepkg.mod.Point (class)",
                       "fakepkg.mod._private (function)",
                       "fakepkg.mod.gone (listed in __all__ but not defined)"]


def test_without_all_checks_the_public_names_the_module_defines():
    def bare():
        pass

    def _hidden():
        pass

    module = _fake_module(bare=bare, _hidden=_hidden)
    module.imported = os.path.join  # another package's function: not checked
    assert _checker().missing_docstrings(module, "fakepkg") == ["fakepkg.mod.bare (function)"]


def test_reexports_of_other_packages_and_inherited_docstrings():
    class Base:
        """Documented base."""

    class Child(Base):  # inherits Base's docstring: its own is missing
        pass

    module = _fake_module(Child=Child)
    module.path_join = os.path.join
    module.__all__ = ["Child", "path_join"]
    assert _checker().missing_docstrings(module, "fakepkg") == ["fakepkg.mod.Child (class)"]


def test_every_public_name_of_cljax_has_a_docstring():
    checker = _checker()
    assert checker.check_package("cljax", ["cljax.configs"]) == []


@pytest.mark.slow
def test_documentation_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinx_book_theme")
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), "docs", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-20000:]
    assert (out / "api" / "importance.html").is_file()

"""Sphinx extension: fail the build when a public name of cljax has no docstring.

The public names of a module are its ``__all__`` (or, for a module without one, the names
without a leading underscore that the module itself defines). Of those, every function and
every class defined in the package must carry a docstring of its own; data (constants, type
aliases) and objects re-exported from other packages (``jax.Array`` …) are not checked. A class
whose only docstring is the one :func:`collections.namedtuple` or :mod:`dataclasses` writes
(``Name(field, ...)``) counts as undocumented.

Each offender is logged as a warning naming it, so ``sphinx -W`` fails. Settings (``conf.py``):

* ``require_docstrings_packages``: the packages walked, with all their submodules (``["cljax"]``);
* ``require_docstrings_exclude``: modules (and the packages below them) left out, by full name.

:func:`missing_docstrings` is the checker itself, usable without Sphinx (``tests/test_docs.py``).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the checker itself runs without Sphinx installed (tests/test_docs.py)
    from sphinx.application import Sphinx


def is_excluded(name: str, exclude: Iterable[str]) -> bool:
    """Whether the module ``name`` is one of ``exclude`` or lies below one of them."""
    return any(name == e or name.startswith(e + ".") for e in exclude)


def public_modules(package: str, exclude: Iterable[str] = ()) -> Iterator[ModuleType]:
    """Import and yield ``package`` and every submodule below it whose dotted path has no
    component starting with ``_``, skipping ``exclude`` (without importing them)."""
    exclude = tuple(exclude)
    if is_excluded(package, exclude):
        return
    module = importlib.import_module(package)
    yield module
    for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
        if info.name.startswith("_"):
            continue
        yield from public_modules(f"{package}.{info.name}", exclude)


def public_names(module: ModuleType) -> list[str]:
    """The module's ``__all__``, or the public names it defines itself when it has none."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__]


def _own_doc(obj: object) -> str | None:
    """The docstring ``obj`` was written with, not one inherited or generated for it."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if not isinstance(doc, str):
            return None
        generated = f"{obj.__name__}("
        is_generated = dataclasses.is_dataclass(obj) or hasattr(obj, "_fields")
        if is_generated and doc.startswith(generated) and "\n" not in doc.strip():
            return None  # namedtuple's "Name(a, b)" / dataclass's "Name(a: int, b: int)"
        return doc
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) else None


def _defined_in(obj: object, package: str) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == package or module.startswith(package + "."))


def missing_docstrings(module: ModuleType, package: str | None = None) -> list[str]:
    """The full names (``module.name``) of the public functions and classes of ``module``
    without a docstring of their own.

    Only objects defined in ``package`` (default: the top-level package of ``module``) are
    checked: a re-exported ``jax.Array`` is jax's to document. A public name the module lacks
    (a stale ``__all__`` entry) is reported too.
    """
    package = package or module.__name__.partition(".")[0]
    missing = []
    for name in public_names(module):
        if not hasattr(module, name):
            missing.append(f"{module.__name__}.{name} (listed in __all__ but not defined)")
            continue
        obj = getattr(module, name)
        if inspect.ismodule(obj) or not _defined_in(obj, package):
            continue
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # data: constants, type aliases
        doc = _own_doc(obj)
        if doc is None or not doc.strip():
            kind = "class" if inspect.isclass(obj) else "function"
            missing.append(f"{module.__name__}.{name} ({kind})")
    return missing


def check_package(package: str, exclude: Iterable[str] = ()) -> list[str]:
    """:func:`missing_docstrings` over ``package`` and all its public submodules."""
    found: list[str] = []
    for module in public_modules(package, exclude):
        found.extend(m for m in missing_docstrings(module, package) if m not in found)
    return found


def _on_builder_inited(app: Sphinx) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for package in app.config.require_docstrings_packages:
        for name in check_package(package, app.config.require_docstrings_exclude):
            logger.warning("public name without a docstring: %s", name,
                           type="require_docstrings", subtype="missing")


def setup(app: Sphinx) -> dict[str, object]:
    """Register the settings and run the check once the builder exists."""
    app.add_config_value("require_docstrings_packages", [], "env", types=frozenset({list}))
    app.add_config_value("require_docstrings_exclude", [], "env", types=frozenset({list}))
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

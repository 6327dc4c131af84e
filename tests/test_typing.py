"""The public API is fully annotated.

Walks the public modules of cljax (those whose own name does not start with ``_``) and checks that
every function in a module's ``__all__``, and every public method of every class in an ``__all__``
that cljax defines, annotates all of its parameters and its return (``self``/``cls`` excepted).
mypy checks that the annotations are right (``[tool.mypy]`` in pyproject.toml); this checks that
they are there.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator

from helpers import public_module_names

MIN_FUNCTIONS = 300  # the walk finds ~490 functions and methods: guards against a vacuous pass


def _defined_in_cljax(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "cljax" or module.startswith("cljax.")


def _as_function(obj: object) -> Callable | None:
    """The Python function behind ``obj`` (through ``functools.wraps``/``jax.jit`` wrappers)."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    if not callable(obj):
        return None
    func = inspect.unwrap(obj)  # type: ignore[arg-type]
    return func if inspect.isfunction(func) else None


def missing_annotations(func: Callable, *, method: bool = False) -> list[str]:
    """What ``func`` leaves unannotated: parameter names, and ``return``.

    With ``method=True`` the first positional parameter (``self``/``cls``) is exempt.
    """
    signature = inspect.signature(func, follow_wrapped=False, eval_str=False)
    missing = []
    for i, (name, param) in enumerate(signature.parameters.items()):
        if method and i == 0 and param.kind in (param.POSITIONAL_ONLY,
                                                param.POSITIONAL_OR_KEYWORD):
            continue
        if param.annotation is inspect.Parameter.empty:
            missing.append(name)
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def public_callables() -> Iterator[tuple[str, Callable, bool]]:
    """``(qualified name, function, is_method)`` for every function and public method to check."""
    seen: set[int] = set()
    for module_name in public_module_names():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                if not _defined_in_cljax(obj) or id(obj) in seen:
                    continue
                seen.add(id(obj))
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    func = _as_function(value)
                    if func is None or not _defined_in_cljax(func):
                        continue
                    is_method = not isinstance(value, staticmethod)
                    yield f"{obj.__module__}.{obj.__qualname__}.{attr}", func, is_method
            else:
                func = _as_function(obj)
                if func is None or not _defined_in_cljax(func) or id(func) in seen:
                    continue
                seen.add(id(func))
                yield f"{func.__module__}.{func.__qualname__}", func, False


def test_public_api_is_fully_annotated():
    offenders = []
    for qualname, func, is_method in public_callables():
        missing = missing_annotations(func, method=is_method)
        if missing:
            offenders.append(f"{qualname}: {', '.join(missing)}")
    assert not offenders, (f"{len(offenders)} public functions/methods lack annotations:\n"
                           + "\n".join(sorted(offenders)))


def test_walk_finds_the_public_api():
    found = list(public_callables())
    assert len(found) >= MIN_FUNCTIONS, len(found)
    names = {qualname for qualname, _, _ in found}
    assert "cljax.metrics.average_accuracy" in names
    assert any(name.startswith("cljax.methods.") for name in names)
    assert any(is_method for _, _, is_method in found)


def test_checker_catches_missing_annotations():
    def unannotated(x, y: int = 1, *args, **kwargs):
        return x

    def no_return(x: int):
        return x

    def annotated(x: int, *args: int, **kwargs: str) -> int:
        return x

    class Thing:
        def method(self, x):  # self is exempt, x is not
            return x

        def fine(self) -> None:
            pass

    assert missing_annotations(unannotated) == ["x", "args", "kwargs", "return"]
    assert missing_annotations(no_return) == ["return"]
    assert missing_annotations(annotated) == []
    assert missing_annotations(Thing.method, method=True) == ["x", "return"]
    assert missing_annotations(Thing.fine, method=True) == []
    assert missing_annotations(Thing.fine) == ["self"]

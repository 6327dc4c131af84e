"""Sphinx extension: the ``cljax-module`` directive behind every page of the API reference.

``.. cljax-module:: cljax.importance`` documents the module's public names (its ``__all__``)
with autodoc. For a package it then adds a section per public submodule (names without a
leading ``_``): the submodule's docstring and those of its public names the package does not
re-export, followed by links to the ones it does. Every public name is thus documented once,
under the shortest path that reaches it (``cljax.importance.kfac_factors``, not
``cljax.importance.kfac.kfac_factors``), and a new name in an ``__all__`` appears in the
reference without editing the pages.

Because a name is documented only once, a cross-reference that Python would resolve (``:func:`hvp```
in the docstring of :mod:`cljax.curvature.hvp`, an annotation ``Rows`` in a function of
:mod:`cljax.methods.base` documented as ``cljax.methods.task_loss``) may name a path that has no
entry of its own. The ``missing-reference`` handler :func:`resolve_reexport` finds the object
that the name denotes, the way Python would, and links to the entry of that same object; a name
that denotes nothing documented (a private helper, a typo) still warns.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from require_docstrings import public_names  # docs/_ext, beside this file
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _role(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "func"
    if inspect.ismodule(obj):
        return "mod"
    return "data"


def _submodules(package: ModuleType) -> list[ModuleType]:
    found = []
    for info in pkgutil.iter_modules(getattr(package, "__path__", None) or []):
        if not info.name.startswith("_"):
            found.append(importlib.import_module(f"{package.__name__}.{info.name}"))
    return found


def _member_lines(module: ModuleType, names: list[str]) -> list[str]:
    """One autodoc directive per public name, in ``__all__``'s order: classes with their
    documented members, functions, and data (shown with its value even without a docstring)."""
    lines = []
    for n in names:
        obj = getattr(module, n, None)
        if inspect.ismodule(obj):
            continue
        full = f"{module.__name__}.{n}"
        top = module.__name__.partition(".")[0]
        ours = str(getattr(obj, "__module__", "")).partition(".")[0] == top
        if not ours:  # an alias of another package's object (``Array = jax.Array``)
            lines += [f".. autodata:: {full}", ""]
        elif inspect.isclass(obj):
            lines += [f".. autoclass:: {full}", "   :members:", ""]
        elif inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
            lines += [f".. autofunction:: {full}", ""]
        else:
            lines += [f".. autodata:: {full}", ""]
    return lines


def module_lines(name: str) -> list[str]:
    """The reST a ``cljax-module`` directive expands to for the module ``name``."""
    module = importlib.import_module(name)
    package_names = public_names(module)
    lines = [f".. automodule:: {name}", "   :no-members:", ""]
    lines += _member_lines(module, package_names)
    for sub in _submodules(module):
        own = public_names(sub)
        # documented at the package only when the package holds the very same object (not, say,
        # a lazy wrapper that imports the submodule's function on first call)
        shared = [n for n in own if n in package_names and hasattr(sub, n)
                  and getattr(module, n) is getattr(sub, n)]
        title = f"``{sub.__name__}``"
        lines += [title, "-" * len(title), "", f".. automodule:: {sub.__name__}",
                  "   :no-members:"]
        # a submodule named like one of the package's functions (``cljax.curvature.hvp``):
        # one target per name, so the module's entry gives way to the function's
        short = sub.__name__.rpartition(".")[2]
        clash = short in package_names and getattr(module, short, None) is not sub
        if clash:
            lines.append("   :no-index:")
        lines += ["", f".. currentmodule:: {sub.__name__}", ""]
        lines += _member_lines(sub, [n for n in own if n not in shared])
        if shared:
            refs = ", ".join(f":{_role(getattr(sub, n))}:`~{name}.{n}`" for n in shared)
            lines += [f"Re-exported by :mod:`{name}`: {refs}.", ""]
        lines += [f".. currentmodule:: {name}", ""]
    return lines


class CljaxModule(SphinxDirective):
    """``.. cljax-module:: <module>``: see the module docstring."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        content = StringList()
        source = f"<cljax-module {name}>"
        for i, line in enumerate(module_lines(name)):
            content.append(line, source, i)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


_MISSING = object()


def _lookup(path: str) -> Any:
    """The object ``path`` denotes in Python (``a.b.c``: import ``a``, then attribute ``b``
    of it — importing the submodule if it has not been — and so on), or ``_MISSING``."""
    first, *rest = path.split(".")
    try:
        obj: Any = importlib.import_module(first)
    except ImportError:
        return _MISSING
    for attr in rest:
        found = getattr(obj, attr, _MISSING)
        if found is _MISSING and inspect.ismodule(obj):
            try:
                found = importlib.import_module(f"{obj.__name__}.{attr}")
            except ImportError:
                return _MISSING
        if found is _MISSING:
            return _MISSING
        obj = found
    return obj


def _lookup_in(module: str, path: str) -> Any:
    """The object ``path`` (attributes) denotes inside the module named ``module``."""
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return _MISSING
    for attr in path.split("."):
        obj = getattr(obj, attr, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _same(a: Any, b: Any) -> bool:
    return a is b and a is not _MISSING


class _Index:
    """The documented Python objects of the build: full name → object, and for the functions,
    classes and modules (whose identity is meaningful) object id → documented full names."""

    def __init__(self, env: BuildEnvironment, package: str):
        self.objects = env.get_domain("py").objects
        self.by_id: dict[int, list[str]] = {}
        for name in self.objects:
            if name == package or name.startswith(package + "."):
                obj = _lookup(name)
                if inspect.isclass(obj) or inspect.ismodule(obj) or inspect.isroutine(obj):
                    self.by_id.setdefault(id(obj), []).append(name)


def _candidates(index: _Index, target: str, module: str | None, cls: str | None,
                package: str) -> list[str]:
    """Documented names of the object ``target`` denotes in ``module`` (and ``cls``)."""
    target = target.removeprefix(".").removeprefix("~").removesuffix("()")
    scopes = [(target, _lookup)] if target.startswith(package + ".") else []
    if module:
        if cls:
            scopes.append((f"{module}.{cls}.{target}",
                           lambda path, _m=module: _lookup_in(_m, path[len(_m) + 1:])))
        scopes.append((f"{module}.{target}",
                       lambda path, _m=module: _lookup_in(_m, path[len(_m) + 1:])))
    for path, lookup in scopes:
        obj = lookup(path)
        if str(getattr(obj, "__doc__", "")).startswith("Alias for field number"):
            # a named tuple's field (``Method.samples``): described by its class's docstring
            path = path.rpartition(".")[0]
            obj = lookup(path)
        if obj is _MISSING:
            continue
        names = list(index.by_id.get(id(obj), []))
        # data (constants, aliases): the same name in a package above, holding the same object
        *parents, last = path.split(".")
        for i in range(len(parents) - 1, 0, -1):
            up = ".".join(parents[:i]) + "." + last
            if up in index.objects and _same(_lookup(up), obj):
                names.append(up)
        if path in index.objects:
            names.insert(0, path)
        if names:
            return names
    # a name the annotations of another module use (e.g. a string annotation that names an
    # import of the function's own module): the one documented object ending with that name
    suffix = "." + target
    found = {name for name in index.objects
             if name.startswith(package + ".") and name.endswith(suffix)}
    objects = {id(_lookup(name)) for name in found}
    return sorted(found)[:1] if len(objects) == 1 else []


def resolve_reexport(app: Sphinx, env: BuildEnvironment, node: pending_xref,
                     contnode: nodes.TextElement) -> nodes.Element | None:
    """``missing-reference``: link a ``py`` reference to the entry of the object it denotes."""
    if node.get("refdomain") != "py":
        return None
    package = app.config.cljax_api_package
    index = getattr(env, "_cljax_api_index", None)
    if index is None or index.objects is not env.get_domain("py").objects:
        index = _Index(env, package)
        env._cljax_api_index = index  # type: ignore[attr-defined]
    domain = env.get_domain("py")
    for name in _candidates(index, node["reftarget"], node.get("py:module"),
                            node.get("py:class"), package):
        retry = node.deepcopy()
        retry.attributes.pop("refspecific", None)
        ref = domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"],
                                  name, retry, contnode)
        if ref is not None:
            return ref
    return None


def skip_field_aliases(app: Sphinx, what: str, name: str, obj: Any, skip: bool,
                       options: Any) -> bool | None:
    """``autodoc-skip-member``: leave out a named tuple's "Alias for field number N" entries;
    the class docstring (its "Attributes:" section) describes the fields."""
    if what == "class" and str(getattr(obj, "__doc__", "")).startswith("Alias for field number"):
        return True
    return None


def drop_type_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                        lines: list[str]) -> None:
    """``autodoc-process-docstring``: a constant without a docstring of its own shows none,
    not the docstring of its value's type (``dict``'s, or :class:`cljax.methods.Method`'s for
    the method ``cljax.methods.none``)."""
    if what not in ("data", "attribute") or inspect.isclass(obj) or inspect.isroutine(obj):
        return
    type_doc = inspect.cleandoc(getattr(type(obj), "__doc__", None) or "")
    if type_doc and "\n".join(lines).strip() == type_doc.strip():
        lines[:] = []


def _prose_data_docstrings(app: Sphinx) -> None:
    """Napoleon reads the first line of a constant's or property's docstring as ``type:
    description``; cljax writes prose there (``"The share of a device's memory (twice: …)"``),
    so napoleon is kept to functions, classes and modules."""
    from sphinx.ext import napoleon

    for listener in list(app.events.listeners.get("autodoc-process-docstring", [])):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)

            def google_sections(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                                lines: list[str], _napoleon=listener.handler) -> None:
                if what not in ("data", "attribute", "property"):
                    _napoleon(app, what, name, obj, options, lines)

            app.connect("autodoc-process-docstring", google_sections,
                        priority=listener.priority)


def setup(app: Sphinx) -> dict[str, object]:
    """Register the ``cljax-module`` directive, the re-export resolver and the docstring
    filters (after ``sphinx.ext.napoleon``, which must be loaded first)."""
    app.setup_extension("sphinx.ext.napoleon")
    _prose_data_docstrings(app)
    app.connect("autodoc-process-docstring", drop_type_docstring, priority=400)
    app.connect("autodoc-skip-member", skip_field_aliases)
    app.add_config_value("cljax_api_package", "cljax", "env", types=frozenset({str}))
    app.add_directive("cljax-module", CljaxModule)
    app.connect("missing-reference", resolve_reexport)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

"""Sphinx configuration of the cljax documentation.

Build (from the repository root; warnings are errors, every cross-reference must resolve):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

or ``docs/build.sh``. No network is needed: no intersphinx inventory is fetched, and the
references to other packages' objects that cannot resolve here are listed, by pattern, in
``nitpick_ignore_regex`` below.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))

import cljax

project = "cljax"
author = "the cljax authors"
copyright = "the cljax authors"
version = release = cljax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "cljax_api",           # docs/_ext: the ``cljax-module`` directive of the API pages
    "require_docstrings",  # docs/_ext: a public function or class without a docstring fails
]

exclude_patterns = ["_build", "_ext", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
nitpicky = True

# -- API reference ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
# The annotations go into the description of each argument, where napoleon's "Args:" sections
# already are; the signatures stay short enough to read.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
# A method without a docstring of its own (a flax module's ``setup``) shows none, not its base
# class's.
autodoc_inherit_docstrings = False
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

require_docstrings_packages = ["cljax"]
# The shipped configs are scripts (a docstring with the protocol and ``get_config()``).
require_docstrings_exclude = ["cljax.configs"]

# Targets outside cljax that cannot resolve without intersphinx (no network at build time).
# Only other packages and the standard library belong here: a ``cljax.`` target that does not
# resolve is a bug in a docstring and must stay an error.
nitpick_ignore_regex = [
    # Other packages' objects in annotations and docstrings. jax.Array is rendered by its
    # defining module, jax.jaxlib._jax.Array, optax's classes by theirs, optax._src.base.…
    (r"py:.*", r"(jax|jaxlib|flax|optax|numpy|orbax|chex|matplotlib|scipy|tensorflow_datasets|"
               r"tensorboardX)(\..+)?"),
    # The standard library's types in annotations (collections.abc.Mapping, pathlib.Path, …).
    (r"py:.*", r"(argparse|collections\.abc|pathlib|os|concurrent\.futures(\._base)?|threading|types)"
               r"\.\w+"),
    # matplotlib's Figure, imported only for type checking, so named bare in the annotations.
    (r"py:class", r"Figure"),
]

# -- Markdown and notebooks (MyST-NB) ---------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"          # every tutorial runs on every build
nb_execution_raise_on_error = True   # a failing cell fails the build
nb_execution_timeout = 300           # seconds per cell
nb_execution_show_tb = True          # print the traceback of a failing cell in the build log
nb_merge_streams = True

# -- HTML -------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"cljax {version}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}

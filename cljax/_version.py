"""The version of cljax, single-sourced: ``pyproject.toml`` reads it from here
(``[tool.setuptools.dynamic]``) and :data:`cljax.__version__` is this value."""

__version__ = "0.2.0"
